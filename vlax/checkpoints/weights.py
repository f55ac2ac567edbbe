"""Weights on disk -> params that fit a model config: the one place that does it.

Entry points that start from stored weights go through here: training's `init_from`,
`vlax.Policy`, `vlax export` and `vlax eval` (`evaluation.offline`; the closed-loop evals
use `vlax.Policy`). The steps, each usable alone:

  load          any of: a vlax checkpoint (ROOT or ROOT/<step>, training or export
                bundle), a Hugging Face PaliGemma directory, a big_vision .npz
                -> (params as host arrays, metadata). A training checkpoint saved with
                `ema_decay` > 0 yields its EMA weights unless use_ema=False (the CLI's
                --raw-weights); metadata['weights'] says which ('ema' or 'params').
  merge_lora    LoRA adapters folded into their base weights with the scale in the
                metadata (`vlax.models.lora.merge_adapters`, the only LoRA merge)
  check_params  shapes against what a VLAConfig's model expects (named mismatches)
  fit           all of the above against a target params structure (abstract arrays):
                vocabulary and shape checks, the target's nesting and dtypes

Sharding the result and creating (or restoring) optimizer state stay with the trainer,
which owns the mesh. The LoRA adapter convention is documented in `vlax.models.lora`.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import flax.linen as nn
import jax
import numpy as np

from vlax.checkpoints import format as ckpt_format
from vlax.checkpoints import hf_paligemma
from vlax.checkpoints import pretrained
from vlax.errors import VlaxError
from vlax.models.config import VLAConfig
from vlax.models.lora import LORA_A, LORA_B, has_lora, is_adapter, merge_adapters  # pylint: disable=unused-import (re-exported)
from vlax.models.vla import VLA, example_inputs
from vlax.utils import flat_paths, path_str

EMBEDDING = "llm/embedder/input_embedding"


# --- loading ---------------------------------------------------------------------------

def is_released(path: str) -> bool:
  """True for released weights (a HF PaliGemma directory or a big_vision .npz), False for
  anything else (a vlax checkpoint, or a path the vlax loader will report on). A training
  workdir also holds a config.json: a directory with checkpoint steps is never HF."""
  path = os.fspath(path)
  if "://" in path or not os.path.exists(path):
    return False
  if os.path.isfile(path):
    return path.endswith(".npz")
  return hf_paligemma.is_hf_dir(path) and not (
      ckpt_format.all_steps(path) or ckpt_format.is_step_dir(path))


RAW_WEIGHTS_ENV = "VLAX_RAW_WEIGHTS"  # "1": use_ema=None means the raw params


def prefer_ema(use_ema: bool | None = None) -> bool:
  """The EMA-or-raw choice: `use_ema` when given, else EMA unless $VLAX_RAW_WEIGHTS=1
  (what the CLI's --raw-weights sets, so eval's worker processes inherit it)."""
  if use_ema is not None:
    return bool(use_ema)
  return os.environ.get(RAW_WEIGHTS_ENV, "") not in ("1", "true")


def load(path: str, step: int | None = None, use_ema: bool | None = None
         ) -> tuple[Any, dict[str, Any]]:
  """(params, metadata) of a vlax checkpoint / export bundle (ROOT or ROOT/<step>; step
  default: the latest), a HF PaliGemma directory or a big_vision .npz. Released weights
  get metadata {'format', 'model', 'source'} like an imported checkpoint. A checkpoint
  with EMA weights gives them unless `prefer_ema(use_ema)` is False."""
  if not is_released(path):
    ema = prefer_ema(use_ema) and ckpt_format.has_ema(path, step)
    item = ckpt_format.EMA_PARAMS_ITEM if ema else ckpt_format.PARAMS_ITEM
    params, metadata = ckpt_format.load_params(path, step, item=item)
    return params, {**metadata, "weights": "ema" if ema else "params"}
  config, params, source = pretrained.read_released(path)
  return params, {"format": ckpt_format.FORMAT, "model": config.to_dict(),
                  "source": source}


def model_config(metadata: Mapping[str, Any], where: str) -> VLAConfig:
  """The VLAConfig stored in checkpoint metadata (VlaxError naming `where`)."""
  if "model" not in metadata:
    raise VlaxError(f"{where}: metadata has no 'model' config")
  try:
    return VLAConfig.from_dict(metadata["model"])
  except (KeyError, VlaxError) as e:
    raise VlaxError(f"{where}: bad model config in metadata: {e}") from None


# --- LoRA ------------------------------------------------------------------------------

def lora_scale(lora_config: Mapping[str, Any]) -> float:
  """alpha / rank (or an explicit 'scale') of a checkpoint's metadata['lora']."""
  if "scale" in lora_config:
    return float(lora_config["scale"])
  try:
    return float(lora_config["alpha"]) / float(lora_config["rank"])
  except (KeyError, TypeError, ZeroDivisionError) as e:
    raise VlaxError(f"metadata 'lora' needs 'rank' and 'alpha' (or 'scale'), got "
                    f"{dict(lora_config)}: {e}") from None


