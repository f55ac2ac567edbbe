"""Co-training mixture: robot and web model examples -> fixed-shape per-host batches.

Both streams are already in the model-batch format (`vlax.data.sequence`), so every
batch has one shape whatever its mix. The web fraction follows `web_weight`, or a
piecewise-linear `web_schedule` [(step, weight), ...] over training steps (RT-2 style:
e.g. [(0, 0.5), (20000, 0.2)]). The choice is per example from a stateless RNG keyed by
(seed, process, example position), and step = example position // per-host batch, so a
schedule needs no tf.Variable and the stream is deterministic for a seed. Pass
`start_step` when resuming so the schedule continues where it stopped.

Multi-host: each process builds its own shard of the sources (the caller passes
process_index / process_count to the robot and web readers) and yields
global_batch_size / process_count examples per batch.

Exact resume: `CotrainIterator.save_state(dir)` / `restore_state(dir)` checkpoint the
tf.data iterator (`tf.train.Checkpoint(iterator=...)`: shuffle buffers with their
encoded frames, mixing and RNG counters, prefetched batches) plus the drop counters; the
trainer calls them per process at every checkpoint.

From a training config (`make_data_iterator`, what the CLI calls): `robot_data` resolves
the robot datasets and their statistics once; `robot_frames` is the one function that
turns config.data + host + seed into a robot frame stream (training, evaluation, rebuilds
at another start step, the tokenizer's fitting sample); `action_tokenizer` fits FAST or
quantile bins (`vlax.actions.fit_action_tokenizer`) on `action_fit_chunks`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Mapping, Sequence

import ml_collections
import numpy as np

from vlax.actions import (ActionTokenizer, ActionVocab, BinTokenizer, default_action_vocab,
                          fit_action_tokenizer, make_action_tokenizer, openpi_action_vocab,
                          tokenizer_from_dict)
from vlax.checkpoints import format as ckpt_format
from vlax.data import concepts as concepts_lib
from vlax.data import seeds as seeds_lib
from vlax.data import statistics as stats_lib
from vlax.envs import toy_env
from vlax.data import web as web_lib
from vlax.data.oxe import mixtures
from vlax.data.oxe import toy
from vlax.data.sequence import (SOURCE_NAMES, DataCounters, SequenceBuilder, SequenceConfig,
                                collect_action_chunks)
from vlax.data.text_tokenizer import TextTokenizer, load_toy_tokenizer
from vlax.errors import VlaxError
from vlax.utils import process_info


def per_host_batch_size(global_batch_size: int, process_count: int) -> int:
  if global_batch_size % process_count:
    raise VlaxError(f"batch_size {global_batch_size} is not divisible by the number of "
                    f"processes {process_count}")
  return global_batch_size // process_count


def web_weight_at(step, web_weight: float, web_schedule: Sequence[Sequence[float]] | None):
  """Web fraction at `step` (tf or numpy): piecewise-linear schedule, flat outside it."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if not web_schedule:
    return tf.constant(float(web_weight), tf.float32)
  pts = sorted((float(s), float(w)) for s, w in web_schedule)
  for s, w in pts:
    if not 0.0 <= w <= 1.0:
      raise VlaxError(f"web_schedule weight {w} at step {s} not in [0, 1]")
  if len(pts) == 1:
    return tf.constant(pts[0][1], tf.float32)
  xs = tf.constant([p[0] for p in pts], tf.float32)
  ys = tf.constant([p[1] for p in pts], tf.float32)
  x = tf.cast(step, tf.float32)
  i = tf.clip_by_value(tf.searchsorted(xs, tf.reshape(x, [1]), side="right")[0], 1,
                       len(pts) - 1)
  x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
  t = tf.clip_by_value((x - x0) / tf.maximum(x1 - x0, 1e-9), 0.0, 1.0)
  y = y0 + t * (y1 - y0)
  return tf.where(x <= xs[0], ys[0], tf.where(x >= xs[-1], ys[-1], y))


