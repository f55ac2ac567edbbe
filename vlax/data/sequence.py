"""Robot frames and web examples -> fixed-length token sequences (the model batch).

Each example is a `vlax.models.batch.Batch` (its fields, shapes and dtypes are documented
there), flattened to a dict of those field names as the tf.data element.

Layout of one sequence (text positions; the image tokens come before them in the model):

  robot: [bos] prompt-text [proprio text] "\n" | action tokens... [eos] | pad...
  web:   [bos] prompt-text "\n"               | answer tokens... [eos] | pad...
         <------------ prefix_mask ----------> <--- targets (loss) --->

- prompt-text: `SequenceConfig.prompt_template.format(instruction=...)` for robot frames,
  the example's own prompt for web data.
- proprio (optional, `proprio_bins > 0`): the valid normalized proprio dims discretized
  into `proprio_bins` uniform bins over [-1, 1] and written as text ("State: 12 200 3;"),
  as in pi0-FAST, so no extra embedding is needed. With `proprio_format="action_tokens"`
  each dim is instead one action-bin token (" State:" ids ";"): the bin's value on the
  action tokenizer's grid, so a dim costs one token, not two to four digit pieces, and its
  embedding is the (tied) one the action targets train, ordered by value. A frame whose
  `observation/proprio_dropped` is True (proprio dropout, training only) gets the prompt
  of `proprio_bins=0` instead.
- action tokens: the chunk's real dims only (`action[:, :action_dim]`, K * action_dim
  scalars), encoded by the action tokenizer and mapped into the reserved vocabulary range
  (`ActionVocab`). Chunk steps past the episode end (action_pad_mask False):
    * bins: encoded (zeros) but excluded from `loss_mask` / `action_token_mask`;
    * FAST: the last valid step is repeated before the DCT (a jump to zero would cost
      tokens and teach a fake stop) and every FAST token is a target.
  Decoding therefore needs (chunk_len, action_dim) per dataset: see `actions_from_tokens`.
- Over-long sequences (> max_len): `on_overlong` = 'drop' (filtered), 'truncate' (cut at
  max_len, the eos and trailing action tokens are lost), or 'raise'. Always counted in
  `DataCounters` (never silent).

openpi's layout (`SequenceConfig.format="openpi"`, what imported pi0-FAST / PaliGemma-
binning checkpoints learned; `vlax import-openpi`), each segment encoded separately:

  robot: [bos] "Task: {instruction}, State: {digits};\n" | "Action: " actions "|" [eos] | pad
         <------------------ prefix_mask ---------------> <-------- targets (loss) -------->

- instruction: lower-cased, stripped, "_" -> " "; digits: the normalized proprio's valid
  dims as `np.digitize(x, linspace(-1, 1, 257)[:-1]) - 1` (-1..255), space-separated
  (empty when the dataset has none); action id t -> V - 1 - 128 - t (`openpi_action_vocab`).
- `action_token_mask` covers the action ids only; the loss covers "Action: ", the actions,
  "|" and eos. A missing camera is a black image that is attended (openpi never masks).
- Web examples keep vlax's layout.

Text is tokenized with `tf.numpy_function` (SentencePiece, cached per distinct string);
uniform/quantile bins are encoded in-graph; FAST goes through `tf.numpy_function`.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from vlax.actions import ActionVocab, BinTokenizer, FASTTokenizer, tokenizer_from_dict
from vlax.data.text_tokenizer import TextTokenizer
from vlax.errors import VlaxError
from vlax.models.batch import Batch, ModelInputs
from vlax.utils import get_path

SOURCE_ROBOT = 0
SOURCE_WEB = 1
SOURCE_NAMES = ("robot", "web")
OVERLONG_MODES = ("drop", "truncate", "raise")
SEQUENCE_FORMATS = ("vlax", "openpi")
PROPRIO_FORMATS = ("text", "action_tokens")
OPENPI_STATE_BINS = 256
OPENPI_ACTION_HEAD = "Action: "
OPENPI_ACTION_TAIL = "|"


class DataCounters:
  """Thread-safe event counts of the input pipeline (dropped / truncated / malformed, and
  examples involving a held-out concept: `vlax.data.concepts`).

  Keys are "<source>/<reason>" and "<source>/<reason>/<dataset_name>"; read them with
  `as_dict()` after (or during) iteration and log them with the metrics.
  """

  def __init__(self):
    self._lock = threading.Lock()
    self._counts: collections.Counter[str] = collections.Counter()

  def add(self, source: str, reason: str, dataset: str | None = None, n: int = 1) -> None:
    with self._lock:
      self._counts[f"{source}/{reason}"] += n
      if dataset:
        self._counts[f"{source}/{reason}/{dataset}"] += n

  def get(self, key: str) -> int:
    with self._lock:
      return self._counts.get(key, 0)

  def as_dict(self) -> dict[str, int]:
    with self._lock:
      return dict(sorted(self._counts.items()))

  def total(self) -> int:
    with self._lock:
      return sum(v for k, v in self._counts.items() if k.count("/") == 1)

  def summary(self) -> str:
    d = self.as_dict()
    return ", ".join(f"{k}={v}" for k, v in d.items() if k.count("/") == 1) or "none"

  def __repr__(self) -> str:
    return f"DataCounters({self.summary()})"


@dataclasses.dataclass(frozen=True)
class SequenceConfig:
  """How frames/examples become token sequences (all lengths are static)."""

  max_len: int = 128
  cameras: tuple[str, ...] = ("primary",)
  image_size: tuple[int, int] = (224, 224)  # for web images and absent cameras
  window: int = 1  # observation history length T (images per camera)
  prompt_template: str = "What action should the robot take to {instruction}?"
  separator: str = "\n"
  proprio_bins: int = 0  # 0 = no proprio in the prompt
  on_overlong: str = "drop"
  format: str = "vlax"  # "vlax" or "openpi" (see the module doc)
  # What the proprio in the prompt is (config.data.proprio_source): saved with the
  # checkpoint so a Policy / closed-loop eval feeds the same vector at inference.
  proprio_source: str = "proprio"
  # "text" (digits, pi0-FAST style) or "action_tokens" (one action-bin token per dim).
  proprio_format: str = "text"

  def __post_init__(self):
    if self.format not in SEQUENCE_FORMATS:
      raise VlaxError(f"SequenceConfig.format must be one of {SEQUENCE_FORMATS}, got "
                      f"{self.format!r}")
    if self.format == "openpi":
      if self.proprio_bins not in (0, OPENPI_STATE_BINS):
        raise VlaxError(f"sequence format 'openpi' writes the state in "
                        f"{OPENPI_STATE_BINS} bins, got proprio_bins={self.proprio_bins}")
      object.__setattr__(self, "proprio_bins", OPENPI_STATE_BINS)
    if self.proprio_format not in PROPRIO_FORMATS:
      raise VlaxError(f"SequenceConfig.proprio_format (config.data.proprio_format) must be "
                      f"one of {PROPRIO_FORMATS}, got {self.proprio_format!r}")
    if self.format == "openpi" and self.proprio_format != "text":
      raise VlaxError("sequence format 'openpi' writes the state as text digits; "
                      f"proprio_format={self.proprio_format!r} is for the vlax format")
    if self.on_overlong not in OVERLONG_MODES:
      raise VlaxError(f"SequenceConfig.on_overlong must be one of {OVERLONG_MODES}, got "
                      f"{self.on_overlong!r}")
    if self.max_len < 4:
      raise VlaxError(f"SequenceConfig.max_len too small: {self.max_len}")
    if "{instruction}" not in self.prompt_template:
      raise VlaxError("SequenceConfig.prompt_template needs an {instruction} field, got "
                      f"{self.prompt_template!r}")

  @property
  def num_images(self) -> int:
    return len(self.cameras) * self.window


def _sanitize(text: str) -> str:
  """Keeps text from spelling PaliGemma's reserved <locXXXX>/<segXXX> pieces."""
  return text.replace("<loc", "< loc").replace("<seg", "< seg")


