"""Web vision-language sources (captions, VQA) for co-training, plus a toy generator.

Every source yields raw web examples
  {"image": uint8 [H, W, 3] (resized like robot images), "prompt": tf.string,
   "answer": tf.string, "dataset_index": int32 (0-based among web sources),
   "dataset_name": tf.string}
that `vlax.data.sequence.SequenceBuilder.web_dataset` turns into model examples.

Sources (`WebSource.kind`):
  * "tfds":     a TFDS dataset by name + data_dir with a key mapping ('/'-joined paths,
                e.g. coco_captions: image_key="image", answer_key="captions/text"; list
                fields take their first entry). A fixed `prompt` (e.g. "caption en") or a
                `prompt_key` (VQA question).
  * "llava":    LLaVA-style JSON list or JSONL of {"image": "rel/path.jpg",
                "conversations": [{"from": "human", "value": "<image>\nQ"},
                {"from": "gpt", "value": "A"}, ...]} + an image folder; every
                (human, gpt) pair becomes one example.
  * "tfrecord": shards (glob) of tf.train.Example {image: encoded bytes, prompt, answer}.
  * "toy":      procedural coloured shapes with learnable questions (`toy_examples`).

Held-out concept (`make_web_dataset(concept=...)`): every example whose prompt, answer or
drawn colours (known for the toy source, `toy_examples`' "colors") involve the concept word
is counted ("web/concept_mention") or, with `drop_concept`, removed and counted
("web/concept_dropped"); see `vlax.data.concepts`.

Malformed data (missing image file, undecodable image, empty answer, text longer than
`max_text_chars`, a record without image/conversations) is skipped or raises a VlaxError
naming the culprit, per `on_error` ('skip' | 'raise'); skips are counted in a
`DataCounters` ("web/<reason>" and "web/<reason>/<dataset>"), never silent. Problems
visible from the index (LLaVA records, missing files) are counted once when the source is
built; image/answer problems are counted as the stream reaches them.
"""

from __future__ import annotations

import dataclasses
import glob
import io
import json
import os
import pathlib
from typing import Any, Sequence

import numpy as np
from PIL import Image

from vlax.data import seeds as seeds_lib
from vlax.data.concepts import ConceptCounter
from vlax.data.sequence import DataCounters, filter_flagged
from vlax.errors import VlaxError

ON_ERROR_MODES = ("skip", "raise")
KINDS = ("tfds", "llava", "tfrecord", "toy")


@dataclasses.dataclass(frozen=True)
class WebSource:
  """One web dataset of a co-training mixture (config-friendly: plain fields)."""

  kind: str
  name: str = ""
  weight: float = 1.0
  path: str = ""  # llava: .json/.jsonl file; tfrecord: file glob
  image_dir: str = ""  # llava: folder the "image" paths are relative to
  data_dir: str | None = None  # tfds
  split: str = "train"  # tfds
  image_key: str = "image"  # tfds
  prompt_key: str = ""  # tfds: key of the question ("" = use `prompt`)
  answer_key: str = "captions/text"  # tfds
  prompt: str = "caption en"  # tfds: fixed prompt when prompt_key is empty
  num_examples: int = 512  # toy
  seed: int = 0  # toy

  def __post_init__(self):
    if self.kind not in KINDS:
      raise VlaxError(f"WebSource {self.name!r}: kind must be one of {KINDS}, got "
                      f"{self.kind!r}")
    if self.weight < 0:
      raise VlaxError(f"WebSource {self.name!r}: negative weight {self.weight}")

  @property
  def display_name(self) -> str:
    return self.name or (self.kind if self.kind == "toy" else
                         f"{self.kind}:{os.path.basename(self.path) or self.path}")


def _check_on_error(on_error: str) -> None:
  if on_error not in ON_ERROR_MODES:
    raise VlaxError(f"web data on_error must be one of {ON_ERROR_MODES}, got {on_error!r}")


# --- toy generator --------------------------------------------------------------------

TOY_COLORS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (40, 60, 220),
              "yellow": (235, 215, 30), "purple": (140, 40, 180), "white": (245, 245, 245)}