def mix(robot, web, *, per_host_batch: int, web_weight: float = 0.5,
        web_schedule: Sequence[Sequence[float]] | None = None, seed: int = 0,
        process_index: int = 0, start_step: int = 0):
  """Interleaves two (infinite) model-example streams; unbatched result."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if robot is None and web is None:
    raise VlaxError("co-training mixture: no robot and no web data")
  if web is None:
    return robot
  if robot is None:
    return web
  if not web_schedule and not 0.0 <= web_weight <= 1.0:
    raise VlaxError(f"web_weight must be in [0, 1], got {web_weight}")
  host_seed = seeds_lib.fold(seed, process_index)
  start = int(start_step) * per_host_batch

  def choose(i):
    i = i + start
    u = tf.random.stateless_uniform(
        [], seed=tf.stack([tf.constant(host_seed, tf.int64), i]))
    w = web_weight_at(i // per_host_batch, web_weight, web_schedule)
    return tf.cast(u < w, tf.int64)

  choice = tf.data.Dataset.counter().map(choose)
  return tf.data.Dataset.choose_from_datasets([robot, web], choice,
                                              stop_on_empty_dataset=True)


def make_cotrain_dataset(robot, web, *, global_batch_size: int, web_weight: float = 0.5,
                         web_schedule: Sequence[Sequence[float]] | None = None,
                         seed: int = 0, start_step: int = 0,
                         process_index: int | None = None, process_count: int | None = None,
                         prefetch: bool = True):
  """Model-example streams -> batched tf.data (per-host batch, drop_remainder)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  pi, pc = process_info(process_index, process_count)
  bs = per_host_batch_size(global_batch_size, pc)
  ds = mix(robot, web, per_host_batch=bs, web_weight=web_weight, web_schedule=web_schedule,
           seed=seed, process_index=pi, start_step=start_step)
  ds = ds.batch(bs, drop_remainder=True)
  if prefetch:
    ds = ds.prefetch(tf.data.AUTOTUNE)
  return ds


STATE_FORMAT = "vlax-data-state/1"
_STATE_JSON = "state.json"
_TF_PREFIX = "iterator"