def _has(d: Mapping[str, Any], path: str) -> bool:
  try:
    get_path(d, path)
    return True
  except VlaxError:
    return False


def openpi_prompt(instruction: str, state_digits: Sequence[int]) -> str:
  """openpi's prefix text: "Task: {cleaned}, State: {digits};\n"."""
  cleaned = instruction.lower().strip().replace("_", " ")
  return f"Task: {cleaned}, State: {' '.join(str(int(d)) for d in state_digits)};\n"


def openpi_state_digits(state: Any) -> np.ndarray:
  """Normalized state -> openpi's 256 bins (-1 below -1, 255 at 1 and above)."""
  bins = np.linspace(-1, 1, OPENPI_STATE_BINS + 1)[:-1]
  return np.digitize(np.asarray(state), bins) - 1


def _check_no_collision(text_tokenizer, vocab: ActionVocab) -> None:
  """Action ids may only reuse text ids that are reserved <locXXXX>/<segXXX> pieces."""
  for i in range(vocab.start, min(vocab.end, text_tokenizer.vocab_size)):
    piece = text_tokenizer.id_to_piece(i)
    if not (piece.startswith("<loc") or piece.startswith("<seg")):
      raise VlaxError(f"action vocabulary {vocab} overlaps the text piece {piece!r} (id "
                      f"{i}) of {text_tokenizer.name}; use default_action_vocab(text "
                      f"vocab size, action vocab size)")


