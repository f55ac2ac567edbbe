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
base weights (see `merge_lora` for the adapter convention).
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from vlax.errors import VlaxError

DTYPES = ("float32", "bfloat16")
LORA_A, LORA_B = "lora_a", "lora_b"


def _is_adapter(name: str) -> bool:
  return name.endswith(LORA_A) or name.endswith(LORA_B)


def _base_name(node: Mapping[str, Any], name: str, where: str) -> str:
  """The base weight an adapter key belongs to ('w_lora_a' -> 'w'; 'lora_a' -> the one
  non-adapter array beside it, 'kernel' or 'w' first)."""
  stem = name[:-len(LORA_A)].rstrip("_")
  if stem:
    if stem not in node:
      raise VlaxError(f"LoRA adapter {where}/{name} has no base weight {where}/{stem}")
    return stem
  arrays = [k for k, v in node.items() if not isinstance(v, Mapping) and not _is_adapter(k)]
  for preferred in ("kernel", "w"):
    if preferred in arrays:
      return preferred
  if len(arrays) != 1:
    raise VlaxError(f"LoRA adapter {where}/{name}: cannot tell its base weight among "
                    f"{sorted(arrays)}; name it '<base>_{LORA_A}'")
  return arrays[0]


def lora_scale(lora_config: Mapping[str, Any]) -> float:
  """alpha / rank (or an explicit 'scale')."""
  if "scale" in lora_config:
    return float(lora_config["scale"])
  try:
    return float(lora_config["alpha"]) / float(lora_config["rank"])
  except (KeyError, TypeError, ZeroDivisionError) as e:
    raise VlaxError(f"metadata 'lora' needs 'rank' and 'alpha' (or 'scale'), got "
                    f"{dict(lora_config)}: {e}") from None


def has_lora(params: Any) -> bool:
  if not isinstance(params, Mapping):
    return False
  return any((_is_adapter(k) and not isinstance(v, Mapping)) or has_lora(v)
             for k, v in params.items())


def merge_lora(params: Any, lora_config: Mapping[str, Any] | None) -> Any:
  """Folds LoRA adapters into their base weights; params without adapters are returned
  unchanged (whatever lora_config says).

  Convention: beside a base weight `W` (e.g. `.../q_einsum/w`, `.../Dense_0/kernel`) sit
  `W_lora_a` and `W_lora_b` (or plain `lora_a` / `lora_b` when the base is `kernel`,
  `w` or the only array there), with
      A: [*batch, in, r],  B: [*batch, r, out],  W += (alpha / rank) * (A @ B)
  where `@` is numpy's batched matmul (stacked layers and e.g. heads are batch axes) and
  the product must have W's shape (or its size, then it is reshaped row-major).
  `lora_config` is the checkpoint's metadata['lora'] = {rank, alpha, targets}.
  """
  if not has_lora(params):
    return params
  if not lora_config:
    raise VlaxError("params hold LoRA adapters (keys ending in 'lora_a'/'lora_b') but the "
                    "checkpoint metadata has no 'lora' entry with rank and alpha")
  scale = lora_scale(lora_config)

  def merge(node: Mapping[str, Any], where: str) -> dict[str, Any]:
    out = {k: (merge(v, f"{where}/{k}" if where else k) if isinstance(v, Mapping) else v)
           for k, v in node.items() if not _is_adapter(k) or isinstance(v, Mapping)}
    for name in node:
      if not name.endswith(LORA_A) or isinstance(node[name], Mapping):
        continue
      b_name = name[:-len(LORA_A)] + LORA_B
      if b_name not in node:
        raise VlaxError(f"LoRA adapter {where}/{name} has no {b_name} beside it")
      base = _base_name(node, name, where)
      w = np.asarray(node[base])
      a = np.asarray(node[name], np.float32)
      b = np.asarray(node[b_name], np.float32)
      try:
        delta = np.matmul(a, b)
      except ValueError:
        raise VlaxError(f"LoRA adapters of {where}/{base}: {name} {a.shape} and {b_name} "
                        f"{b.shape} cannot be multiplied") from None
      if delta.shape != w.shape:
        if delta.size != w.size:
          raise VlaxError(f"LoRA adapters of {where}/{base}: A @ B has shape "
                          f"{delta.shape}, the base weight {w.shape}")
        delta = delta.reshape(w.shape)
      out[base] = (w.astype(np.float32) + scale * delta).astype(w.dtype)
    for name in node:
      if name.endswith(LORA_B) and not isinstance(node[name], Mapping):
        if name[:-len(LORA_B)] + LORA_A not in node:
          raise VlaxError(f"LoRA adapter {where}/{name} has no "
                          f"{name[:-len(LORA_B)] + LORA_A} beside it")
    return out

  return merge(params, "")