def merge_lora(params: Any, lora_config: Mapping[str, Any] | None) -> Any:
  """`merge_adapters` with the scale of a checkpoint's metadata['lora'] = {rank, alpha,
  targets}; params without adapters are returned unchanged (whatever lora_config says)."""
  if not has_lora(params):
    return params
  if not lora_config:
    raise VlaxError("params hold LoRA adapters (keys ending in 'lora_a'/'lora_b') but the "
                    "checkpoint metadata has no 'lora' entry with rank and alpha")
  return merge_adapters(params, lora_scale(lora_config))


# --- shapes ----------------------------------------------------------------------------

def abstract_shapes(config: VLAConfig) -> dict[str, tuple[int, ...]]:
  """{'a/b/c': shape} of the params a VLAConfig's model expects (no FLOPs, no memory)."""
  model = VLA(config)
  tree = jax.eval_shape(
      lambda r: nn.unbox(model.init(r, *example_inputs(config))["params"]),
      jax.random.key(0))
  return {k: tuple(v.shape) for k, v in flat_paths(tree).items()}


def check_params(params: Any, config: VLAConfig, where: str = "checkpoint") -> None:
  """Raises VlaxError naming every param whose shape (or presence) differs from config."""
  want = abstract_shapes(config)
  have = {k: tuple(np.shape(v)) for k, v in flat_paths(params).items()}
  problems = []
  for name, shape in want.items():
    if name not in have:
      problems.append(f"{name}: missing (model config expects {shape})")
    elif have[name] != shape:
      problems.append(f"{name}: checkpoint has shape {have[name]}, model config expects "
                      f"{shape}")
  extra = sorted(set(have) - set(want))
  problems += [f"{name}: in the checkpoint but not in the model config" for name in extra]
  if problems:
    more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
    raise VlaxError(f"{where}: params do not match the model config in its metadata: "
                    f"{'; '.join(problems[:5])}{more}")


def fit(params: Any, metadata: Mapping[str, Any] | None, like: Any,
        where: str = "checkpoint") -> Any:
  """Loaded params -> host numpy params with the nesting and dtypes of `like` (a pytree
  of abstract arrays, e.g. a model's `eval_shape` params): LoRA merged, vocabulary and
  every shape checked (VlaxError naming the mismatches)."""
  params = merge_lora(params, (metadata or {}).get("lora"))
  want = {k: tuple(a.shape) for k, a in flat_paths(like).items()}
  have = {k: tuple(np.shape(x)) for k, x in flat_paths(params).items()}
  if EMBEDDING in want and EMBEDDING in have and want[EMBEDDING][0] != have[EMBEDDING][0]:
    raise VlaxError(
        f"{where}: vocabulary size differs: the checkpoint has {have[EMBEDDING][0]} tokens "
        f"({EMBEDDING} {have[EMBEDDING]}), this run's model has {want[EMBEDDING][0]} "
        f"({want[EMBEDDING]}), set by the data's text + action tokenizers (config.data."
        "text_tokenizer, action_tokenizer, num_bins / fast_vocab_size, "
        "action_vocab_start) or model.overrides llm.vocab_size; use the same tokenizer "
        "settings as the checkpoint")
  bad = [f"{n}: checkpoint {have.get(n, 'missing')} vs model {w}"
         for n, w in want.items() if have.get(n) != w]
  if bad:
    raise VlaxError(f"{where}: params do not match the configured model "
                    f"({len(bad)} mismatches, e.g. {bad[:3]}); check config.model.preset "
                    "and model.overrides against the checkpoint's metadata['model']")
  flat = flat_paths(params)
  return jax.tree_util.tree_map_with_path(
      lambda p, a: np.asarray(flat[path_str(p)], a.dtype), like)


def load_for(path: str, like: Any, where: str | None = None,
             use_ema: bool | None = None) -> Any:
  """`load` then `fit`: weights at `path` as host numpy params shaped like `like`."""
  if "://" not in path and not os.path.exists(path):
    raise VlaxError(f"{where or path}: path does not exist: {path}")
  params, metadata = load(path, use_ema=use_ema)
  return fit(params, metadata, like, where or path)
