"""Release bundles: `vlax export CHECKPOINT OUT`.

A bundle is an ordinary vlax checkpoint root (`OUT/<step>/params` + `metadata`, no
optimizer state) whose metadata carries everything a user needs and nothing that points
outside it: the model config, the text tokenizer *embedded* (base64 SentencePiece model,
never a path), the action tokenizer settings (vocab range, sequence config, chunk length,
per-dataset action dims), the per-dataset normalization statistics, the dataset names
and the training config, plus an "export" entry saying where it came from. So
`vlax.Policy(OUT)` and fine-tuning (`--config.init_from=OUT`) load it with nothing else.

Options: params in bfloat16 (half the size; the bundle's model config then says
`param_dtype: bfloat16`, compute dtype unchanged), and LoRA adapters merged into their
base weights (`vlax.checkpoints.weights.merge_lora`; convention in `vlax.models.lora`).
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

import vlax
from vlax.checkpoints import format as ckpt_format
from vlax.checkpoints import weights as weights_lib
from vlax.data.text_tokenizer import TextTokenizer
from vlax.errors import VlaxError

DTYPES = ("float32", "bfloat16")

# The LoRA helpers live with the weights loader; re-exported here (public API).
merge_lora = weights_lib.merge_lora
has_lora = weights_lib.has_lora
LORA_A, LORA_B = weights_lib.LORA_A, weights_lib.LORA_B
_merge = merge_lora  # `export`'s merge_lora flag shadows the function name


def _cast(params: Any, dtype: str) -> Any:
  target = np.dtype(jnp.bfloat16) if dtype == "bfloat16" else np.dtype(np.float32)

  def cast(x):
    x = np.asarray(x)
    return x.astype(target) if np.issubdtype(x.dtype, np.floating) or \
        x.dtype == np.dtype(jnp.bfloat16) else x

  return jax.tree.map(cast, params)


def _embed_text_tokenizer(settings: Mapping[str, Any], where: str) -> dict[str, Any]:
  """The text tokenizer with its model bytes inside (a path would not travel)."""
  if not settings:
    return {}
  if settings.get("model_b64"):
    return dict(settings)
  try:
    return TextTokenizer.from_dict(dict(settings)).to_dict()
  except VlaxError as e:
    raise VlaxError(f"{where}: cannot embed the text tokenizer: {e}") from None


def export(checkpoint: str, out: str, step: int | None = None, dtype: str = "float32",
           merge_lora: bool = True, use_ema: bool | None = None) -> str:  # pylint: disable=redefined-outer-name
  """Writes the release bundle of CHECKPOINT (step: default latest) to OUT; returns the
  bundle's step directory. OUT must not exist yet (or be an empty directory). The
  bundle's params are the EMA weights when the checkpoint has them (use_ema=False: the
  raw params; see `weights.load`)."""
  if dtype not in DTYPES:
    raise VlaxError(f"export dtype must be one of {DTYPES}, got {dtype!r}")
  out = os.fspath(out)
  if "://" not in out and os.path.exists(out) and (not os.path.isdir(out)
                                                   or os.listdir(out)):
    raise VlaxError(f"export output {out} already exists and is not empty")
  root, step = ckpt_format.resolve(checkpoint, step)
  where = f"checkpoint {checkpoint} step {step}"
  params, meta = weights_lib.load(root, step, use_ema=use_ema)
  meta = dict(meta)
  weights = meta.pop("weights", "params")
  lora = meta.pop("lora", None)
  lora_merged = False
  if has_lora(params):
    if merge_lora:
      params = _merge(params, lora)
      lora_merged = True
    else:
      meta["lora"] = lora
  config = weights_lib.model_config(meta, where)
  model = config.to_dict()
  weights_lib.check_params(_merge(params, lora) if has_lora(params) else params, config,
                           where)
  if dtype == "bfloat16":
    model["param_dtype"] = "bfloat16"
  params = _cast(params, dtype)
  meta["model"] = model
  meta["text_tokenizer"] = _embed_text_tokenizer(meta.get("text_tokenizer") or {}, where)
  meta["export"] = {"source": os.path.abspath(root) if "://" not in root else root,
                    "source_step": int(step), "dtype": dtype, "lora_merged": lora_merged,
                    "weights": weights,
                    "vlax_version": vlax.__version__}
  for key in ("format", "step"):
    meta.pop(key, None)
  return ckpt_format.save_checkpoint(out, step, params, meta)


def main_export(checkpoint: str, out: str, step: int | None = None, merge_lora: bool = True,
                dtype: str = "float32") -> None:  # pylint: disable=redefined-outer-name
  """`vlax export CHECKPOINT OUT`: write the bundle and print a one-line summary."""
  step_dir = export(checkpoint, out, step=step, dtype=dtype, merge_lora=merge_lora)
  meta = ckpt_format.read_metadata(step_dir)
  stats = sorted(meta.get("statistics") or {})
  usable = "vlax.Policy and fine-tuning" if (meta.get("action_tokenizer") or {}).get(
      "vocab") else "fine-tuning only (no action tokenizer: not a trained policy)"
  lora = ("LoRA merged" if meta["export"]["lora_merged"] else
          "LoRA adapters kept" if "lora" in meta else "no LoRA")
  print(f"exported {checkpoint} -> {step_dir} ({dtype}, {lora}); statistics for "
        f"{stats or 'no dataset'}; loads with {usable}")