_merge = merge_lora  # `export`'s merge_lora flag shadows the function name


def _cast(params: Any, dtype: str) -> Any:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  target = np.dtype(jnp.bfloat16) if dtype == "bfloat16" else np.dtype(np.float32)

  def cast(x):
    x = np.asarray(x)
    return x.astype(target) if np.issubdtype(x.dtype, np.floating) or \
        x.dtype == np.dtype(jnp.bfloat16) else x

  return jax.tree.map(cast, params)


def _embed_text_tokenizer(settings: Mapping[str, Any], where: str) -> dict[str, Any]:
  """The text tokenizer with its model bytes inside (a path would not travel)."""
  from vlax.data.text_tokenizer import TextTokenizer  # pylint: disable=g-import-not-at-top
  if not settings:
    return {}
  if settings.get("model_b64"):
    return dict(settings)
  try:
    return TextTokenizer.from_dict(dict(settings)).to_dict()
  except VlaxError as e:
    raise VlaxError(f"{where}: cannot embed the text tokenizer: {e}") from None


def export(checkpoint: str, out: str, step: int | None = None, dtype: str = "float32",
           merge_lora: bool = True) -> str:  # pylint: disable=redefined-outer-name
  """Writes the release bundle of CHECKPOINT (step: default latest) to OUT; returns the
  bundle's step directory. OUT must not exist yet (or be an empty directory)."""
  from vlax.checkpoints import format as ckpt_format  # pylint: disable=g-import-not-at-top
  from vlax.inference.policy import check_params  # pylint: disable=g-import-not-at-top
  from vlax.models.config import VLAConfig  # pylint: disable=g-import-not-at-top
  import vlax  # pylint: disable=g-import-not-at-top
  if dtype not in DTYPES:
    raise VlaxError(f"export dtype must be one of {DTYPES}, got {dtype!r}")
  out = os.fspath(out)
  if "://" not in out and os.path.exists(out) and (not os.path.isdir(out)
                                                   or os.listdir(out)):
    raise VlaxError(f"export output {out} already exists and is not empty")
  root, step = ckpt_format.resolve(checkpoint, step)
  where = f"checkpoint {checkpoint} step {step}"
  params, meta = ckpt_format.load_params(root, step)
  meta = dict(meta)
  lora = meta.pop("lora", None)
  lora_merged = False
  if has_lora(params):
    if merge_lora:
      params = _merge(params, lora)
      lora_merged = True
    else:
      meta["lora"] = lora
  try:
    model = VLAConfig.from_dict(meta["model"]).to_dict()
  except (KeyError, VlaxError) as e:
    raise VlaxError(f"{where}: bad or missing model config in metadata: {e}") from None
  check_params(_merge(params, lora) if has_lora(params) else params,
               VLAConfig.from_dict(model), where)
  if dtype == "bfloat16":
    model["param_dtype"] = "bfloat16"
  params = _cast(params, dtype)
  meta["model"] = model
  meta["text_tokenizer"] = _embed_text_tokenizer(meta.get("text_tokenizer") or {}, where)
  meta["export"] = {"source": os.path.abspath(root) if "://" not in root else root,
                    "source_step": int(step), "dtype": dtype, "lora_merged": lora_merged,
                    "vlax_version": vlax.__version__}
  for key in ("format", "step"):
    meta.pop(key, None)
  return ckpt_format.save_checkpoint(out, step, params, meta)


def main_export(checkpoint: str, out: str, step: int | None = None, merge_lora: bool = True,
                dtype: str = "float32") -> None:  # pylint: disable=redefined-outer-name
  """`vlax export CHECKPOINT OUT`: write the bundle and print a one-line summary."""
  step_dir = export(checkpoint, out, step=step, dtype=dtype, merge_lora=merge_lora)
  from vlax.checkpoints import format as ckpt_format  # pylint: disable=g-import-not-at-top
  meta = ckpt_format.read_metadata(step_dir)
  stats = sorted(meta.get("statistics") or {})
  usable = "vlax.Policy and fine-tuning" if (meta.get("action_tokenizer") or {}).get(
      "vocab") else "fine-tuning only (no action tokenizer: not a trained policy)"
  lora = ("LoRA merged" if meta["export"]["lora_merged"] else
          "LoRA adapters kept" if "lora" in meta else "no LoRA")
  print(f"exported {checkpoint} -> {step_dir} ({dtype}, {lora}); statistics for "
        f"{stats or 'no dataset'}; loads with {usable}")