class SequenceBuilder:
  """Builds model-batch examples; use `robot_dataset` / `web_dataset` on tf.data streams."""

  def __init__(self, config: SequenceConfig, text_tokenizer, action_tokenizer,
               action_vocab: ActionVocab, counters: DataCounters | None = None):
    if action_tokenizer.vocab_size > action_vocab.size:
      raise VlaxError(f"action tokenizer has {action_tokenizer.vocab_size} ids but the "
                      f"reserved vocabulary range {action_vocab} holds {action_vocab.size}")
    if config.format == "openpi":  # its range covers rare text pieces, as in openpi
      if not action_vocab.reverse:
        raise VlaxError(f"sequence format 'openpi' needs openpi's reversed action "
                        f"vocabulary (openpi_action_vocab), got {action_vocab}")
    else:
      _check_no_collision(text_tokenizer, action_vocab)
    if config.proprio_format == "action_tokens" and config.proprio_bins and not isinstance(
        action_tokenizer, BinTokenizer):
      raise VlaxError("proprio_format='action_tokens' writes the proprio as action-bin "
                      f"tokens; the action tokenizer is {type(action_tokenizer).__name__} "
                      "(use data.action_tokenizer=bins or quantile, or proprio_format=text)")
    self.config = config
    self.text = text_tokenizer
    self.actions = action_tokenizer
    self.vocab = action_vocab
    self.counters = counters if counters is not None else DataCounters()
    self._cache: dict[bytes, np.ndarray] = {}
    openpi = config.format == "openpi"
    self._head = np.asarray(text_tokenizer.encode(OPENPI_ACTION_HEAD) if openpi else [],
                            np.int32)
    self._tail = np.asarray(text_tokenizer.encode(OPENPI_ACTION_TAIL) if openpi else [],
                            np.int32)

  @property
  def model_vocab_size(self) -> int:
    """The LLM vocabulary size this builder needs (`GemmaConfig.vocab_size`)."""
    return max(self.text.vocab_size, self.vocab.min_model_vocab)

  @property
  def eos_id(self) -> int:
    return self.text.eos_id

  @property
  def pad_id(self) -> int:
    return self.text.pad_id

  # --- text (numpy side) ------------------------------------------------------------

  def _encode_cached(self, text: bytes, add_bos: bool) -> np.ndarray:
    key = (b"\x01" if add_bos else b"\x00") + text
    ids = self._cache.get(key)
    if ids is None:
      s = _sanitize(text.decode("utf-8", errors="replace"))
      ids = np.asarray(self.text.encode(s, add_bos=add_bos), np.int32)
      if len(self._cache) < 200_000:
        self._cache[key] = ids
    return ids

  def robot_prompt_ids(self, instruction: bytes, proprio: np.ndarray | None = None,
                       proprio_mask: np.ndarray | None = None) -> np.ndarray:
    """bos + prompt text (+ proprio text) + separator, as int32 ids."""
    if self.config.format == "openpi":
      digits = np.zeros([0], np.int64)
      if proprio is not None:
        p, pm = np.asarray(proprio, np.float32), np.asarray(proprio_mask, bool)
        if p.ndim == 2:
          p, pm = p[-1], pm[-1]
        digits = openpi_state_digits(p[pm])
      text = openpi_prompt(instruction.decode("utf-8", errors="replace"), digits.tolist())
      return np.asarray(self.text.encode(_sanitize(text), add_bos=True), np.int32)
    text = self.config.prompt_template.format(
        instruction=instruction.decode("utf-8", errors="replace").strip())
    parts = [self._encode_cached(text.encode("utf-8"), add_bos=True)]
    if self.config.proprio_bins and proprio is not None:
      p, pm = np.asarray(proprio, np.float64), np.asarray(proprio_mask, bool)
      if p.ndim == 2:  # observation history: the current (last) step
        p, pm = p[-1], pm[-1]
      p = p[pm]
      nb = self.config.proprio_bins
      bins = np.clip(np.floor((np.clip(p, -1, 1) + 1) / 2 * nb), 0, nb - 1).astype(int)
      if self.config.proprio_format == "action_tokens":
        parts.append(self._encode_cached(b" State:", add_bos=False))
        parts.append(np.asarray(self._proprio_action_ids(bins), np.int32))
        parts.append(self._encode_cached(b";", add_bos=False))
      else:
        parts.append(np.asarray(self.text.encode(
            " State: " + " ".join(map(str, bins.tolist())) + ";"), np.int32))
    parts.append(self._encode_cached(self.config.separator.encode("utf-8"), add_bos=False))
    return np.concatenate(parts).astype(np.int32)

  def _proprio_action_ids(self, bins: np.ndarray) -> np.ndarray:
    """Proprio bins (of proprio_bins over [-1, 1]) -> the action-bin ids of the same
    values: each bin's centre on the action tokenizer's uniform grid over [low, high]."""
    nb, tok = self.config.proprio_bins, self.actions
    centre = (np.asarray(bins, np.float64) + 0.5) / nb * 2.0 - 1.0
    idx = np.floor((centre - tok.low) / (tok.high - tok.low) * tok.num_bins)
    return self.vocab.to_vocab(np.clip(idx, 0, tok.num_bins - 1).astype(np.int64))

  def web_ids(self, prompt: bytes, answer: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(bos + prompt + separator, answer) ids; eos is added in-graph."""
    p = np.concatenate([self._encode_cached(prompt, add_bos=True),
                        self._encode_cached(self.config.separator.encode("utf-8"), False)])
    a = np.asarray(self.text.encode(_sanitize(answer.decode("utf-8", errors="replace"))),
                   np.int32)
    return p.astype(np.int32), a

  # --- actions ----------------------------------------------------------------------

  def encode_actions(self, chunk: np.ndarray) -> list[int]:
    """Normalized chunk [K, A_real] -> LLM vocab ids (numpy; used by tests / tools)."""
    return self.vocab.to_vocab(self.actions.encode(chunk))

  def _action_ids_tf(self, action, step_valid, action_dim):
    """tf: ([K, A_max], [K], []) -> (int32 vocab ids [n], bool target mask [n])."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    a = action[:, :action_dim]
    k = tf.shape(a)[0]
    if isinstance(self.actions, BinTokenizer):
      ids = self.actions.encode_tf(a)
      valid = tf.reshape(tf.broadcast_to(step_valid[:, None], tf.shape(a)), [-1])
    else:
      last = tf.maximum(tf.reduce_sum(tf.cast(step_valid, tf.int32)) - 1, 0)
      idx = tf.where(step_valid, tf.range(k), tf.fill([k], last))
      a = tf.gather(a, idx)
      tok = self.actions
      ids = tf.numpy_function(lambda x: np.asarray(tok.encode(x), np.int32), [a], tf.int32,
                              stateful=False)
      ids = tf.ensure_shape(ids, [None])
      valid = tf.ones_like(ids, tf.bool)
    return self.vocab.to_vocab(ids), valid

  # --- assembly ---------------------------------------------------------------------

  def _count_overlong(self, source: str):
    mode = self.config.on_overlong

    def fn(n, name):
      name = name.decode("utf-8", errors="replace")
      reason = {"drop": "overlong_dropped", "truncate": "overlong_truncated"}.get(mode)
      if reason is None:
        raise VlaxError(f"{source} example of dataset {name!r} has {int(n)} tokens > "
                        f"max_len {self.config.max_len} (set on_overlong='drop' or "
                        f"'truncate', or raise max_len)")
      self.counters.add(source, reason, name)
      return np.int32(n)
    return fn

  def _assemble(self, prompt, target, target_valid, is_action: bool, source: str,
                dataset_name, *, images, image_mask, dataset_index, action_mask=None):
    """Concatenates prompt + target + eos, then pads/truncates to max_len.

    Returns (the example as a tf.data element: a `Batch`'s flat dict, keep flag)."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    max_len = self.config.max_len
    n1, n2 = tf.shape(prompt)[0], tf.shape(target)[0]
    eos = tf.constant([self.eos_id], tf.int32)
    tokens = tf.concat([prompt, target, eos], 0)
    n = n1 + n2 + 1
    prefix = tf.concat([tf.ones([n1], tf.bool), tf.zeros([n2 + 1], tf.bool)], 0)
    loss = tf.concat([tf.zeros([n1], tf.bool), target_valid, [True]], 0)
    if is_action:
      amask = tf.concat([tf.zeros([n1], tf.bool),
                         target_valid if action_mask is None else action_mask, [False]], 0)
    else:
      amask = tf.zeros([n], tf.bool)
    counted = tf.cond(
        n > max_len,
        lambda: tf.numpy_function(self._count_overlong(source), [n, dataset_name],
                                  tf.int32, stateful=True),
        lambda: n)
    keep = tf.logical_or(counted <= max_len, self.config.on_overlong == "truncate")

    def fit(x, value):
      x = x[:max_len]
      x = tf.pad(x, [[0, max_len - tf.shape(x)[0]]], constant_values=value)
      return tf.ensure_shape(x, [max_len])

    example = Batch(
        inputs=ModelInputs(images=images, image_mask=image_mask,
                           tokens=fit(tokens, self.pad_id),
                           input_mask=tf.range(max_len) < tf.minimum(n, max_len),
                           prefix_mask=fit(prefix, False)),
        loss_mask=fit(loss, False), action_token_mask=fit(amask, False),
        source=tf.constant(SOURCE_NAMES.index(source), tf.int32),
        dataset_index=tf.cast(dataset_index, tf.int32))
    return example.to_dict(), keep

  # --- robot ------------------------------------------------------------------------

  def _robot_images(self, frame):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    imgs, masks = [], []
    t = self.config.window
    for cam in self.config.cameras:
      img = get_path(frame, f"observation/image_{cam}")
      m = tf.cast(get_path(frame, f"observation/image_{cam}_mask"), tf.bool)
      if img.shape.rank == 3:
        img = img[None]
        m = m[None] if m.shape.rank == 0 else m
      else:
        if _has(frame, "observation/timestep_pad_mask"):
          m = tf.logical_and(m, tf.cast(get_path(frame, "observation/timestep_pad_mask"),
                                        tf.bool))
      img = tf.ensure_shape(img, [t, None, None, 3])
      if self.config.format == "openpi":  # a missing camera is an attended black image
        m = tf.ones_like(m)
      imgs.append(tf.cast(img, tf.float32) / 127.5 - 1.0)
      masks.append(tf.broadcast_to(m, [t]))
    if not imgs:  # no cameras (a state-only policy): no image tokens
      h, w = self.config.image_size
      return tf.zeros([0, h, w, 3], tf.float32), tf.zeros([0], tf.bool)
    return tf.concat(imgs, 0), tf.concat(masks, 0)

  def robot_example(self, frame):
    """tf map fn: standardized frame -> (model example, keep flag)."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    images, image_mask = self._robot_images(frame)
    instruction = get_path(frame, "language_instruction")
    name = get_path(frame, "dataset_name") if _has(frame, "dataset_name") else tf.constant("")
    def plain_prompt():
      return tf.numpy_function(self.robot_prompt_ids, [instruction], tf.int32,
                               stateful=False)

    if self.config.proprio_bins:
      def proprio_prompt():
        return tf.numpy_function(
            self.robot_prompt_ids,
            [instruction, tf.cast(get_path(frame, "observation/proprio"), tf.float32),
             get_path(frame, "observation/proprio_pad_mask")], tf.int32, stateful=False)
      if _has(frame, "observation/proprio_dropped"):  # proprio dropout (train only)
        # A dropped prompt is the proprio_bins=0 prompt, so a policy evaluated without
        # proprio sees a prompt it was trained on.
        prompt = tf.cond(tf.cast(get_path(frame, "observation/proprio_dropped"), tf.bool),
                         plain_prompt, proprio_prompt)
      else:
        prompt = proprio_prompt()
    else:
      prompt = plain_prompt()
    prompt = tf.ensure_shape(prompt, [None])
    action = tf.cast(get_path(frame, "action"), tf.float32)
    pad = tf.cast(get_path(frame, "action_pad_mask"), tf.bool)
    action_dim = tf.cast(get_path(frame, "action_dim"), tf.int32)
    step_valid = tf.reduce_any(pad[:, :action_dim], axis=1)
    ids, valid = self._action_ids_tf(action, step_valid, action_dim)
    amask = None
    if self.config.format == "openpi":  # "Action: " + actions + "|" (+ eos)
      head, tail = tf.constant(self._head), tf.constant(self._tail)
      amask = tf.concat([tf.zeros_like(head, tf.bool), valid,
                         tf.zeros_like(tail, tf.bool)], 0)
      ids = tf.concat([head, ids, tail], 0)
      valid = tf.concat([tf.ones_like(head, tf.bool), valid, tf.ones_like(tail, tf.bool)],
                        0)
    return self._assemble(prompt, ids, valid, True, "robot", name, images=images,
                          image_mask=image_mask,
                          dataset_index=get_path(frame, "dataset_index"),
                          action_mask=amask)

  def robot_dataset(self, frames, num_parallel_calls: int | None = None,
                    deterministic: bool = True):
    """tf.data of standardized frames -> tf.data of model examples (unbatched)."""
    return self._map(frames, self.robot_example, num_parallel_calls, deterministic)

  # --- web --------------------------------------------------------------------------

  def web_example(self, ex, index_offset: int = 0):
    """tf map fn: {image uint8 [H,W,3], prompt, answer, dataset_index[, dataset_name]}."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    h, w = self.config.image_size
    img = tf.ensure_shape(ex["image"], [h, w, 3])
    img = tf.cast(img, tf.float32) / 127.5 - 1.0
    n_img = self.config.num_images
    if not n_img:
      raise VlaxError("web examples need at least one camera slot for their image, but "
                      "the sequence config has cameras=() (a state-only policy): set "
                      "data.web_sources=() / web_weight=0, or add a camera")
    images = tf.concat([img[None], tf.zeros([n_img - 1, h, w, 3], tf.float32)], 0)
    image_mask = tf.range(n_img) < 1
    prompt, answer = tf.numpy_function(self.web_ids, [ex["prompt"], ex["answer"]],
                                       [tf.int32, tf.int32], stateful=False)
    prompt, answer = tf.ensure_shape(prompt, [None]), tf.ensure_shape(answer, [None])
    name = ex.get("dataset_name", tf.constant("web"))
    return self._assemble(prompt, answer, tf.ones_like(answer, tf.bool), False, "web", name,
                          images=images, image_mask=image_mask,
                          dataset_index=tf.cast(ex["dataset_index"], tf.int32) + index_offset)

  def web_dataset(self, examples, index_offset: int = 0,
                  num_parallel_calls: int | None = None, deterministic: bool = True):
    """tf.data of web examples (see `vlax.data.web`) -> model examples; dataset_index is
    shifted by `index_offset` (= number of robot datasets in the mixture)."""
    return self._map(examples, lambda ex: self.web_example(ex, index_offset),
                     num_parallel_calls, deterministic)

  def _map(self, ds, fn, num_parallel_calls, deterministic):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    npc = tf.data.AUTOTUNE if num_parallel_calls is None else num_parallel_calls
    ds = ds.map(fn, num_parallel_calls=npc, deterministic=deterministic)
    return filter_flagged(ds)

  # --- checkpoint metadata ----------------------------------------------------------

  def metadata(self, *, dataset_names: Sequence[str], chunk_len: int,
               statistics: Mapping[str, Any] | None = None,
               action_dims: Mapping[str, int] | None = None) -> dict[str, Any]:
    """The JSON-safe data metadata the trainer stores in checkpoints.

    Keys: text_tokenizer, action_tokenizer (the tokenizer's settings plus "vocab",
    "sequence", "chunk_len", "action_dims"), statistics, dataset_names, vocab_size.
    `dataset_names` lists robot datasets first, then web ones (= dataset_index order).
    Action dims default to the length of each dataset's action statistics.
    """
    statistics = dict(statistics or {})
    dims = dict(action_dims or {})
    for name, st in statistics.items():
      if name not in dims and isinstance(st, Mapping) and "action" in st:
        dims[name] = len(st["action"]["mean"])
    cfg = dataclasses.asdict(self.config)
    action = dict(self.actions.to_dict())
    action.update(vocab=self.vocab.to_dict(), sequence=cfg, chunk_len=int(chunk_len),
                  action_dims={k: int(v) for k, v in dims.items()})
    return {"text_tokenizer": self.text.to_dict(), "action_tokenizer": action,
            "statistics": statistics, "dataset_names": list(dataset_names),
            "vocab_size": self.model_vocab_size}

  @classmethod
  def from_metadata(cls, meta: Mapping[str, Any]) -> "SequenceBuilder":
    """Rebuilds the builder (prompt format, tokenizers, vocab) from checkpoint metadata."""
    act = meta.get("action_tokenizer") or {}
    if "vocab" not in act or "sequence" not in act:
      raise VlaxError("checkpoint metadata: action_tokenizer lacks 'vocab'/'sequence' "
                      "(not written by SequenceBuilder.metadata)")
    seq = dict(act["sequence"])
    for k in ("cameras", "image_size"):
      seq[k] = tuple(seq[k])
    return cls(SequenceConfig(**seq), TextTokenizer.from_dict(meta["text_tokenizer"]),
               tokenizer_from_dict(act), ActionVocab.from_dict(act["vocab"]))

  # --- inverse (inference) ----------------------------------------------------------

  def prompt_inputs(self, instruction: str | bytes, proprio: Any = None,
                    proprio_mask: Any = None) -> dict[str, Any]:
    """Inference prompt, laid out exactly as in training: int32 tokens [max_len] (prompt
    then padding), input_mask, prefix_mask, and prompt_len (where decoding starts)."""
    if isinstance(instruction, str):
      instruction = instruction.encode("utf-8")
    if proprio is not None and proprio_mask is None:
      proprio_mask = np.ones(np.shape(proprio), bool)
    ids = self.robot_prompt_ids(instruction, proprio, proprio_mask)
    n, max_len = len(ids), self.config.max_len
    if n >= max_len:
      raise VlaxError(f"prompt of {n} tokens does not fit max_len {max_len}")
    tokens = np.full([max_len], self.pad_id, np.int32)
    tokens[:n] = ids
    mask = np.arange(max_len) < n
    return {"tokens": tokens, "input_mask": mask, "prefix_mask": mask.copy(),
            "prompt_len": n}

  def max_decode_steps(self, chunk_len: int, action_dim: int) -> int:
    """Tokens to generate for one chunk: the tokenizer's budget + eos (openpi: plus
    "Action: " and "|")."""
    return (self.actions.max_tokens(chunk_len, action_dim) + 1 + len(self._head)
            + len(self._tail))

  def actions_from_tokens(self, token_ids: Any, action_dim: int, chunk_len: int
                          ) -> np.ndarray:
    if self.config.format == "openpi":
      token_ids = self.openpi_action_span(token_ids)
    return actions_from_tokens(token_ids, action_dim, chunk_len, self.actions, self.vocab,
                               eos_id=self.eos_id)


  def openpi_action_span(self, token_ids: Any) -> np.ndarray:
    """openpi's extraction: the ids after a leading "Action: ", up to "|" or eos. A
    missing head is decoded anyway (the tokenizer counts a wrong length)."""
    ids = np.asarray(token_ids, np.int64).reshape(-1)
    stop = np.nonzero(ids == self.eos_id)[0]
    if stop.size:
      ids = ids[:stop[0]]
    h, t = len(self._head), len(self._tail)
    if h and ids.size >= h and np.array_equal(ids[:h], self._head):
      ids = ids[h:]
    for i in range(ids.size - t + 1):
      if t and np.array_equal(ids[i:i + t], self._tail):
        return ids[:i]
    return ids

  def action_id_range(self) -> tuple[int, int]:
    """[lo, hi): the LLM ids the action tokenizer's ids map to (contiguous)."""
    ends = self.vocab.to_vocab(np.asarray([0, self.actions.vocab_size - 1], np.int64))
    return int(ends.min()), int(ends.max()) + 1

  def action_grammar(self, chunk_len: int, action_dim: int, num_steps: int | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ids a robot answer may hold at each generated position, for constrained
    decoding (`greedy_decode(allowed=...)`, batched): (lo, hi int32 [S], extra int32
    [S, E]): position t allows [lo[t], hi[t]) and extra[t] (-1 = unused).

    Why: a robot prompt's answer is action tokens (RT-2 §3.2), so masking the rest makes
    every decode parseable. Bins: exactly K * A action ids, then eos. FAST: action ids or
    eos up to the budget (its length varies). openpi's layout forces "Action: " first and
    "|" after the actions (FAST: "|" or eos may end them anywhere).
    """
    lo, hi = self.action_id_range()
    budget = self.actions.max_tokens(chunk_len, action_dim)
    end = [int(x) for x in self._tail] + [self.eos_id]
    rows = [(0, 0, [int(x)]) for x in self._head]
    if isinstance(self.actions, BinTokenizer):
      rows += [(lo, hi, [])] * budget + [(0, 0, [int(x)]) for x in self._tail]
    else:
      rows += [(lo, hi, end)] * budget + [(0, 0, end)] * len(self._tail)
    steps = self.max_decode_steps(chunk_len, action_dim) if num_steps is None else num_steps
    rows = (rows + [(0, 0, [self.eos_id])] * steps)[:steps]
    width = max(1, max(len(r[2]) for r in rows))
    extra = np.full([steps, width], -1, np.int32)
    for t, (_, _, ids) in enumerate(rows):
      extra[t, :len(ids)] = ids
    return (np.asarray([r[0] for r in rows], np.int32),
            np.asarray([r[1] for r in rows], np.int32), extra)

  def has_invalid_action_tokens(self, token_ids: Any) -> bool:
    """True when a generated answer holds a non-action id where the actions belong
    (before eos; openpi: between "Action: " and "|"): text where actions should be."""
    if self.config.format == "openpi":
      span = self.openpi_action_span(token_ids)
    else:
      span = np.asarray(token_ids, np.int64).reshape(-1)
      stop = np.nonzero(span == self.eos_id)[0]
      span = span[:stop[0]] if stop.size else span
    lo, hi = self.action_id_range()
    return bool(((span < lo) | (span >= hi)).any())

  @property
  def decode_errors(self) -> int:
    """Decodes of a wrong length so far (the action tokenizer's counter)."""
    return int(getattr(self.actions, "decode_errors", 0))


def _flag(ex, keep):
  del ex
  return keep


def _drop_flag(ex, keep):
  del keep
  return ex


def filter_flagged(ds):
  """tf.data of (example, keep) -> the kept examples."""
  return ds.filter(_flag).map(_drop_flag)


def actions_from_tokens(token_ids: Any, action_dim: int, chunk_len: int, tokenizer,
                        vocab: ActionVocab, eos_id: int | None = None) -> np.ndarray:
  """Generated LLM ids -> normalized actions float32 [chunk_len, action_dim].

  Stops at the first `eos_id` (if given); ids outside the action range become invalid and
  are handled by the tokenizer's tolerant decode (never raises). Unnormalize the result
  with the dataset's statistics (`vlax.data.normalization.unnormalize`).
  """
  ids = np.asarray(token_ids, np.int64).reshape(-1)
  if eos_id is not None:
    hits = np.nonzero(ids == eos_id)[0]
    if hits.size:
      ids = ids[:hits[0]]
  local = vocab.from_vocab(ids)
  if isinstance(tokenizer, FASTTokenizer):
    local = local[local >= 0]
  return tokenizer.decode(local, chunk_len, action_dim)


def target_action_ids(example: ModelInputs | Mapping[str, np.ndarray],
                      eos_id: int) -> np.ndarray:
  """The action part of one built (numpy, unbatched) example: non-prefix valid tokens
  before eos. `example`: its `ModelInputs`, or the tf.data element dict."""
  if not isinstance(example, ModelInputs):
    example = ModelInputs.from_dict(example, "example")
  tok = np.asarray(example.tokens)
  sel = np.asarray(example.input_mask) & ~np.asarray(example.prefix_mask)
  ids = tok[sel]
  hits = np.nonzero(ids == eos_id)[0]
  return ids[:hits[0]] if hits.size else ids


def numpy_iterator(ds) -> Iterator[dict[str, np.ndarray]]:
  """Iterates a tf.data pipeline as numpy dicts; pipeline errors become VlaxError."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  it = ds.as_numpy_iterator()
  while True:
    try:
      yield next(it)
    except StopIteration:
      return
    except tf.errors.OpError as e:
      msg = e.message.strip().splitlines()
      detail = next((l for l in msg if "VlaxError" in l), msg[0] if msg else str(e))
      raise VlaxError(f"input pipeline: {detail.strip()}") from e


def collect_action_chunks(frames, num: int) -> list[np.ndarray]:
  """First `num` normalized chunks [K, action_dim] of a frame stream, to fit FAST or
  quantile bins before building sequences. Steps past the episode end repeat the last
  valid step, exactly as `SequenceBuilder` feeds FAST."""
  out = []
  for f in frames.take(num).as_numpy_iterator():
    a = int(get_path(f, "action_dim"))
    chunk = np.asarray(get_path(f, "action"), np.float32)[:, :a]
    steps = np.asarray(get_path(f, "action_pad_mask"))[:, :a].any(axis=1)
    if not steps.any():
      continue
    last = int(np.nonzero(steps)[0][-1])
    idx = np.where(steps, np.arange(len(steps)), last)
    out.append(chunk[idx])
  return out