def _checkpointable(dataset):
  """Lets tf.data checkpoint an iterator whose graph holds `tf.numpy_function`s.

  tf.data refuses to serialize an iterator over a py_function ("PyFunc is stateful")
  because it cannot save Python state. Ours hold none that matters to the position: text
  tokenization, FAST encoding, image decoding and text checks are pure functions of their
  inputs (the tokenizer cache is a memo), and the only Python state they touch is
  `DataCounters`, which `CotrainIterator.save_state` saves itself. Augmentation and
  mixing use stateless RNGs keyed by element index / position, whose counters tf.data
  does save. So the external state is ignored (IGNORE rather than WARN: WARN would log
  on every checkpoint).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  options = tf.data.Options()
  options.experimental_external_state_policy = (
      tf.data.experimental.ExternalStatePolicy.IGNORE)
  return dataset.with_options(options)


class CotrainIterator:
  """Iterator of numpy model batches; `.counters` holds the pipeline's drop counts.

  Exact resume: `save_state(dir)` writes the tf.data iterator position (shuffle buffers,
  interleave / sample_from_datasets / choose_from_datasets state, counters of the
  stateless RNGs, prefetched batches) with `tf.train.Checkpoint`, plus the drop counters
  and the step the pipeline was seeded with (`start_step`). `restore_state(dir)` on an
  iterator built from the same config continues that stream batch for batch; if this
  one was seeded with another start_step (a resumed run is built with its resume step),
  it is first rebuilt with the saved one through `rebuild(start_step) -> tf.data`.
  """

  def __init__(self, dataset, counters: DataCounters, per_host_batch: int, *,
               start_step: int = 0, rebuild: Callable[[int], Any] | None = None,
               fingerprint: Mapping[str, Any] | None = None):
    self.dataset = _checkpointable(dataset)
    self.counters = counters
    self.per_host_batch = per_host_batch
    self.start_step = int(start_step)  # the step the tf.data graph was seeded with
    self.fingerprint = _json_safe(dict(fingerprint or {}))
    self._rebuild = rebuild
    self._it = None  # created on first use, so a restore never builds it twice
    self.batches_read = 0  # batches returned since start_step (restored by restore_state)

  def _iterator(self):
    """The tf.data iterator, as numpy (`as_numpy_iterator` is checkpointable too)."""
    if self._it is None:
      self._it = self.dataset.as_numpy_iterator()
    return self._it

  def __iter__(self) -> "CotrainIterator":
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    it = self._iterator()
    try:
      batch = next(it)
    except tf.errors.OpError as e:
      msg = e.message.strip().splitlines()
      detail = next((l for l in msg if "VlaxError" in l), msg[0] if msg else str(e))
      raise VlaxError(f"input pipeline: {detail.strip()}") from e
    self.batches_read += 1
    return batch

  def save_state(self, directory: str) -> None:
    """Writes the input position into `directory` (one process's own; local or gs://)."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.io.gfile.makedirs(directory)
    try:
      tf.train.Checkpoint(iterator=self._iterator()).write(
          os.path.join(directory, _TF_PREFIX))
    except tf.errors.OpError as e:
      raise VlaxError(f"input pipeline state {directory}: cannot save the tf.data "
                      f"iterator: {e.message.strip().splitlines()[0]}") from e
    state = {"format": STATE_FORMAT, "start_step": self.start_step,
             "batches_read": self.batches_read, "per_host_batch": self.per_host_batch,
             "fingerprint": self.fingerprint, "counters": self.counters.as_dict()}
    tmp = os.path.join(directory, _STATE_JSON + ".tmp")
    with tf.io.gfile.GFile(tmp, "w") as f:
      f.write(json.dumps(state, indent=1, sort_keys=True))
    # Written last (and renamed into place): its presence means the save is complete.
    tf.io.gfile.rename(tmp, os.path.join(directory, _STATE_JSON), overwrite=True)

  def restore_state(self, directory: str) -> None:
    """Continues the stream saved in `directory` by `save_state`.

    Raises VlaxError naming `directory` if the state is missing or incomplete, or was
    saved by a pipeline with another config (data config, seed, batch size, process).
    """
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    path = os.path.join(directory, _STATE_JSON)
    if not tf.io.gfile.exists(path):
      raise VlaxError(f"input pipeline state {directory}: no {_STATE_JSON} (missing or "
                      f"incomplete save)")
    try:
      with tf.io.gfile.GFile(path) as f:
        state = json.loads(f.read())
    except (tf.errors.OpError, OSError, ValueError) as e:
      raise VlaxError(f"input pipeline state {path}: unreadable: {e}") from e
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
      raise VlaxError(f"input pipeline state {path}: format "
                      f"{state.get('format') if isinstance(state, dict) else None!r}, "
                      f"expected {STATE_FORMAT!r}")
    saved = state.get("fingerprint", {})
    diff = sorted(k for k in set(saved) | set(self.fingerprint)
                  if saved.get(k) != self.fingerprint.get(k))
    if diff or state.get("per_host_batch") != self.per_host_batch:
      detail = "; ".join(f"{k}: saved {saved.get(k)!r}, now {self.fingerprint.get(k)!r}"
                         for k in diff[:5]) or (
                             f"per_host_batch: saved {state.get('per_host_batch')}, "
                             f"now {self.per_host_batch}")
      raise VlaxError(f"input pipeline state {directory} was saved by an incompatible "
                      f"pipeline ({detail})")
    if not tf.io.gfile.exists(os.path.join(directory, _TF_PREFIX + ".index")):
      raise VlaxError(f"input pipeline state {directory}: no tf.data iterator checkpoint "
                      f"({_TF_PREFIX}.index)")
    origin = int(state["start_step"])
    dataset = self.dataset
    if origin != self.start_step:
      if self._rebuild is None:
        raise VlaxError(f"input pipeline state {directory} was saved by a pipeline seeded "
                        f"with start_step={origin}, this one uses {self.start_step} and "
                        f"cannot be rebuilt")
      dataset = _checkpointable(self._rebuild(origin))
    it = dataset.as_numpy_iterator()
    try:
      tf.train.Checkpoint(iterator=it).read(
          os.path.join(directory, _TF_PREFIX)).assert_consumed()
    except (tf.errors.OpError, AssertionError, ValueError) as e:
      # Nothing changed: the caller may still fall back to the start_step-seeded stream.
      first = (e.message if isinstance(e, tf.errors.OpError) else str(e)).strip()
      raise VlaxError(f"input pipeline state {directory} does not fit this pipeline "
                      f"(changed datasets or transforms?): "
                      f"{first.splitlines()[0] if first else type(e).__name__}") from e
    self.dataset, self.start_step, self._it = dataset, origin, it
    self.batches_read = int(state.get("batches_read", 0))
    _set_counts(self.counters, state.get("counters", {}))


def _json_safe(x: Any) -> Any:
  """Config values -> JSON types (tuples -> lists, ConfigDicts -> dicts)."""
  return json.loads(json.dumps(x, sort_keys=True, default=lambda o: (
      dict(o) if hasattr(o, "keys") else list(o) if hasattr(o, "__iter__") else str(o))))


def _set_counts(counters: DataCounters, counts: Mapping[str, int]) -> None:
  """Replaces every count of `counters` (DataCounters has no public setter)."""
  # pylint: disable=protected-access
  with counters._lock:
    counters._counts.clear()
    counters._counts.update({str(k): int(v) for k, v in counts.items()})
  # pylint: enable=protected-access


def make_train_iterator(*, builder: SequenceBuilder, global_batch_size: int,
                        robot_frames: Any = None, num_robot_datasets: int = 0,
                        web_sources: Sequence[Any] = (), web_weight: float = 0.5,
                        web_schedule: Sequence[Sequence[float]] | None = None,
                        seed: int = 0, web_seed: int | None = None, start_step: int = 0,
                        on_error: str = "skip",
                        max_text_chars: int = 2000, shuffle_buffer: int = 1000,
                        repeat: bool = True, process_index: int | None = None,
                        process_count: int | None = None,
                        rebuild: Callable[[int], Any] | None = None,
                        fingerprint: Mapping[str, Any] | None = None,
                        concept: str = "", robot_drop_concept: bool = False,
                        web_drop_concept: bool = False) -> CotrainIterator:
  """The training input: robot frames + web sources -> iterator of numpy batches.

  robot_frames: tf.data of standardized frames for THIS host (e.g. from
    `vlax.data.robot.make_robot_dataset`, already sharded/shuffled/repeated), or None.
  num_robot_datasets: datasets in the robot mixture (web dataset_index starts after them).
  web_sources: `vlax.data.web.WebSource`s (empty = robot only).
  Batches: dict of numpy arrays with the model-batch keys, leading dim
  global_batch_size / process_count.
  rebuild: start_step -> this pipeline's tf.data seeded for that step (what
    `CotrainIterator.restore_state` calls for a state saved by a run seeded otherwise).
  fingerprint: JSON-safe settings a saved state must match to be restored.
  concept: a held-out word counted in both streams (`vlax.data.concepts`); robot frames
    whose instruction names it are dropped with `robot_drop_concept`, web examples that
    involve it with `web_drop_concept`.
  """
  pi, pc = process_info(process_index, process_count)
  if concept and robot_frames is not None:
    robot_frames = concepts_lib.filter_robot_frames(robot_frames, concept, builder.counters,
                                                    robot_drop_concept)
  robot = builder.robot_dataset(robot_frames) if robot_frames is not None else None
  web = None
  if web_sources:
    raw = web_lib.make_web_dataset(
        web_sources, image_size=builder.config.image_size, on_error=on_error,
        max_text_chars=max_text_chars, counters=builder.counters,
        seed=seed if web_seed is None else web_seed,
        shuffle_buffer=shuffle_buffer, repeat=repeat, process_index=pi, process_count=pc,
        concept=concept, drop_concept=web_drop_concept)
    web = builder.web_dataset(raw, index_offset=num_robot_datasets)
  ds = make_cotrain_dataset(robot, web, global_batch_size=global_batch_size,
                            web_weight=web_weight, web_schedule=web_schedule, seed=seed,
                            start_step=start_step, process_index=pi, process_count=pc)
  bs = per_host_batch_size(global_batch_size, pc)
  fp = {"global_batch_size": int(global_batch_size), "process_index": pi,
        "process_count": pc, **dict(fingerprint or {})}
  return CotrainIterator(ds, builder.counters, bs, start_step=start_step, rebuild=rebuild,
                         fingerprint=fp)


# --- config-driven entry point (what the training CLI calls) --------------------------


def default_data_config():
  """Every `config.data` key `make_data_iterator` reads, with defaults (debug-sized)."""
  c = ml_collections.ConfigDict()
  c.robot_datasets = "toy"  # mixture name, or "name:weight,name:weight", or "" (none)
  c.data_dir = ""  # "" with toy datasets: generated under <workdir>/toy_data
  c.toy_episodes = 200  # per toy robot (~5 frames each: episodes end at success)
  c.toy_episode_len = 20  # step limit of a toy episode
  c.toy_end_at_success = True  # episodes end when the block is reached (no idle frames)
  c.toy_num_blocks = toy_env.NUM_BLOCKS  # blocks on the table (the instruction names one)
  c.toy_block_size = toy_env.BLOCK_SIZE  # block half-width in world units ([-1, 1] table)
  # Held-out concept (vlax.data.concepts): a word, e.g. "purple"; "" = off. When set, both
  # streams count the examples that involve it (DataCounters "<source>/concept_*").
  c.held_out_concept = ""
  # Robot data with a held-out concept: "absent" (toy scenes never draw that colour and
  # instructions naming it are dropped), "distractor" (toy: it may be a distractor, never
  # the target), or "keep" (unchanged; counted only).
  c.held_out_robot = "absent"
  # Drop every web example whose prompt, answer or drawn colours involve the concept.
  c.web_drop_concept = False
  c.stats_cache_dir = ""  # "" = the robot pipeline's default (<workdir>/cache for toy)
  c.image_size = 64
  c.cameras = ("primary", "wrist")
  c.chunk_len = 4
  c.history = 1
  c.shuffle_buffer = 2000
  c.augment = True
  # Recipe switches (README "Meta-World"); each default is off and keeps the stream as
  # it was. random_shift: DrQ shift, edge-pad every camera by N px and random-crop back,
  # one shift per camera per example (the same on every history step), training only.
  c.random_shift = 0
  # proprio_dropout: training only, per example, with this probability the prompt is the
  # one of proprio_bins=0 (no "State: ..."), so the policy cannot lean on proprio alone.
  c.proprio_dropout = 0.0
  # proprio_noise: training only, Gaussian noise (std, in normalized units: the range
  # [-1, 1]) on the proprio before it is binned; a regulariser for few-demo state input.
  c.proprio_noise = 0.0
  # proprio_source: what is binned into the prompt: "proprio" (the dataset's own) or
  # "full_state" (its simulator state, e.g. Meta-World's 39-D observation: the state
  # oracle); the Policy and `vlax eval --env metaworld` feed the same source.
  c.proprio_source = "proprio"
  # proprio_format: how the binned proprio is written: "text" (digits, pi0-FAST style) or
  # "action_tokens" (one action-bin token per dim, its value on the action grid; bins and
  # quantile action tokenizers only).
  c.proprio_format = "text"
  # "toy", a SentencePiece .model path (Gemma's tokenizer.model), or "init_from" (the
  # one config.init_from's checkpoint carries, e.g. an `vlax import-openpi` checkpoint)
  c.text_tokenizer = "toy"
  # bins | quantile | fast | init_from (config.init_from's tokenizer and vocabulary range,
  # so a fine-tune keeps the ids the imported model learned)
  c.action_tokenizer = "bins"
  c.num_bins = 256
  c.fast_vocab_size = 1024
  c.fast_scale = 10.0
  c.fit_chunks = 2000  # chunks used to fit FAST / quantile bins (same on every host)
  c.action_vocab_start = -1  # -1 = default_action_vocab (see vlax.actions.vocab)
  c.max_len = 64
  c.prompt_template = "What action should the robot take to {instruction}?"
  c.proprio_bins = 0
  c.on_overlong = "drop"
  c.sequence_format = "vlax"  # "vlax" | "openpi" (vlax.data.sequence: openpi's layout)
  c.web_sources = ({"kind": "toy", "num_examples": 1024},)  # WebSource fields per entry
  c.web_weight = 0.5
  c.web_schedule = ()  # ((step, weight), ...) piecewise linear; () = constant web_weight
  c.web_on_error = "skip"
  c.max_text_chars = 2000
  c.web_shuffle_buffer = 1000
  return c


# Keys added after input states were first saved: left out of a state's fingerprint at
# their default, so a run saved before they existed still resumes.
_RECIPE_DEFAULTS = {"random_shift": 0, "proprio_dropout": 0.0, "proprio_noise": 0.0,
                    "proprio_source": "proprio", "proprio_format": "text",
                    "held_out_concept": "", "held_out_robot": "absent",
                    "web_drop_concept": False}


def resolve_data_config(config: Any):
  """`config.data` merged over `default_data_config()`; unknown keys are an error."""
  d = default_data_config()
  if "data" in config and config.data is not None:
    unknown = sorted(set(dict(config.data)) - set(d.keys()))
    if unknown:
      raise VlaxError(f"config.data: unknown keys {unknown}; known: {sorted(d.keys())}")
    d.update(dict(config.data))
  return d


def _check_metric_names(robot: Sequence[str], web: Sequence[str]) -> None:
  """Each name becomes a `loss/<name>` metric next to `loss/robot` and `loss/web`."""
  seen: dict[str, str] = {s: "the source metric" for s in SOURCE_NAMES}
  for kind, names in (("robot dataset", robot), ("web source", web)):
    for n in names:
      if n in seen:
        raise VlaxError(f"{kind} name {n!r} clashes with {seen[n]} of the same name "
                        f"(metrics are keyed loss/<name>); rename it")
      seen[n] = f"the {kind}"


def robot_entries(spec: Any) -> list[tuple[str, float]]:
  """config.data.robot_datasets -> [(registry name, weight)]: a mixture name,
  "name:weight,name" or a list of those; empty = no robot data."""
  from vlax.data import mixture as mixture_lib  # pylint: disable=g-import-not-at-top
  if not spec:
    return []
  if isinstance(spec, str):
    if spec in mixtures.MIXTURES:
      return mixtures.get_mixture(spec)
    spec = [s.strip() for s in spec.split(",") if s.strip()]
  return mixture_lib.parse_datasets(list(spec))


@dataclasses.dataclass(frozen=True)
class RobotData:
  """The robot datasets of a data config, resolved once per run (`robot_data`)."""
  entries: tuple[tuple[str, float], ...]  # (registry name, weight); () = no robot data
  data_dir: str
  # {name: statistics}: every stream of the run (train, eval, rebuilds, the tokenizer's
  # fitting sample) is normalized with these, and checkpoints store them.
  statistics: dict[str, Any]

  @property
  def names(self) -> list[str]:
    return [n for n, _ in self.entries]


def robot_data(d: Any, entries: Sequence[tuple[str, float]], *, workdir: str,
               process_index: int, process_count: int) -> RobotData:
  """Finds the robot datasets and their statistics (computed, or read from the cache).

  With an empty `d.data_dir` the built-in toy datasets are written under
  <workdir>/toy_data (one copy per process when there are several) from the `d.toy_*`
  settings, and their statistics are cached under <workdir>/cache.
  """
  names = [n for n, _ in entries]
  data_dir, stats_cache = d.data_dir, d.stats_cache_dir or None
  if entries and not data_dir:
    if not all(n in toy.TOY_DATASETS for n in names):
      raise VlaxError(f"config.data.data_dir is empty but the robot datasets {names} are "
                      f"not the built-in toy ones")
    data_dir = os.path.join(workdir, "toy_data" if process_count == 1
                            else f"toy_data_p{process_index}")
    toy.write_for_data_config(data_dir, d, names, image_size=int(d.image_size))
    stats_cache = stats_cache or os.path.join(workdir, "cache")
  source = str(d.proprio_source)
  statistics = {n: stats_lib.get_dataset_statistics(n, data_dir, cache_dir=stats_cache,
                                                    progress=False, proprio_source=source)
                for n in names}
  return RobotData(tuple(entries), data_dir, statistics)


def robot_frames(d: Any, robot: RobotData, *, seed: int, process_index: int,
                 process_count: int, train: bool = True, augment: bool | None = None,
                 shuffle_buffer: int | None = None):
  """The robot frame stream of a data config for one host (tf.data), or None.

  The one place config.data becomes `make_robot_dataset` arguments: the training stream,
  the evaluation stream (train=False: finite, in order, never augmented), its rebuilds
  for another start step and the tokenizer's fitting sample all come from here.
  augment / shuffle_buffer: None = config.data's.
  """
  if not robot.entries:
    return None
  from vlax.data import robot as robot_lib  # pylint: disable=g-import-not-at-top - TF
  frames, _ = robot_lib.make_robot_dataset(
      list(robot.entries), robot.data_dir, statistics=robot.statistics,
      image_size=int(d.image_size), cameras=tuple(d.cameras), chunk_len=int(d.chunk_len),
      history=int(d.history), train=train, seed=seed,
      shuffle_buffer=int(d.shuffle_buffer) if shuffle_buffer is None else shuffle_buffer,
      augment=(bool(d.augment) and train) if augment is None else augment,
      random_shift=int(d.random_shift), proprio_dropout=float(d.proprio_dropout),
      proprio_noise=float(d.proprio_noise),
      proprio_source=str(d.proprio_source),
      process_index=process_index, process_count=process_count, progress=False)
  return frames


def action_fit_chunks(d: Any, robot: RobotData) -> list[np.ndarray]:
  """`d.fit_chunks` normalized action chunks to fit a tokenizer on.

  The same chunks on every host and at every resume (the unsharded stream, seed 0, no
  shuffle buffer, no augmentation), so every host fits the same tokenizer.
  """
  if not robot.entries:
    raise VlaxError(f"action tokenizer {d.action_tokenizer!r} must be fitted on robot "
                    f"data, but config.data.robot_datasets is empty")
  frames = robot_frames(d, robot, seed=0, process_index=0, process_count=1, augment=False,
                        shuffle_buffer=1)
  return collect_action_chunks(frames, int(d.fit_chunks))


def init_from_metadata(config: Any, what: str) -> dict[str, Any]:
  """The metadata of config.init_from's checkpoint (for data.<what> = "init_from")."""
  path = str(config.get("init_from", "") or "")
  if not path:
    raise VlaxError(f"config.data.{what}='init_from' needs config.init_from (a vlax "
                    f"checkpoint, e.g. from `vlax import-openpi`)")
  return ckpt_format.read_metadata(path)


def action_tokenizer(d: Any, robot: RobotData,
                     settings: Mapping[str, Any] | None = None) -> ActionTokenizer:
  """A checkpoint's action tokenizer (`settings`), else config.data's, fitted on the
  robot data if it learns from data (FAST, quantile bins)."""
  if d.action_tokenizer == "init_from" and not settings:
    raise VlaxError("config.data.action_tokenizer='init_from': the init_from checkpoint "
                    "has no action tokenizer settings")
  if settings:
    tok = tokenizer_from_dict(dict(settings))
  elif d.action_tokenizer == "fast":
    tok = make_action_tokenizer("fast", vocab_size=int(d.fast_vocab_size),
                                scale=float(d.fast_scale))
  else:
    tok = make_action_tokenizer(d.action_tokenizer, num_bins=int(d.num_bins))
  if not tok.fitted:
    fit_action_tokenizer(tok, action_fit_chunks(d, robot))
  return tok


def action_vocab(d: Any, tok: ActionTokenizer, text: TextTokenizer,
                 settings: Mapping[str, Any] | None = None) -> ActionVocab:
  """Where action ids sit in the model vocabulary: a checkpoint's, config.data's
  action_vocab_start, or after the text vocabulary (`default_action_vocab`)."""
  if settings and "vocab" in settings:
    return ActionVocab.from_dict(settings["vocab"])
  if int(d.action_vocab_start) >= 0:
    return ActionVocab(int(d.action_vocab_start), tok.vocab_size)
  if d.sequence_format == "openpi":
    return openpi_action_vocab(text.vocab_size, tok.vocab_size)
  return default_action_vocab(text.vocab_size, tok.vocab_size)


def held_out_concept(d: Any, entries: Sequence[tuple[str, float]]) -> str:
  """config.data's held-out concept ("" = off), checked before any data is written."""
  concept = concepts_lib.check_concept(d.held_out_concept)
  mode = str(d.held_out_robot)
  if mode not in toy_env.HELD_OUT_MODES:
    raise VlaxError(f"config.data.held_out_robot must be one of {toy_env.HELD_OUT_MODES}, "
                    f"got {mode!r}")
  if bool(d.web_drop_concept) and not concept:
    raise VlaxError("config.data.web_drop_concept=True needs config.data.held_out_concept")
  toy_robots = any(n in toy.TOY_DATASETS for n, _ in entries) and not d.data_dir
  if concept and toy_robots and mode != "keep" and concept not in toy_env.COLORS:
    raise VlaxError(f"config.data.held_out_concept={concept!r} is not a toy block colour "
                    f"({list(toy_env.COLORS)}), so the toy robot scenes cannot hold it out")
  return concept


def check_fits(builder: SequenceBuilder, robot: RobotData, *, chunk_len: int) -> None:
  """A VlaxError when no robot example of a dataset can fit data.max_len.

  The shortest example a dataset can make (empty instruction, proprio in the middle
  bin, bins: chunk_len x action_dim action tokens, eos) is measured; if even that is
  longer than max_len, every example would be dropped as overlong and training would
  wait forever. A 39-D `full_state` proprio is the usual cause.
  """
  seq = builder.config
  if not isinstance(builder.actions, BinTokenizer):
    return  # FAST: the length depends on the chunk
  if seq.on_overlong == "truncate":
    return  # kept, cut at max_len: nothing is dropped
  for name, st in robot.statistics.items():
    p = len(((st or {}).get("proprio") or {}).get("mean") or [])
    a = len(((st or {}).get("action") or {}).get("mean") or [])
    prompt = builder.robot_prompt_ids(b"", np.zeros([p], np.float32), np.ones([p], bool))
    n = len(prompt) + chunk_len * a + 1 + len(builder._head) + len(builder._tail)  # pylint: disable=protected-access
    if n > seq.max_len:
      what = (f" with the {p}-dim {seq.proprio_source!r} in the prompt"
              if seq.proprio_bins and p else "")
      raise VlaxError(f"dataset {name!r}: its shortest example has {n} tokens{what} "
                      f"(prompt {len(prompt)}, actions {chunk_len * a}, eos), more than "
                      f"config.data.max_len={seq.max_len}: set --config.data.max_len to "
                      f"at least {n} (plus the instruction)")


def make_data_iterator(config: Any, *, process_index: int, process_count: int,
                       start_step: int = 0, workdir: str | None = None,
                       train: bool = True, action_tokenizer_settings: dict | None = None
                       ) -> tuple[CotrainIterator, dict]:
  """Training (or eval) batches + checkpoint metadata from a training config.

  Reads config.seed, config.batch_size and config.data.* (`default_data_config`).
  Matches the trainer's `data_iterator_fn(config, process_index, process_count,
  start_step) -> (iterator, metadata)` once `workdir` is bound. Shuffle seeds are folded
  with start_step and process_index, so a resumed run does not replay the same order.
  `action_tokenizer_settings` (a checkpoint's metadata["action_tokenizer"]) reuses a
  fitted tokenizer instead of fitting one. The iterator's `restore_state` continues a
  saved stream exactly (rebuilding the pipeline with the saved run's start_step) and
  refuses a state saved with another config.data / seed / batch_size / process layout.
  """
  d = resolve_data_config(config)
  seed = int(config.get("seed", 0))

  # The sources: robot datasets (toy ones written if need be) and web sources.
  entries = robot_entries(d.robot_datasets)
  web_sources = [web_lib.WebSource(**dict(s)) for s in (d.web_sources or ())]
  web_names = [s.display_name for s in web_sources]
  _check_metric_names([n for n, _ in entries], web_names)
  concept = held_out_concept(d, entries)
  robot = robot_data(d, entries, workdir=workdir or ".", process_index=process_index,
                     process_count=process_count)

  # Frames / web examples -> model examples: tokenizers, vocabulary, sequence layout.
  init_meta = {}
  if "init_from" in (d.text_tokenizer, d.action_tokenizer):
    init_meta = init_from_metadata(config, "text_tokenizer" if d.text_tokenizer
                                   == "init_from" else "action_tokenizer")
  if d.text_tokenizer == "init_from":
    text = TextTokenizer.from_dict(init_meta.get("text_tokenizer") or {})
  else:
    text = (load_toy_tokenizer() if d.text_tokenizer == "toy"
            else TextTokenizer(d.text_tokenizer))
  if d.action_tokenizer == "init_from" and not action_tokenizer_settings:
    action_tokenizer_settings = init_meta.get("action_tokenizer") or None
    fmt = ((action_tokenizer_settings or {}).get("sequence") or {}).get("format", "vlax")
    if fmt != d.sequence_format:
      raise VlaxError(f"config.init_from {config.init_from} was trained in sequence "
                      f"format {fmt!r} but config.data.sequence_format is "
                      f"{d.sequence_format!r}")
  tok = action_tokenizer(d, robot, action_tokenizer_settings)
  vocab = action_vocab(d, tok, text, action_tokenizer_settings)
  image_size = int(d.image_size)
  builder = SequenceBuilder(
      SequenceConfig(max_len=int(d.max_len), cameras=tuple(d.cameras),
                     image_size=(image_size, image_size), window=int(d.history),
                     prompt_template=d.prompt_template, proprio_bins=int(d.proprio_bins),
                     on_overlong=d.on_overlong, format=d.sequence_format,
                     proprio_source=str(d.proprio_source),
                     proprio_format=str(d.proprio_format)),
      text, tok, vocab)
  check_fits(builder, robot, chunk_len=int(d.chunk_len))

  # What a saved input state must match (where the data lives may move between runs;
  # what is read and how may not).
  fingerprint = {"seed": seed, "train": bool(train),
                 "data": {k: v for k, v in d.to_dict().items()
                          if k not in ("data_dir", "stats_cache_dir")
                          and not (k in _RECIPE_DEFAULTS and v == _RECIPE_DEFAULTS[k])}}

  def batches(step: int) -> CotrainIterator:
    """This host's batches with every stream seeded for `step` (a resumed run's start
    step). `restore_state` rebuilds them for the step a saved state was seeded with."""
    data_seed = seeds_lib.step_seed(seed, step)  # shuffle, augmentation and web order
    frames = robot_frames(d, robot, train=train, seed=data_seed,
                          process_index=process_index, process_count=process_count)
    return make_train_iterator(
        builder=builder, global_batch_size=int(config.batch_size), robot_frames=frames,
        num_robot_datasets=len(entries), web_sources=web_sources,
        web_weight=float(d.web_weight),
        web_schedule=[tuple(p) for p in d.web_schedule] or None, seed=seed,
        web_seed=data_seed, start_step=step, on_error=d.web_on_error,
        max_text_chars=int(d.max_text_chars),
        shuffle_buffer=int(d.web_shuffle_buffer) if train else 1, repeat=train,
        process_index=process_index, process_count=process_count,
        rebuild=lambda s: batches(s).dataset, fingerprint=fingerprint, concept=concept,
        robot_drop_concept=str(d.held_out_robot) != "keep",
        web_drop_concept=bool(d.web_drop_concept))

  meta = builder.metadata(dataset_names=robot.names + web_names, chunk_len=int(d.chunk_len),
                          statistics=robot.statistics)
  return batches(start_step), meta
