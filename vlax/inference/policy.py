"""`Policy`: camera images + an instruction -> an action chunk in the robot's own units.

Everything a prediction needs comes from the checkpoint (its metadata): the model config,
the prompt format and both tokenizers (`SequenceBuilder.from_metadata`), the chunk length,
every dataset's action dimension and its normalization statistics. One prediction:

  1. images: every camera of the training sequence config, uint8 [H, W, 3] of any size,
     resized exactly like training (antialiased bilinear "stretch" resize, rounded to
     uint8, then scaled to [-1, 1]); a camera that is absent (or empty) is masked out;
  2. prompt: `SequenceBuilder.prompt_inputs` (with the proprio normalized by the chosen
     dataset's statistics when the training prompt held proprio);
  3. KV-cache greedy decoding of exactly the chunk's token budget (+ eos), one jitted
     function per (batch size, budget); by default constrained to the robot answer's
     grammar (action tokens, then eos: RT-2 §3.2), so a text token can never stand where
     an action belongs (`constrain_actions=False` decodes freely and counts such chunks
     in `invalid_decodes`);
  4. tolerant detokenization (`actions_from_tokens`), then unnormalization with the
     chosen dataset's statistics -> float32 [chunk_len, action_dim].

A checkpoint trained on several robots holds one statistics entry per robot dataset: the
dataset key picks the action space (dimension, units) the policy answers in.
"""

from __future__ import annotations

import contextlib
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vlax.checkpoints import weights as weights_lib
from vlax.data.normalization import normalize, unnormalize
from vlax.data.sequence import SequenceBuilder
from vlax.errors import VlaxError
from vlax.models.batch import ModelInputs
from vlax.models.decoding import greedy_decode, prepare_weights
from vlax.models.vla import VLA
from vlax.utils import flat_paths, path_str  # pylint: disable=unused-import (public API)

# Observation keys that are not cameras and are read (or tolerated) by the policy.
_PROPRIO_KEYS = ("proprio",)
_PROPRIO_MASK_KEYS = ("proprio_mask", "proprio_pad_mask")
_INSTRUCTION_KEYS = ("instruction", "language_instruction")


# Shape checks live with the weights loader; re-exported here (public API).
abstract_params = weights_lib.abstract_shapes
check_params = weights_lib.check_params
flat_params = flat_paths


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """uint8 [h, w, 3] -> uint8 [H, W, 3], as training's `vlax.data.images.resize` +
  `to_uint8` ("stretch": antialiased bilinear, then rounded); empty -> zeros.

  jax.image.resize with method='linear', antialias=True is the same triangle-kernel
  scale-and-translate as tf.image.resize(antialias=True), so no TensorFlow is needed
  (TensorFlow's and jax's float results agree to ~1e-4; tests check this).
  """
  h, w = size
  if image.size == 0:
    return np.zeros((h, w, 3), np.uint8)
  if image.shape[:2] == (h, w):
    return np.asarray(image, np.uint8)
  try:  # on the host: no device transfer, and the same numbers on every backend
    ctx = jax.default_device(jax.devices("cpu")[0])
  except RuntimeError:  # JAX_PLATFORMS without cpu
    ctx = contextlib.nullcontext()
  with ctx:
    out = jax.image.resize(jnp.asarray(image, jnp.float32), (h, w, 3), method="linear",
                           antialias=True)
  return np.clip(np.round(np.asarray(out)), 0, 255).astype(np.uint8)


def check_instruction(instruction: Any, what: str = "instruction") -> str:
  """The one rule for an instruction (Policy, `vlax serve`): a str with a non-blank
  character, encodable as UTF-8 (a lone surrogate such as '\\ud800' is valid JSON but
  cannot be tokenized). bytes are refused, as by the server: decode them first."""
  if isinstance(instruction, np.ndarray) and instruction.ndim == 0:
    instruction = instruction.item()
  if isinstance(instruction, bytes):
    raise VlaxError(f"{what} must be a str, got bytes (decode it first, e.g. "
                    ".decode('utf-8'))")
  if not isinstance(instruction, str):
    raise VlaxError(f"{what} must be a str, got {type(instruction).__name__}")
  if not instruction.strip():
    raise VlaxError(f"{what} must be a non-empty string, got {instruction!r}")
  try:
    instruction.encode("utf-8")
  except UnicodeEncodeError as e:
    raise VlaxError(f"{what} is not valid Unicode text ({e.reason} at character "
                    f"{e.start})") from None
  return instruction


