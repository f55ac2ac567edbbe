"""`load_pretrained`: one entry point for vlax checkpoints and released PaliGemma weights.

`path` may be a vlax checkpoint (ROOT or ROOT/<step>), a Hugging Face
`PaliGemmaForConditionalGeneration` directory (has config.json) or a big_vision
PaliGemma `.npz`. `import_paligemma` converts the latter two into a vlax checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vlax.checkpoints import big_vision
from vlax.checkpoints import format as ckpt_format
from vlax.checkpoints import hf_paligemma
from vlax.errors import VlaxError
from vlax.models.config import VLAConfig
from vlax.models.vla import VLA


@dataclasses.dataclass
class PretrainedVLA:
  """A model config, its params and checkpoint metadata, with a jitted forward pass."""
  config: Any  # VLAConfig
  params: Any
  metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    model = VLA(self.config)

    def forward(params, images, image_mask, tokens, input_mask, prefix_mask):
      return model.apply({"params": params}, images, image_mask, tokens, input_mask,
                         prefix_mask)

    self.model = model
    self._forward = jax.jit(forward)

  def logits(self, images, tokens, prefix_mask, image_mask=None, input_mask=None):
    """Text-position logits float32 [B, L, vocab] (position i predicts token i+1).

    images float32 [B, N, H, W, 3] in [-1, 1]; tokens int32 [B, L]; prefix_mask bool
    [B, L] (True = bidirectional prefix); image_mask bool [B, N] and input_mask bool
    [B, L] default to all True.
    """
    images = jnp.asarray(images, jnp.float32)
    tokens = jnp.asarray(tokens, jnp.int32)
    if images.ndim != 5:
      raise VlaxError(f"images must be [B, N, H, W, 3], got shape {images.shape}")
    if tokens.ndim != 2:
      raise VlaxError(f"tokens must be [B, L], got shape {tokens.shape}")
    b, n = images.shape[:2]
    if image_mask is None:
      image_mask = np.ones((b, n), bool)
    if input_mask is None:
      input_mask = np.ones(tokens.shape, bool)
    return self._forward(self.params, images, jnp.asarray(image_mask, bool), tokens,
                         jnp.asarray(input_mask, bool), jnp.asarray(prefix_mask, bool))


def detect_kind(path: str) -> str:
  """'vlax', 'hf' or 'big_vision' for an existing path; VlaxError otherwise."""
  path = os.fspath(path)
  if "://" not in path and not os.path.exists(path):
    raise VlaxError(f"pretrained path does not exist: {path}")
  if os.path.isfile(path):
    if path.endswith(".npz"):
      return "big_vision"
    raise VlaxError(f"{path} is a file but not a big_vision .npz; expected a vlax "
                    "checkpoint directory, a HF PaliGemma directory or a .npz")
  if hf_paligemma.is_hf_dir(path):
    return "hf"
  return "vlax"


def read_released(path: str) -> tuple[Any, dict[str, Any], dict[str, Any]]:
  """(config, params, source-info) of a HF directory or big_vision npz."""
  kind = detect_kind(path)
  if kind == "hf":
    config, params = hf_paligemma.load_hf_paligemma(path)
  elif kind == "big_vision":
    config, params = big_vision.load_big_vision_npz(path)
  else:
    raise VlaxError(f"{path} is neither a HF PaliGemma directory (no config.json) nor a "
                    "big_vision .npz file")
  return config, params, {"kind": kind, "path": os.path.abspath(path)}


def load_pretrained(path: str, step: int | None = None) -> PretrainedVLA:
  """Loads a vlax checkpoint, a HF PaliGemma directory or a big_vision npz."""
  kind = detect_kind(path)
  if kind == "vlax":
    params, metadata = ckpt_format.load_params(path, step)
    try:
      config = VLAConfig.from_dict(metadata["model"])
    except VlaxError as e:
      raise VlaxError(f"{path}: bad model config in checkpoint metadata: {e}") from None
    return PretrainedVLA(config, params, metadata)
  config, params, source = read_released(path)
  return PretrainedVLA(config, params, {"format": ckpt_format.FORMAT,
                                        "model": config.to_dict(), "source": source})


def _tokenizer_info(source: dict[str, Any]) -> dict[str, Any]:
  """Where the PaliGemma sentencepiece model is, if it ships next to the weights."""
  if source["kind"] == "hf":
    model = os.path.join(source["path"], "tokenizer.model")
    if os.path.isfile(model):
      return {"kind": "sentencepiece", "path": model}
  return {}


def _import(src: str, out: str, step: int):
  config, params, source = read_released(src)
  if step in ckpt_format.all_steps(out):
    raise VlaxError(f"{out} already holds a checkpoint at step {step}")
  step_dir = ckpt_format.save_checkpoint(out, step, params, {
      "model": config.to_dict(),
      "text_tokenizer": _tokenizer_info(source),
      "source": source,
  })
  return step_dir, config, source


def import_paligemma(src: str, out: str, step: int = 0) -> int:
  """Converts released PaliGemma weights (HF dir or big_vision npz) into a vlax checkpoint.

  Writes OUT/<step> and returns step. OUT must not already hold that step.
  """
  _import(src, out, step)
  return step


def count_params(config) -> int:
  """Number of parameters of a VLAConfig."""
  return int(sum(np.prod(s) for s in big_vision.param_shapes(config).values()))


def main_import(src: str, out: str) -> None:
  """`vlax import-paligemma SRC OUT`: convert, then print a one-line summary."""
  step_dir, config, source = _import(src, out, 0)
  v, g = config.vision, config.llm
  print(f"imported {source['kind']} PaliGemma {src} -> {step_dir}: "
        f"{count_params(config) / 1e9:.3f}B params, SigLIP {v.image_size}px/"
        f"{v.patch_size} width {v.width} depth {v.depth}, Gemma width {g.width} depth "
        f"{g.depth} heads {g.num_heads}/{g.num_kv_heads} vocab {g.vocab_size}")