TOY_SHAPES = ("square", "circle", "triangle")
TOY_POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left",
                 "bottom", "bottom right")


def _draw(img: np.ndarray, shape: str, color, cy: float, cx: float, r: float) -> None:
  h, w = img.shape[:2]
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
  dy, dx = yy - cy, xx - cx
  if shape == "square":
    m = (np.abs(dy) <= r) & (np.abs(dx) <= r)
  elif shape == "circle":
    m = dy * dy + dx * dx <= r * r
  else:  # triangle pointing up
    m = (dy <= r) & (dy >= -r) & (np.abs(dx) <= (dy + r) / 2)
  img[m] = color


def toy_examples(num: int, image_size: int = 64, seed: int = 0) -> list[dict[str, Any]]:
  """Procedural VQA/caption examples: 1-2 coloured shapes on a 3x3 grid of positions.

  Questions ("what color is the square?", "where is the red circle?", "what shape is
  blue?", "caption en") are answerable from the image alone, so a model can learn them.
  Each example also lists the colours it draws ("colors"), so a held-out colour can be
  filtered by what the image shows, not only by its text. Deterministic in `seed`.
  """
  rng = np.random.default_rng(seed)
  colors = list(TOY_COLORS)
  out = []
  cell = image_size / 3
  for _ in range(num):
    img = np.full([image_size, image_size, 3], 60, np.uint8)
    n = int(rng.integers(1, 3))
    cs = rng.choice(len(colors), n, replace=False)
    ss = rng.choice(len(TOY_SHAPES), n, replace=False)
    ps = rng.choice(len(TOY_POSITIONS), n, replace=False)
    objs = []
    for c, s, p in zip(cs, ss, ps):
      cy, cx = (p // 3 + 0.5) * cell, (p % 3 + 0.5) * cell
      _draw(img, TOY_SHAPES[s], TOY_COLORS[colors[c]], cy, cx, cell * 0.35)
      objs.append((colors[c], TOY_SHAPES[s], TOY_POSITIONS[p]))
    color, shape, pos = objs[int(rng.integers(0, n))]
    q = int(rng.integers(0, 4))
    if q == 0:
      prompt, answer = f"what color is the {shape}?", color
    elif q == 1:
      prompt, answer = f"where is the {color} {shape}?", pos
    elif q == 2:
      prompt, answer = f"what shape is {color}?", shape
    else:
      prompt = "caption en"
      answer = " and ".join(f"a {c} {s} at the {p}" for c, s, p in objs)
    out.append({"image": img, "prompt": prompt, "answer": answer,
                "colors": [c for c, _, _ in objs]})
  return out


def encode_png(img: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(np.asarray(img, np.uint8)).save(buf, format="PNG")
  return buf.getvalue()


def web_tf_example(image_bytes: bytes, prompt: str, answer: str) -> bytes:
  """Serialized tf.train.Example in the "tfrecord" source format."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  def b(v):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))
  ex = tf.train.Example(features=tf.train.Features(feature={
      "image": b(image_bytes), "prompt": b(prompt.encode()), "answer": b(answer.encode())}))
  return ex.SerializeToString()


def write_toy_tfrecords(out_dir: str | os.PathLike, num: int, image_size: int = 64,
                        seed: int = 0, num_shards: int = 2) -> list[str]:
  """Writes `toy_examples` as PNG-encoded TFRecord shards; returns the shard paths."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  exs = toy_examples(num, image_size, seed)
  paths = [str(out_dir / f"toy_web-{i:05d}-of-{num_shards:05d}.tfrecord")
           for i in range(num_shards)]
  writers = [tf.io.TFRecordWriter(p) for p in paths]
  for i, ex in enumerate(exs):
    writers[i % num_shards].write(web_tf_example(encode_png(ex["image"]), ex["prompt"],
                                                 ex["answer"]))
  for w in writers:
    w.close()
  return paths


# --- validation helpers (numpy side) --------------------------------------------------


class _Checker:
  """Skip-or-raise + counting, shared by the python-side and graph-side checks."""

  def __init__(self, on_error: str, counters: DataCounters, max_text_chars: int,
               concept: str = "", drop_concept: bool = False):
    _check_on_error(on_error)
    self.on_error = on_error
    self.counters = counters
    self.max_text_chars = max_text_chars
    self.concept = ConceptCounter(concept, "web", counters, drop_concept) if concept else None

  def fail(self, reason: str, dataset: str, detail: str) -> None:
    """Counts (skip) or raises (raise) one malformed example."""
    if self.on_error == "raise":
      raise VlaxError(f"web dataset {dataset!r}: {reason.replace('_', ' ')}: {detail}")
    self.counters.add("web", reason, dataset)

  def text_problem(self, prompt: str, answer: str) -> str | None:
    if not answer.strip():
      return "empty_answer"
    if len(prompt) + len(answer) > self.max_text_chars:
      return "overlong_text"
    return None

  def decode(self, data: bytes, dataset: bytes, origin: bytes):
    """numpy_function: encoded image -> (uint8 [h, w, 3], ok)."""
    try:
      with Image.open(io.BytesIO(data)) as im:
        arr = np.asarray(im.convert("RGB"), np.uint8)
      if arr.size == 0:
        raise ValueError("empty image")
      return arr, True
    except Exception as e:  # pylint: disable=broad-except
      self.fail("undecodable_image", dataset.decode(), f"{origin.decode()} ({e})")
      return np.zeros([1, 1, 3], np.uint8), False

  def check_text_tf(self, prompt, answer, dataset, origin, concepts=b""):
    """numpy_function: (prompt, answer, the image's known concepts) -> ok."""
    p = prompt.decode("utf-8", errors="replace")
    a = answer.decode("utf-8", errors="replace")
    reason = self.text_problem(p, a)
    if reason is None:
      if self.concept is None:
        return True
      return self.concept.keep(f"{p}\n{a}\n{concepts.decode('utf-8', errors='replace')}",
                               dataset.decode())
    self.fail(reason, dataset.decode(), f"{origin.decode()} (prompt {p[:60]!r}, "
                                        f"answer {a[:60]!r}, {len(p) + len(a)} chars)")
    return False


# --- sources -> tf.data of (encoded or decoded) raw examples --------------------------


def _llava_pairs(source: WebSource, checker: _Checker) -> list[tuple[str, str, str]]:
  """Parses a LLaVA JSON/JSONL file into (image path, prompt, answer) triples."""
  path = pathlib.Path(source.path)
  name = source.display_name
  if not path.is_file():
    raise VlaxError(f"web dataset {name!r}: no such file {path}")
  text = path.read_text()
  try:
    if path.suffix == ".jsonl":
      records = [json.loads(l) for l in text.splitlines() if l.strip()]
    else:
      records = json.loads(text)
  except json.JSONDecodeError as e:
    raise VlaxError(f"web dataset {name!r}: {path} is not valid JSON ({e})") from e
  if not isinstance(records, list):
    raise VlaxError(f"web dataset {name!r}: {path} must hold a list of records")
  image_dir = pathlib.Path(source.image_dir or path.parent)
  out = []
  for i, rec in enumerate(records):
    where = f"{path} record {i}"
    conv = rec.get("conversations") if isinstance(rec, dict) else None
    if not isinstance(conv, list) or not rec.get("image"):
      checker.fail("malformed_record", name, f"{where}: needs 'image' and 'conversations'")
      continue
    img_path = image_dir / rec["image"]
    if not img_path.is_file():
      checker.fail("missing_image", name, f"{where}: {img_path}")
      continue
    turns = [t for t in conv if isinstance(t, dict)]
    for j in range(0, len(turns) - 1, 2):
      q, a = turns[j], turns[j + 1]
      if q.get("from") != "human" or a.get("from") != "gpt":
        checker.fail("malformed_record", name, f"{where} turn {j}: expected human, gpt")
        break
      prompt = str(q.get("value", "")).replace("<image>", "").strip()
      answer = str(a.get("value", "")).strip()
      reason = checker.text_problem(prompt, answer)
      if reason:
        checker.fail(reason, name, f"{where} turn {j}")
        continue
      out.append((str(img_path), prompt, answer))
  return out


def _encoded_to_raw(ds, checker: _Checker, image_size: tuple[int, int], index: int,
                    name: str):
  """{image: bytes, prompt, answer, origin} -> raw web examples (decode + checks)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from vlax.data import images  # pylint: disable=g-import-not-at-top

  def decode(ex):
    img, ok = tf.numpy_function(checker.decode, [ex["image"], name, ex["origin"]],
                                [tf.uint8, tf.bool], stateful=True)
    img = tf.ensure_shape(img, [None, None, 3])
    ok_text = tf.numpy_function(checker.check_text_tf,
                                [ex["prompt"], ex["answer"], name, ex["origin"],
                                 ex.get("concepts", tf.constant(""))],
                                tf.bool, stateful=True)
    out = {"image": images.process(img, image_size), "prompt": ex["prompt"],
           "answer": ex["answer"], "dataset_index": tf.constant(index, tf.int32),
           "dataset_name": tf.constant(name)}
    return out, tf.logical_and(tf.ensure_shape(ok, []), tf.ensure_shape(ok_text, []))

  ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return filter_flagged(ds)


def _decoded_to_raw(ds, checker: _Checker, image_size: tuple[int, int], index: int,
                    name: str):
  """{image: uint8, prompt, answer, origin} -> raw web examples (resize + text checks)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from vlax.data import images  # pylint: disable=g-import-not-at-top

  def fn(ex):
    ok = tf.numpy_function(checker.check_text_tf,
                           [ex["prompt"], ex["answer"], name, ex["origin"],
                            ex.get("concepts", tf.constant(""))], tf.bool, stateful=True)
    out = {"image": images.process(tf.cast(ex["image"], tf.uint8), image_size),
           "prompt": ex["prompt"], "answer": ex["answer"],
           "dataset_index": tf.constant(index, tf.int32), "dataset_name": tf.constant(name)}
    return out, tf.ensure_shape(ok, [])

  ds = ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return filter_flagged(ds)


def _get_path(d, path: str, name: str):
  cur = d
  for part in path.split("/"):
    if part not in cur:
      raise VlaxError(f"web dataset {name!r}: no key {path!r} in its features "
                      f"({sorted(d.keys())})")
    cur = cur[part]
  return cur


def _first_string(x):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if x.shape.rank == 0:
    return x
  x = tf.reshape(x, [-1])
  return tf.cond(tf.size(x) > 0, lambda: x[0], lambda: tf.constant(""))


def map_tfds_features(ds, source: WebSource):
  """TFDS feature dicts -> {image uint8, prompt, answer, origin} via the key mapping."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  name = source.display_name
  keys = [source.image_key, source.answer_key] + ([source.prompt_key] if source.prompt_key
                                                  else [])
  for key in keys:  # fail before tracing (autograph would wrap the error)
    _get_path(ds.element_spec, key, name)

  def fn(ex):
    prompt = (_first_string(_get_path(ex, source.prompt_key, name)) if source.prompt_key
              else tf.constant(source.prompt))
    return {"image": _get_path(ex, source.image_key, name), "prompt": prompt,
            "answer": _first_string(_get_path(ex, source.answer_key, name)),
            "origin": tf.constant(f"{name} ({source.split})")}
  return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def source_dataset(source: WebSource, index: int, *, image_size: tuple[int, int],
                   checker: _Checker, process_index: int = 0, process_count: int = 1):
  """One source -> finite tf.data of raw web examples (this host's shard)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  name = source.display_name
  if source.kind == "toy":
    exs = toy_examples(source.num_examples, max(image_size), source.seed)
    exs = exs[process_index::process_count]
    ds = tf.data.Dataset.from_tensor_slices({
        "image": np.stack([e["image"] for e in exs]),
        "prompt": [e["prompt"] for e in exs], "answer": [e["answer"] for e in exs],
        "origin": [f"toy example {i}" for i in range(len(exs))],
        "concepts": [" ".join(e["colors"]) for e in exs]})
    return _decoded_to_raw(ds, checker, image_size, index, name)
  if source.kind == "llava":
    triples = _llava_pairs(source, checker)[process_index::process_count]
    if not triples:
      raise VlaxError(f"web dataset {name!r}: no usable examples in {source.path}")
    paths, prompts, answers = map(list, zip(*triples))
    ds = tf.data.Dataset.from_tensor_slices(
        {"path": paths, "prompt": prompts, "answer": answers})
    ds = ds.map(lambda e: {"image": tf.io.read_file(e["path"]), "prompt": e["prompt"],
                           "answer": e["answer"], "origin": e["path"]},
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return _encoded_to_raw(ds, checker, image_size, index, name)
  if source.kind == "tfrecord":
    files = sorted(glob.glob(source.path))
    if not files:
      raise VlaxError(f"web dataset {name!r}: no files match {source.path!r}")
    feats = {k: tf.io.FixedLenFeature([], tf.string) for k in ("image", "prompt", "answer")}
    if len(files) >= process_count:
      files_ds = tf.data.Dataset.from_tensor_slices(files[process_index::process_count])
      ds = files_ds.interleave(
          lambda f: tf.data.TFRecordDataset(f).map(lambda r: (r, f)),
          cycle_length=4, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    else:
      ds = tf.data.Dataset.from_tensor_slices(files).interleave(
          lambda f: tf.data.TFRecordDataset(f).map(lambda r: (r, f)), cycle_length=4,
          deterministic=True).shard(process_count, process_index)

    def parse(r, f):
      ex = tf.io.parse_single_example(r, feats)
      ex["origin"] = f
      return ex
    ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return _encoded_to_raw(ds, checker, image_size, index, name)
  # tfds
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  split = source.split
  if process_count > 1:
    split = tfds.even_splits(split, process_count)[process_index]
  tfds_name = source.path or source.name
  try:
    if source.data_dir:  # prepared files: no registered builder class needed
      from vlax.data import rlds  # pylint: disable=g-import-not-at-top
      builder = rlds.load_builder(tfds_name, source.data_dir)
    else:
      builder = tfds.builder(tfds_name)
    ds = builder.as_dataset(split=split, shuffle_files=False)
  except VlaxError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise VlaxError(f"web dataset {name!r}: cannot read TFDS {tfds_name!r} (split "
                    f"{split!r}) from {source.data_dir}: {e}") from e
  return _decoded_to_raw(map_tfds_features(ds, source), checker, image_size, index, name)


def make_web_dataset(sources: Sequence[WebSource], *, image_size: tuple[int, int] | int,
                     on_error: str = "skip", max_text_chars: int = 2000,
                     counters: DataCounters | None = None, seed: int = 0,
                     shuffle_buffer: int = 1000, repeat: bool = True,
                     process_index: int = 0, process_count: int = 1,
                     concept: str = "", drop_concept: bool = False):
  """Web sources -> one tf.data of raw web examples, mixed by `WebSource.weight`.

  Deterministic for a given seed (the seed is folded with `process_index`); each host reads
  its own shard. With `repeat=False` the stream is finite (tests, evaluation).
  concept: a word whose examples are counted, and removed with `drop_concept` (module doc).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if not sources:
    raise VlaxError("make_web_dataset: no web sources given")
  if isinstance(image_size, int):
    image_size = (image_size, image_size)
  counters = counters if counters is not None else DataCounters()
  if drop_concept and not concept:
    raise VlaxError("make_web_dataset: drop_concept needs a concept")
  checker = _Checker(on_error, counters, max_text_chars, concept, drop_concept)
  host_seed = seeds_lib.fold(seed, process_index)
  streams = []
  for i, src in enumerate(sources):
    ds = source_dataset(src, i, image_size=tuple(image_size), checker=checker,
                        process_index=process_index, process_count=process_count)
    if repeat:
      ds = ds.repeat()
    if shuffle_buffer > 1:
      ds = ds.shuffle(shuffle_buffer, seed=seeds_lib.wrap(host_seed + i), reshuffle_each_iteration=True)
    streams.append(ds)
  if len(streams) == 1:
    return streams[0]
  weights = np.asarray([s.weight for s in sources], np.float64)
  if weights.sum() <= 0:
    raise VlaxError("make_web_dataset: web source weights sum to 0")
  return tf.data.Dataset.sample_from_datasets(
      streams, weights=(weights / weights.sum()).tolist(), seed=host_seed,
      stop_on_empty_dataset=False)
