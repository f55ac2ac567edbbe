"""RLDS reader (and a small writer): TFDS episode datasets -> trajectory datasets.

Reading goes through `tfds.builder_from_directory(f"{data_dir}/{name}/{version}")`, never
`tfds.builder(name, data_dir=...)`: for OXE names the latter resolves to a proxy builder
that reaches for GCS and fails offline. `data_dir` may be local or `gs://`.

What you get per element (a *raw trajectory*, see `vlax.data.oxe.registry`):
  * every field of `steps` stacked along T (nested like the features);
  * image features kept as encoded bytes (tf.string [T]) - `SkipDecoding` - so shuffle
    buffers hold bytes; plain uint8 image tensors come back as they are stored;
  * `episode_metadata` fields broadcast to [T, ...];
  * `_episode_id`: tf.string [T] "<file>__<index>" naming the record file and episode,
    used by every in-graph error message.

Per-host sharding (`host_episode_ranges`): the split - sliced or not, e.g.
"train[95%:]" - is resolved to absolute episode indices, and each of `process_count`
hosts reads one contiguous range of them (TFDS reads only the files that range touches,
skipping within at most two boundary files). The ranges are disjoint, cover every episode
once per epoch, and differ in size by at most one episode, whatever the number of files
(a 5 % validation slice of a 1024-file dataset spans ~52 files: fewer than 64 hosts).
A split with fewer episodes than hosts cannot be shared out; each host then reads one
episode (host i: episode i mod E), so every host can still draw the dataset at its
mixture weight and each episode sits on floor/ceil(H/E) hosts. Defaults come from
`jax.process_index()/process_count()`.

Empty episodes are an error (policy, documented): a 0-step episode almost always means a
broken conversion, and silently skipping it would hide that. Pass `empty_episodes="skip"`
to drop them instead.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from typing import Any, Iterable, Mapping, Sequence

import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow_datasets.core.utils import tqdm_utils

from vlax.errors import VlaxError
from vlax.utils import process_info

INT32_MAX = 2**31 - 1
ERROR_PREFIX = "vlax-data-error: "


def default_process() -> tuple[int, int]:
  """(process_index, process_count) of this host (from jax)."""
  return process_info()


def dataset_dir(name: str, data_dir: str, version: str | None = None) -> str:
  """`{data_dir}/{name}/{version}`; with no version, the newest one present."""
  root = os.path.join(str(data_dir), name)
  if not tf.io.gfile.isdir(root):
    raise VlaxError(f"dataset {name!r}: no directory {root} under data_dir {data_dir!r}")
  if version is None:
    versions = sorted(_versions(root), key=lambda v: tuple(int(x) for x in v.split(".")))
    if not versions:
      raise VlaxError(f"dataset {name!r}: no version directory (like 1.0.0) in {root}")
    version = versions[-1]
  path = os.path.join(root, version)
  if not tf.io.gfile.exists(os.path.join(path, "dataset_info.json")):
    found = ", ".join(sorted(_versions(root))) or "none"
    raise VlaxError(f"dataset {name!r}: version directory {path} missing or not a TFDS "
                    f"dataset (no dataset_info.json); versions found: {found}")
  return path


def _versions(root: str) -> list[str]:
  return [d.rstrip("/") for d in tf.io.gfile.listdir(root)
          if re.fullmatch(r"\d+\.\d+\.\d+", d.rstrip("/"))]


def load_builder(name: str, data_dir: str, version: str | None = None):
  path = dataset_dir(name, data_dir, version)
  try:
    return tfds.builder_from_directory(path)
  except Exception as e:  # pylint: disable=broad-except
    raise VlaxError(f"dataset {name!r}: cannot open TFDS dataset at {path}: {e}") from e


def data_files(name: str, data_dir: str, version: str | None = None) -> list[tuple[str, int]]:
  """(file name, size in bytes) of every file of the dataset version (for cache keys)."""
  path = dataset_dir(name, data_dir, version)
  out = []
  for f in sorted(tf.io.gfile.listdir(path)):
    full = os.path.join(path, f)
    if not tf.io.gfile.isdir(full):
      out.append((f, int(tf.io.gfile.stat(full).length)))
  return out


def _image_decoders(features) -> dict[str, Any] | None:
  """A decoders tree that keeps every `Image` feature under steps/ encoded."""

  def walk(feature):
    if isinstance(feature, tfds.features.Image):
      return tfds.decode.SkipDecoding()
    if isinstance(feature, tfds.features.Dataset):
      sub = walk(feature.feature)
      return sub
    if isinstance(feature, tfds.features.FeaturesDict):
      out = {}
      for k, v in feature.items():
        d = walk(v)
        if d is not None:
          out[k] = d
      return out or None
    return None

  return walk(features)


def num_episodes(builder, split: str) -> int | None:
  try:
    return int(builder.info.splits[split].num_examples)
  except Exception:  # pylint: disable=broad-except
    return None


class _NumExamples:
  """What `ReadInstruction.to_absolute` reads from a SplitInfo."""

  def __init__(self, n: int):
    self.num_examples = int(n)


def host_episode_ranges(split: str, split_sizes: Mapping[str, int], process_index: int,
                        process_count: int, name: str = "") -> list[tuple[str, int, int]]:
  """This host's episodes of `split` as [(base split, start, stop)] (absolute indices).

  split_sizes: episodes per base split ({"train": 1000, "val": 50}). The split's parts
  ("train[:10%]+val") are laid end to end; with E episodes and H hosts, host i gets
  [i*E//H, (i+1)*E//H) of them, or episode i mod E when E < H (see the module docstring).
  Pure: the simulated-pod test calls it for hundreds of hosts without any data.
  """
  try:
    parts = tfds.core.ReadInstruction.from_spec(split).to_absolute(
        {k: _NumExamples(v) for k, v in split_sizes.items()})
  except (KeyError, ValueError, AssertionError) as e:
    raise VlaxError(f"dataset {name!r}: bad split {split!r} (splits: {dict(split_sizes)}): "
                    f"{e}") from None
  ranges = []
  for p in parts:
    n = int(split_sizes[p.splitname])
    start = 0 if p.from_ is None else int(p.from_)
    stop = n if p.to is None else int(p.to)
    if stop > start:
      ranges.append((p.splitname, start, stop))
  total = sum(b - a for _, a, b in ranges)
  if total == 0:
    raise VlaxError(f"dataset {name!r}: split {split!r} selects no episodes "
                    f"(episodes per split: {dict(split_sizes)})")
  if total >= process_count:
    lo = process_index * total // process_count
    hi = (process_index + 1) * total // process_count
  else:
    lo = process_index % total
    hi = lo + 1
  out, offset = [], 0
  for base, a, b in ranges:
    s, e = max(lo, offset), min(hi, offset + b - a)
    if e > s:
      out.append((base, a + s - offset, a + e - offset))
    offset += b - a
  return out


def host_split(split: str, split_sizes: Mapping[str, int], process_index: int,
               process_count: int, name: str = "") -> str:
  """`host_episode_ranges` as a TFDS split string, e.g. "train[950:965]"."""
  return "+".join(f"{base}[{a}:{b}]" for base, a, b in host_episode_ranges(
      split, split_sizes, process_index, process_count, name))


def read_trajectories(name: str, data_dir: str, *, version: str | None = None,
                      split: str = "train", shuffle_files: bool = False,
                      seed: int | None = None, process_index: int | None = None,
                      process_count: int | None = None, num_parallel_reads: int | None = None,
                      num_parallel_calls: int | None = tf.data.AUTOTUNE,
                      empty_episodes: str = "error") -> tf.data.Dataset:
  """A dataset of raw trajectories (dicts of [T, ...]) of one RLDS dataset and split.

  split: any TFDS split string, e.g. "train", "train[:95%]", "train[95%:]".
  process_index/process_count: this host's slice of the data (default: from jax).
  num_parallel_reads: files read in parallel (interleave cycle length; None = TFDS default).
  empty_episodes: "error" (default) or "skip".
  """
  if empty_episodes not in ("error", "skip"):
    raise VlaxError(f"empty_episodes must be 'error' or 'skip', got {empty_episodes!r}")
  builder = load_builder(name, data_dir, version)
  if process_index is None or process_count is None:
    pi, pc = default_process()
    process_index = pi if process_index is None else process_index
    process_count = pc if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise VlaxError(f"process_index {process_index} not in [0, {process_count})")
  if process_count > 1:
    sizes = {k: int(v.num_examples) for k, v in builder.info.splits.items()}
    split = host_split(split, sizes, process_index, process_count, name=name)
  kwargs = {}
  if num_parallel_reads is not None:
    kwargs["interleave_cycle_length"] = num_parallel_reads
    kwargs["num_parallel_calls_for_interleave_files"] = num_parallel_reads
  read_config = tfds.ReadConfig(shuffle_seed=seed, add_tfds_id=True, **kwargs)
  try:
    ds = builder.as_dataset(split=split, shuffle_files=shuffle_files,
                            decoders=_image_decoders(builder.info.features),
                            read_config=read_config)
  except Exception as e:  # pylint: disable=broad-except
    sizes = {k: v.num_examples for k, v in builder.info.splits.items()}
    why = ("the slice selects no episodes" if "corresponds to no data" in str(e) else
           str(e).splitlines()[0] if str(e) else type(e).__name__)
    raise VlaxError(f"dataset {name!r}: cannot read split {split!r} of "
                    f"{builder.data_dir}: {why} (episodes per split: {sizes})") from None
  if "steps" not in builder.info.features:
    raise VlaxError(f"dataset {name!r}: not an RLDS dataset (no 'steps' feature) in "
                    f"{builder.data_dir}")

  def to_traj(episode):
    steps = episode["steps"].batch(INT32_MAX).get_single_element()
    length = tf.shape(tf.nest.flatten(steps)[0])[0]
    traj = dict(steps)
    if "episode_metadata" in episode:
      traj["episode_metadata"] = tf.nest.map_structure(
          lambda v: tf.broadcast_to(v, tf.concat([[length], tf.shape(v)], 0)),
          episode["episode_metadata"])
    traj["_episode_id"] = tf.fill([length], episode["tfds_id"])
    return traj

  def count_steps(episode):
    n = episode["steps"].cardinality()  # known for TFDS sequence features
    return tf.cond(n >= 0, lambda: n,
                   lambda: episode["steps"].reduce(tf.constant(0, tf.int64),
                                                   lambda c, _: c + 1))

  def check_nonempty(episode):
    n = count_steps(episode)
    assertion = tf.debugging.Assert(
        n > 0, [f"{ERROR_PREFIX}dataset {name!r}: empty episode (0 steps) in",
                episode["tfds_id"], "key 'steps'"])
    with tf.control_dependencies([assertion]):
      return dict(episode, tfds_id=tf.identity(episode["tfds_id"]))

  if empty_episodes == "skip":
    ds = ds.filter(lambda ep: count_steps(ep) > 0)
  else:
    ds = ds.map(check_nonempty, num_parallel_calls=num_parallel_calls)
  return ds.map(to_traj, num_parallel_calls=num_parallel_calls)


def check_finite(x: tf.Tensor, dataset: str, key: str, episode_id: tf.Tensor) -> tf.Tensor:
  """In-graph: fails (naming dataset, episode, key and first bad dimension) on NaN/Inf."""
  finite = tf.math.is_finite(x)
  ok = tf.reduce_all(finite)
  bad = tf.reshape(tf.logical_not(finite), [-1, tf.shape(x)[-1]])
  dim = tf.argmax(tf.cast(tf.reduce_any(bad, axis=0), tf.int32), output_type=tf.int32)
  first_id = episode_id[0] if episode_id.shape.rank else episode_id
  assertion = tf.debugging.Assert(
      ok, [f"{ERROR_PREFIX}dataset {dataset!r}: NaN/Inf in key {key!r} of episode",
           first_id, "dimension", dim], summarize=3)
  with tf.control_dependencies([assertion]):
    return tf.identity(x)


def _clean(msg: str) -> str:
  msg = re.sub(r"\{\{function_node [^}]*\}\}", "", msg)
  msg = msg.split("\n\t [[", 1)[0].split(" [Op:", 1)[0]
  msg = msg.replace("\\'", "'").replace("] [", " ")
  msg = " ".join(msg.replace("\n", " ").split())
  return msg[:-1] if msg.endswith("]") and "[" not in msg else msg


def find_corrupt_files(version_dirs: Sequence[str]) -> list[str]:
  """Record files under `version_dirs` that fail to read end to end (diagnosis only)."""
  bad = []
  for d in version_dirs:
    for f in sorted(tf.io.gfile.glob(os.path.join(d, "*.tfrecord*"))):
      try:
        for _ in tf.data.TFRecordDataset(f):
          pass
      except tf.errors.OpError:
        bad.append(f)
  return bad


def as_vlax_error(e: Exception, context: str = "",
                  version_dirs: Sequence[str] = ()) -> Exception:
  """Turns a TF runtime error raised while iterating a vlax pipeline into a VlaxError.

  In-graph checks prefix their message with ERROR_PREFIX. A DataLossError means a corrupt
  record file; TF does not say which, so the files under `version_dirs` are re-read one
  by one to name it.
  """
  msg = str(e)
  if ERROR_PREFIX in msg:
    return VlaxError(_clean(msg.split(ERROR_PREFIX, 1)[1]))
  if isinstance(e, tf.errors.DataLossError):
    files = find_corrupt_files(version_dirs) if version_dirs else []
    which = f" {', '.join(files)}" if files else ""
    return VlaxError(f"{context}corrupt record file{which}: {_clean(msg)}")
  if isinstance(e, tf.errors.OpError):
    return VlaxError(f"{context}{type(e).__name__}: {_clean(msg)}")
  return e


def iterate(ds: tf.data.Dataset, context: str = "",
            version_dirs: Sequence[str] = ()) -> Iterable[Any]:
  """`ds.as_numpy_iterator()` that re-raises pipeline errors as one-line VlaxErrors.

  context: prefix of messages (e.g. "dataset 'x': "); version_dirs: dataset directories
  to scan to name a corrupt record file.
  """
  it = ds.as_numpy_iterator()
  while True:
    try:
      x = next(it)
    except StopIteration:
      return
    except tf.errors.OpError as e:
      raise as_vlax_error(e, context, version_dirs) from None
    yield x


# ---------------------------------------------------------------------------------------
# Writer: small RLDS datasets from in-memory episodes (toy data, converters, tests).


def episode_features(observation: Mapping[str, Any], action_dim: int,
                     episode_metadata: Mapping[str, Any]) -> tfds.features.FeaturesDict:
  """The RLDS episode layout every vlax writer uses: `steps` of `observation`, a float32
  action, the instruction and RLDS's reward / discount / boundary flags, plus
  `episode_metadata`. Writers differ only in their cameras, proprio and metadata."""
  scalar = lambda dtype: tfds.features.Scalar(dtype=dtype)
  return tfds.features.FeaturesDict({
      "steps": tfds.features.Dataset({
          "observation": dict(observation),
          "action": tfds.features.Tensor(shape=(int(action_dim),), dtype=tf.float32),
          "language_instruction": tfds.features.Text(),
          "reward": scalar(tf.float32),
          "discount": scalar(tf.float32),
          "is_first": scalar(tf.bool),
          "is_last": scalar(tf.bool),
          "is_terminal": scalar(tf.bool),
      }),
      "episode_metadata": dict(episode_metadata),
  })


def write_rlds(name: str, data_dir: str, features: Any, episodes: Sequence[Mapping] |
               Iterable[Mapping], *, version: str = "1.0.0", num_shards: int = 1,
               description: str = "", split: str = "train") -> str:
  """Writes episodes (`{"steps": [step dicts], "episode_metadata": {...}}`) as a TFDS
  dataset at `{data_dir}/{name}/{version}`; returns that path. Overwrites an existing one.

  features: a `tfds.features.FeaturesDict` with a `steps` `tfds.features.Dataset`.
  """
  features = features if isinstance(features, tfds.features.FeaturesDict) else (
      tfds.features.FeaturesDict(features))
  episodes_iter = episodes

  class _Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version(version)
    code_path = None  # a dynamic builder has no source dir (and no checksums file)

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, description=description,
                                   features=features)

    def _split_generators(self, dl_manager):
      del dl_manager
      return {split: self._generate_examples()}

    def _generate_examples(self):
      for i, ep in enumerate(episodes_iter):
        yield f"episode_{i:07d}", ep

  _Builder.name = name
  path = os.path.join(str(data_dir), name, version)
  if tf.io.gfile.exists(path):
    tf.io.gfile.rmtree(path)
  builder = _Builder(data_dir=str(data_dir))
  was_active = getattr(tqdm_utils, "_active", True)
  tfds.display_progress_bar(False)
  try:
    # tfds prints "Downloading and preparing dataset ..." on stdout, which would corrupt
    # the output of commands that print data (e.g. the registry template).
    with contextlib.redirect_stdout(io.StringIO()):
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(num_shards=num_shards))
  finally:
    tfds.display_progress_bar(was_active)
  return path