class Policy:
  """A checkpoint's policy: `predict_action(observation, instruction) -> [K, A]` actions.

  Build with `Policy(path)`, `Policy.from_checkpoint(path, step, dataset)` or, for params
  already in memory (e.g. evaluation during training), `Policy.from_params(params,
  metadata)`. `dataset` sets the default dataset key (needed when the checkpoint holds
  statistics of several robot datasets); every predict call may override it.

  The decoder weights are laid out for KV-cache decoding once, on the first prediction,
  and kept (`decode_weights_max_bytes`: up to that size; larger decoders, e.g. Gemma 2B
  in fp32, are laid out inside every call instead of being held twice in memory).

  constrain_actions (default True): greedy decoding may pick only the ids the robot
  answer allows at each position (`SequenceBuilder.action_grammar`); a policy that
  already emits action tokens predicts the same.
  """

  decode_weights_max_bytes: int = 2 << 30

  def __init__(self, path: str | None = None, step: int | None = None,
               dataset: str | None = None, *, params: Any = None,
               metadata: Mapping[str, Any] | None = None, use_ema: bool | None = None,
               constrain_actions: bool = True):
    if (path is None) == (params is None):
      raise VlaxError("Policy: give either a checkpoint path or params= and metadata=")
    if path is not None:
      params, metadata = weights_lib.load(path, step, use_ema=use_ema)
      where = f"checkpoint {path}" + (f" step {step}" if step is not None else "")
    else:
      if metadata is None:
        raise VlaxError("Policy.from_params needs the checkpoint metadata too")
      where = "Policy params"
    metadata = dict(metadata)
    self.where = where
    self.metadata = metadata
    self.config = weights_lib.model_config(metadata, where)
    act = metadata.get("action_tokenizer") or {}
    if "vocab" not in act or "sequence" not in act:
      raise VlaxError(f"{where} has no action tokenizer settings (metadata "
                      f"'action_tokenizer' lacks 'vocab'/'sequence'): it was not trained "
                      f"as a vlax policy (imported weights must be fine-tuned first)")
    self.builder = SequenceBuilder.from_metadata(metadata)
    self.seq = self.builder.config
    self.chunk_len = int(act.get("chunk_len", 1))
    self.statistics = dict(metadata.get("statistics") or {})
    self._action_dims = {k: int(v) for k, v in (act.get("action_dims") or {}).items()}

    # LoRA adapters (if any) are folded into their base weights: the model has none.
    params = weights_lib.merge_lora(params, metadata.get("lora"))
    weights_lib.check_params(params, self.config, where)
    g = self.config.llm
    if g.vocab_size < self.builder.model_vocab_size:
      raise VlaxError(f"{where}: model vocab_size {g.vocab_size} is smaller than the "
                      f"tokenizers need ({self.builder.model_vocab_size})")
    size = self.config.vision.image_size
    if tuple(self.seq.image_size) != (size, size):
      raise VlaxError(f"{where}: sequence image_size {tuple(self.seq.image_size)} differs "
                      f"from the model's vision.image_size {size}")
    dtype = jnp.dtype(self.config.param_dtype)

    def to_device(x):
      x = jnp.asarray(x)
      return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x

    self.params = jax.tree.map(to_device, params)
    self.model = VLA(self.config)
    layers = self.params.get("llm", {}).get("layers", {})
    self._hold_decode_weights = sum(
        x.size * x.dtype.itemsize for x in jax.tree.leaves(layers)
    ) <= self.decode_weights_max_bytes
    self._decode_weights = None
    self.constrain_actions = bool(constrain_actions)
    self.invalid_decodes = 0  # chunks with text where action tokens belong
    self._grammars: dict[tuple[str, int], tuple[np.ndarray, ...]] = {}
    self.dataset = None
    if dataset is not None:
      self.dataset = self._resolve_dataset(dataset)

  @classmethod
  def from_checkpoint(cls, path: str, step: int | None = None,
                      dataset: str | None = None, use_ema: bool | None = None,
                      constrain_actions: bool = True) -> "Policy":
    """Loads ROOT or ROOT/<step> (default: the latest step); the EMA weights when the
    checkpoint has them, unless use_ema=False (see `vlax.checkpoints.weights.load`)."""
    return cls(path, step, dataset, use_ema=use_ema, constrain_actions=constrain_actions)

  @classmethod
  def from_params(cls, params: Any, metadata: Mapping[str, Any],
                  dataset: str | None = None, constrain_actions: bool = True) -> "Policy":
    """A policy over in-memory params and their checkpoint metadata."""
    return cls(None, None, dataset, params=params, metadata=metadata,
               constrain_actions=constrain_actions)

  # --- datasets ---------------------------------------------------------------------

  @property
  def dataset_keys(self) -> list[str]:
    """Dataset keys with statistics, i.e. the robots this policy can answer for."""
    return sorted(self.statistics)

  @property
  def cameras(self) -> tuple[str, ...]:
    return tuple(self.seq.cameras)

  def _resolve_dataset(self, dataset: str | None) -> str:
    keys = self.dataset_keys
    if dataset is None:
      dataset = self.dataset
    if dataset is None:
      if len(keys) == 1:
        return keys[0]
      if not keys:
        raise VlaxError(f"{self.where} holds no normalization statistics (metadata "
                        f"'statistics' is empty): cannot return actions in robot units")
      raise VlaxError(f"{self.where} holds statistics of several datasets; choose one "
                      f"with dataset=... from {keys}")
    if not isinstance(dataset, str):
      raise VlaxError(f"dataset must be a dataset key (str), got {type(dataset).__name__}")
    if dataset not in self.statistics:
      raise VlaxError(f"unknown dataset key {dataset!r}: {self.where} has statistics for "
                      f"{keys}")
    st = self.statistics[dataset]
    if not isinstance(st, Mapping) or "action" not in st:
      raise VlaxError(f"{self.where}: statistics of dataset {dataset!r} lack the 'action' "
                      f"key (have {sorted(st) if isinstance(st, Mapping) else st!r})")
    for field in ("mean", "std", "q01", "q99"):
      if field not in st["action"]:
        raise VlaxError(f"{self.where}: action statistics of dataset {dataset!r} lack "
                        f"{field!r}")
    return dataset

  def action_dim(self, dataset: str | None = None) -> int:
    """The real action dimension of a dataset (from metadata, else its statistics)."""
    dataset = self._resolve_dataset(dataset)
    stats_dim = len(self.statistics[dataset]["action"]["mean"])
    dim = self._action_dims.get(dataset, stats_dim)
    if dim != stats_dim:
      raise VlaxError(f"{self.where}: dataset {dataset!r} has action_dim {dim} in "
                      f"action_tokenizer.action_dims but {stats_dim}-dim action statistics")
    return dim

  def norm_mode(self, dataset: str | None = None) -> str:
    dataset = self._resolve_dataset(dataset)
    return str(self.statistics[dataset].get("normalization_type", "bounds"))

  def num_decode_steps(self, dataset: str | None = None) -> int:
    """Tokens generated per chunk: the action tokenizer's budget + eos."""
    return self.builder.max_decode_steps(self.chunk_len, self.action_dim(dataset))

  # --- inputs -----------------------------------------------------------------------

  def _images(self, observation: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """observation -> float32 [N, H, W, 3] in [-1, 1] and bool [N] (N = cameras x T)."""
    cams, t = self.cameras, int(self.seq.window)
    for key in observation:
      if not isinstance(key, str) or not key.startswith("image_"):
        continue
      cam = key[len("image_"):]
      if cam.endswith("_mask"):
        cam = cam[:-len("_mask")]
      if cam not in cams:
        raise VlaxError(f"observation key {key!r}: unknown camera {cam!r}; this policy "
                        f"was trained with cameras {list(cams)}")
    size = tuple(self.seq.image_size)
    images, masks = [], []
    for cam in cams:
      key = f"image_{cam}"
      img = observation.get(key)
      cam_on = bool(np.asarray(observation.get(f"{key}_mask", True)).all())
      if img is None:
        frames = np.zeros((t, 0, 0, 3), np.uint8)
        valid = np.zeros([t], bool)
      else:
        img = np.asarray(img)
        if img.dtype != np.uint8:
          raise VlaxError(f"observation[{key!r}] must be uint8 images, got dtype "
                          f"{img.dtype}")
        if img.ndim == 3 and img.shape[-1] == 1:
          img = np.repeat(img, 3, axis=-1)
        if img.ndim == 4 and img.shape[-1] == 1:
          img = np.repeat(img, 3, axis=-1)
        if img.ndim == 3 and (img.shape[-1] == 3 or img.size == 0):
          # One frame: with an observation history it is the newest, older ones masked.
          frames = np.zeros((t,) + img.shape, np.uint8)
          frames[-1] = img
          valid = np.arange(t) == t - 1
        elif img.ndim == 4 and img.shape[0] == t and img.shape[-1] == 3:
          frames, valid = img, np.ones([t], bool)
        else:
          want = "[H, W, 3]" + (f" or [{t}, H, W, 3]" if t > 1 else "")
          raise VlaxError(f"observation[{key!r}] must have shape {want}, got "
                          f"{tuple(img.shape)}")
        valid = valid & np.asarray([f.size > 0 for f in frames])
      valid = valid & cam_on
      for f, v in zip(frames, valid):
        images.append(resize_image(f, size) if v else np.zeros(size + (3,), np.uint8))
        masks.append(bool(v))
    if not images:  # a policy without cameras (state only)
      return np.zeros((0,) + size + (3,), np.float32), np.zeros([0], bool)
    images = np.stack(images).astype(np.float32) / 127.5 - 1.0
    return images, np.asarray(masks, bool)

  def _proprio(self, observation: Mapping[str, Any], dataset: str
               ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The normalized proprio and its mask for the prompt (None when unused).
    `observation["proprio_dropped"]` true: the prompt without proprio, the one a policy
    trained with `data.proprio_dropout` saw on its dropped examples."""
    if not self.seq.proprio_bins or bool(np.any(observation.get("proprio_dropped", False))):
      return None, None
    st = self.statistics[dataset].get("proprio")
    dim = len(st["mean"]) if isinstance(st, Mapping) and "mean" in st else 0
    # The saved data config's proprio_source (e.g. "full_state") first, then 'proprio'.
    source = self.seq.proprio_source
    keys = ((source,) if source != "proprio" else ()) + _PROPRIO_KEYS
    p = next((observation[k] for k in keys if k in observation), None)
    if p is None:
      if dim:
        raise VlaxError(f"observation has no 'proprio': this policy writes the "
                        f"{dim}-dim proprio of dataset {dataset!r} into its prompt")
      return np.zeros([0], np.float32), np.zeros([0], bool)
    p = np.asarray(p, np.float64)
    if p.ndim == 2:  # history: the prompt holds the newest step only
      p = p[-1]
    if p.ndim != 1 or p.shape[0] != dim:
      raise VlaxError(f"observation['proprio'] must have shape [{dim}] (dataset "
                      f"{dataset!r}), got {tuple(np.shape(p))}")
    if not np.all(np.isfinite(p)):
      raise VlaxError(f"observation['proprio'] has non-finite values: {p.tolist()}")
    mask = next((observation[k] for k in _PROPRIO_MASK_KEYS if k in observation), None)
    mask = np.ones([dim], bool) if mask is None else np.asarray(mask, bool)
    if mask.ndim == 2:
      mask = mask[-1]
    if mask.shape != (dim,):
      raise VlaxError(f"observation proprio mask must have shape [{dim}], got "
                      f"{tuple(mask.shape)}")
    if dim == 0:
      return p.astype(np.float32), mask
    return normalize(p, st, self.norm_mode(dataset)).astype(np.float32), mask

  def prepare(self, observation: Mapping[str, Any], instruction: str | None,
              dataset: str | None = None) -> ModelInputs:
    """One model input (unbatched numpy `ModelInputs`), laid out as in training."""
    dataset = self._resolve_dataset(dataset)
    if not isinstance(observation, Mapping):
      raise VlaxError(f"observation must be a dict of camera images (image_<camera>), got "
                      f"{type(observation).__name__}")
    if instruction is None:
      instruction = next((observation[k] for k in _INSTRUCTION_KEYS if k in observation),
                         None)
      if instruction is None:
        raise VlaxError("no instruction given (argument or observation['instruction'])")
    instruction = check_instruction(instruction)
    images, image_mask = self._images(observation)
    if self.seq.format == "openpi":  # openpi attends missing cameras as black images
      image_mask = np.ones_like(image_mask)
    proprio, proprio_mask = self._proprio(observation, dataset)
    prompt = self.builder.prompt_inputs(instruction, proprio, proprio_mask)
    return ModelInputs(images=images, image_mask=image_mask, tokens=prompt["tokens"],
                       input_mask=prompt["input_mask"], prefix_mask=prompt["prefix_mask"])

  # --- prediction -------------------------------------------------------------------

  def _prepared_decode_weights(self):
    """`decoding.prepare_weights` built once, if the decoder is small enough to hold twice."""
    if self._decode_weights is None and self._hold_decode_weights:
      self._decode_weights = prepare_weights(self.model, self.params)
    return self._decode_weights

  def decode(self, inputs: ModelInputs, num_steps: int,
             datasets: Sequence[str] | None = None) -> np.ndarray:
    """Greedy tokens int32 [B, num_steps] for a batch of prepared inputs.

    datasets: one dataset key per example; with `constrain_actions` each example then
    decodes under its action grammar (None: unconstrained).
    """
    allowed = None
    if self.constrain_actions and datasets is not None:
      rows = [self._grammar(d, num_steps) for d in datasets]
      allowed = tuple(np.stack(parts) for parts in zip(*rows))
    out = greedy_decode(self.model, self.params, *jax.tree.map(jnp.asarray, inputs).args(),
                        num_steps, weights=self._prepared_decode_weights(), allowed=allowed)
    return np.asarray(jax.device_get(out))

  def _grammar(self, dataset: str, num_steps: int) -> tuple[np.ndarray, ...]:
    """`SequenceBuilder.action_grammar` of a dataset's chunk, cached."""
    key = (dataset, int(num_steps))
    if key not in self._grammars:
      self._grammars[key] = self.builder.action_grammar(
          self.chunk_len, self.action_dim(dataset), int(num_steps))
    return self._grammars[key]

  @property
  def decode_errors(self) -> int:
    """Chunks decoded so far whose action tokens had the wrong length (padded or cut
    and counted, never silently zeroed)."""
    return self.builder.decode_errors

  def tokens_to_actions(self, token_ids: Any, dataset: str | None = None,
                        normalized: bool = False) -> np.ndarray:
    """Generated ids -> float32 [K, A] in robot units (or normalized)."""
    dataset = self._resolve_dataset(dataset)
    a = self.action_dim(dataset)
    self.invalid_decodes += int(self.builder.has_invalid_action_tokens(token_ids))
    norm = self.builder.actions_from_tokens(np.asarray(token_ids), a, self.chunk_len)
    if normalized:
      return norm.astype(np.float32)
    st = self.statistics[dataset]["action"]
    return unnormalize(norm, st, self.norm_mode(dataset)).astype(np.float32)

  def predict_action(self, observation: Mapping[str, Any],
                     instruction: str | None = None, *, dataset: str | None = None,
                     return_tokens: bool = False):
    """float32 [chunk_len, action_dim] actions in the robot's units.

    observation: {'image_<camera>': uint8 [H, W, 3] (any size), 'proprio': float [P]
    (robot units; used when the training prompt held proprio), optional
    'image_<camera>_mask': bool, optional 'proprio_dropped': bool (the prompt without
    proprio, as proprio dropout trained it)}. Missing cameras are masked out. With
    return_tokens=True returns (actions, generated token ids int32 [num_steps]).
    """
    out = self.predict_action_batch([observation], [instruction], dataset=dataset,
                                    return_tokens=return_tokens)
    if return_tokens:
      return out[0][0], out[1][0]
    return out[0]

  def predict_action_batch(self, observations: Sequence[Mapping[str, Any]],
                           instructions: Sequence[str | None], *,
                           dataset: str | Sequence[str] | None = None,
                           return_tokens: bool = False):
    """Predicts B chunks with one jitted decode (prompts right-padded to max_len).

    dataset: one key for the whole batch -> float32 [B, K, A]; or one key per example ->
    a list of B arrays [K, A_i] (decoding runs to the largest token budget). With
    return_tokens=True returns (actions, token ids int32 [B, num_steps]).
    """
    if isinstance(observations, Mapping):
      raise VlaxError("predict_action_batch takes a list of observations; use "
                      "predict_action for one")
    observations, instructions = list(observations), list(instructions)
    if not observations:
      raise VlaxError("predict_action_batch: empty batch")
    if len(instructions) != len(observations):
      raise VlaxError(f"predict_action_batch: {len(observations)} observations but "
                      f"{len(instructions)} instructions")
    per_example = dataset is not None and not isinstance(dataset, str)
    if per_example:
      names = [self._resolve_dataset(d) for d in dataset]
      if len(names) != len(observations):
        raise VlaxError(f"predict_action_batch: {len(observations)} observations but "
                        f"{len(names)} dataset keys")
    else:
      names = [self._resolve_dataset(dataset)] * len(observations)
    examples = []
    for i, (obs, ins, name) in enumerate(zip(observations, instructions, names)):
      try:
        examples.append(self.prepare(obs, ins, name))
      except VlaxError as e:
        if len(observations) == 1:
          raise
        raise VlaxError(f"batch example {i}: {e}") from None
    batch = jax.tree.map(lambda *rows: np.stack(rows), *examples)
    steps = max(self.num_decode_steps(n) for n in set(names))
    ids = self.decode(batch, steps, names)
    actions = [self.tokens_to_actions(row, name) for row, name in zip(ids, names)]
    if not per_example:
      actions = np.stack(actions)
    return (actions, ids) if return_tokens else actions

  def warmup(self, batch_size: int = 1, dataset: str | None = None) -> None:
    """Compiles the decode for this batch size (the first real call is then fast)."""
    dataset = self._resolve_dataset(dataset)
    k = self.num_decode_steps(dataset)
    n = len(self.cameras) * int(self.seq.window)
    s = self.config.vision.image_size
    prompt = self.builder.prompt_inputs("warm up")
    batch = ModelInputs.zeros(batch_size, n, s, self.seq.max_len).replace(
        tokens=np.tile(prompt["tokens"], (batch_size, 1)),
        input_mask=np.tile(prompt["input_mask"], (batch_size, 1)),
        prefix_mask=np.tile(prompt["prefix_mask"], (batch_size, 1)))
    self.decode(batch, k, [dataset] * batch_size)

  def __repr__(self) -> str:
    g, v = self.config.llm, self.config.vision
    return (f"Policy({self.where}, datasets={self.dataset_keys}, cameras="
            f"{list(self.cameras)}, chunk_len={self.chunk_len}, vision {v.image_size}px, "
            f"llm width {g.width} depth {g.depth})")


class ActionChunker:
  """Open-loop chunk execution: one action per call, re-planning every `execute_steps`.

  Each plan predicts a chunk of K actions; the next `execute_steps` calls return its
  first `execute_steps` rows without running the model. A new instruction (or `reset()`)
  re-plans at once.
  """

  def __init__(self, policy: Policy, execute_steps: int | None = None, *,
               dataset: str | None = None):
    k = policy.chunk_len
    execute_steps = k if execute_steps is None else int(execute_steps)
    if not 1 <= execute_steps <= k:
      raise VlaxError(f"execute_steps must be in [1, chunk_len={k}], got {execute_steps}")
    self.policy = policy
    self.execute_steps = execute_steps
    self.dataset = policy._resolve_dataset(dataset)  # pylint: disable=protected-access
    self.reset()

  def reset(self) -> None:
    self._chunk: np.ndarray | None = None
    self._index = 0
    self._instruction = None
    self.num_plans = 0

  def __call__(self, observation: Mapping[str, Any],
               instruction: str | None = None) -> np.ndarray:
    """float32 [action_dim]: the next action of the current (or a fresh) plan."""
    if instruction is None:
      instruction = next((observation.get(k) for k in _INSTRUCTION_KEYS
                          if k in observation), None)
    if (self._chunk is None or self._index >= self.execute_steps
        or instruction != self._instruction):
      self._chunk = self.policy.predict_action(observation, instruction,
                                               dataset=self.dataset)
      self._index = 0
      self._instruction = instruction
      self.num_plans += 1
    action = self._chunk[self._index]
    self._index += 1
    return action
