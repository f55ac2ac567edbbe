"""Reads big_vision's PaliGemma `.npz` checkpoints; defines the vlax parameter tree.

vlax's parameter tree *is* big_vision's PaliGemma tree (model `proj.paligemma`, with
`img` = `vit` scanned and `llm` = `proj.paligemma.gemma_bv` scanned), so importing an npz
is a rename-free load plus a few layout normalizations. The npz stores the flattened
tree with '/'-joined names; released files (e.g. `pt_224.npz`) put everything under a
leading `params/`, which is optional here. Names and shapes (L = depth, stacked):

  img/embedding/{kernel [P,P,3,W], bias [W]}              SigLIP patch conv
  img/pos_embedding [1,N,W]                                learned, N = (image/P)^2
  img/Transformer/encoderblock/LayerNorm_0/{scale,bias} [L,W]
  img/Transformer/encoderblock/MultiHeadDotProductAttention_0/
      {query,key,value}/{kernel [L,W,H,D], bias [L,H,D]}, out/{kernel [L,H,D,W], bias [L,W]}
  img/Transformer/encoderblock/LayerNorm_1/{scale,bias} [L,W]
  img/Transformer/encoderblock/MlpBlock_0/Dense_0/{kernel [L,W,M], bias [L,M]}
  img/Transformer/encoderblock/MlpBlock_0/Dense_1/{kernel [L,M,W], bias [L,W]}
  img/Transformer/encoder_norm/{scale,bias} [W]
  img/head/{kernel [W,E], bias [E]}                        the linear projector
  llm/embedder/input_embedding [V,E]                       tied input/output embedding
  llm/layers/pre_attention_norm/scale [L,E]                RMSNorm, x * (1 + scale)
  llm/layers/attn/q_einsum/w [L,H,E,Dh]
  llm/layers/attn/kv_einsum/w [L,2,K,E,Dh]                 [k, v]
  llm/layers/attn/attn_vec_einsum/w [L,H,Dh,E]
  llm/layers/pre_ffw_norm/scale [L,E]
  llm/layers/mlp/gating_einsum [L,2,E,F]                   [gate (gelu), up]
  llm/layers/mlp/linear [L,F,E]
  llm/final_norm/scale [E]

Layout variants that are normalized on import:
  * unscanned ViT blocks `img/Transformer/encoderblock_<i>/...` are stacked;
  * unscanned Gemma blocks `llm/layers/<i>/...` are stacked;
  * big_vision Gemma with num_kv_heads == num_heads stores one
    `attn/qkv_einsum/w [L,3,H,E,Dh]` instead of q_einsum + kv_einsum: it is split;
  * bfloat16 arrays (`*.bf16.npz`, stored as 2-byte void) and float16 become float32.

The config is inferred from shapes: P, W from the patch kernel; image size from N and
P; ViT heads from the 4-D query kernel; E, V from the embedding; Gemma heads, head dim,
kv heads, mlp dim from the einsum weights. big_vision hard-codes RMSNorm eps 1e-6,
LayerNorm eps 1e-6 and RoPE max wavelength 10000, which are used here.
"""

from __future__ import annotations

import math
import os
import re
import zipfile
from typing import Any

import numpy as np
import ml_dtypes

from vlax.errors import VlaxError
from vlax.models.config import GemmaConfig, SigLIPConfig, VLAConfig

_ENC = "img/Transformer/encoderblock"
_ATT = _ENC + "/MultiHeadDotProductAttention_0"
_LLM = "llm/layers"


def param_shapes(config) -> dict[str, tuple[int, ...]]:
  """The flat ('/'-joined) parameter names and shapes of a VLAConfig."""
  v, g = config.vision, config.llm
  lv, w, h, m = v.depth, v.width, v.num_heads, v.mlp_dim
  d = w // h
  p, n = v.patch_size, (v.image_size // v.patch_size) ** 2
  ll, e, nh, k, dh, f = g.depth, g.width, g.num_heads, g.num_kv_heads, g.head_dim, g.mlp_dim
  shapes = {
      "img/embedding/kernel": (p, p, 3, w),
      "img/embedding/bias": (w,),
      "img/pos_embedding": (1, n, w),
      f"{_ENC}/LayerNorm_0/scale": (lv, w),
      f"{_ENC}/LayerNorm_0/bias": (lv, w),
      f"{_ATT}/out/kernel": (lv, h, d, w),
      f"{_ATT}/out/bias": (lv, w),
      f"{_ENC}/LayerNorm_1/scale": (lv, w),
      f"{_ENC}/LayerNorm_1/bias": (lv, w),
      f"{_ENC}/MlpBlock_0/Dense_0/kernel": (lv, w, m),
      f"{_ENC}/MlpBlock_0/Dense_0/bias": (lv, m),
      f"{_ENC}/MlpBlock_0/Dense_1/kernel": (lv, m, w),
      f"{_ENC}/MlpBlock_0/Dense_1/bias": (lv, w),
      "img/Transformer/encoder_norm/scale": (w,),
      "img/Transformer/encoder_norm/bias": (w,),
      "img/head/kernel": (w, e),
      "img/head/bias": (e,),
      "llm/embedder/input_embedding": (g.vocab_size, e),
      f"{_LLM}/pre_attention_norm/scale": (ll, e),
      f"{_LLM}/attn/q_einsum/w": (ll, nh, e, dh),
      f"{_LLM}/attn/kv_einsum/w": (ll, 2, k, e, dh),
      f"{_LLM}/attn/attn_vec_einsum/w": (ll, nh, dh, e),
      f"{_LLM}/pre_ffw_norm/scale": (ll, e),
      f"{_LLM}/mlp/gating_einsum": (ll, 2, e, f),
      f"{_LLM}/mlp/linear": (ll, f, e),
      "llm/final_norm/scale": (e,),
  }
  for name in ("query", "key", "value"):
    shapes[f"{_ATT}/{name}/kernel"] = (lv, w, h, d)
    shapes[f"{_ATT}/{name}/bias"] = (lv, h, d)
  return shapes


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  """Nested dict -> {'a/b/c': leaf}."""
  out = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict) or hasattr(value, "items") and not hasattr(value, "shape"):
      out.update(flatten(dict(value.items()), name + "/"))
    else:
      out[name] = value
  return out


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
  """{'a/b/c': leaf} -> nested dict."""
  tree: dict[str, Any] = {}
  for name, value in flat.items():
    node = tree
    *parents, leaf = name.split("/")
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = value
  return tree


def check_shapes(flat: dict[str, Any], config, source: str) -> None:
  """Raises VlaxError naming `source` and the first missing/extra/mis-shaped param."""
  expected = param_shapes(config)
  for name, shape in expected.items():
    if name not in flat:
      raise VlaxError(f"{source}: missing parameter {name} (expected shape {shape})")
    actual = tuple(np.shape(flat[name]))
    if actual != shape:
      raise VlaxError(f"{source}: parameter {name} has shape {actual}, expected {shape}")
  extra = sorted(set(flat) - set(expected))
  if extra:
    raise VlaxError(f"{source}: unexpected parameter {extra[0]} "
                    f"({len(extra)} unexpected in all)")


def _to_float32(name: str, x: np.ndarray, path: str) -> np.ndarray:
  if x.dtype.kind == "V" and x.dtype.itemsize == 2:  # bfloat16 saved without ml_dtypes
    return x.view(ml_dtypes.bfloat16).astype(np.float32)
  if x.dtype.kind in "fV" or x.dtype.name == "bfloat16":
    return np.asarray(x).astype(np.float32)
  raise VlaxError(f"{path}: parameter {name} has non-float dtype {x.dtype}")


def _stack_unscanned(flat: dict[str, np.ndarray], pattern: str, scanned: str,
                     path: str) -> dict[str, np.ndarray]:
  """Stacks `<prefix>_<i>/rest` or `<prefix>/<i>/rest` blocks into `scanned/rest`."""
  rx = re.compile(pattern)
  groups: dict[str, dict[int, np.ndarray]] = {}
  out = {}
  for name, x in flat.items():
    m = rx.match(name)
    if m:
      groups.setdefault(m.group(2), {})[int(m.group(1))] = x
    else:
      out[name] = x
  for rest, per_layer in groups.items():
    depth = max(per_layer) + 1
    missing = [i for i in range(depth) if i not in per_layer]
    if missing:
      raise VlaxError(f"{path}: layer {missing[0]} of {scanned}/{rest} is missing")
    out[f"{scanned}/{rest}"] = np.stack([per_layer[i] for i in range(depth)])
  return out


def read_npz(path: str) -> dict[str, np.ndarray]:
  """The normalized flat float32 parameter dict of a big_vision PaliGemma npz."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise VlaxError(f"big_vision checkpoint not found: {path}")
  try:
    npz = np.load(path, allow_pickle=False)
  except (OSError, ValueError, zipfile.BadZipFile) as e:
    raise VlaxError(f"cannot read {path} as an .npz file: {e}") from None
  with npz:
    raw = {}
    for key in npz.files:
      name = key[len("params/"):] if key.startswith("params/") else key
      raw[name] = _to_float32(name, npz[key], path)
  if not any(k.startswith("img/") for k in raw) or not any(
      k.startswith("llm/") for k in raw):
    raise VlaxError(f"{path} is not a big_vision PaliGemma checkpoint "
                    "(expected img/... and llm/... parameters)")
  flat = _stack_unscanned(raw, r"^img/Transformer/encoderblock_(\d+)/(.+)$", _ENC, path)
  flat = _stack_unscanned(flat, r"^llm/layers/(\d+)/(.+)$", _LLM, path)
  qkv = flat.pop(f"{_LLM}/attn/qkv_einsum/w", None)
  if qkv is not None:
    if qkv.ndim != 5 or qkv.shape[1] != 3:
      raise VlaxError(f"{path}: parameter {_LLM}/attn/qkv_einsum/w has shape "
                      f"{qkv.shape}, expected [L, 3, H, E, Dh]")
    flat[f"{_LLM}/attn/q_einsum/w"] = qkv[:, 0]
    flat[f"{_LLM}/attn/kv_einsum/w"] = qkv[:, 1:]
  return flat


def _shape(flat, name, ndim, path):
  if name not in flat:
    raise VlaxError(f"{path}: missing parameter {name}")
  shape = flat[name].shape
  if len(shape) != ndim:
    raise VlaxError(f"{path}: parameter {name} has shape {tuple(shape)}, expected a "
                    f"{ndim}-D array")
  return shape


def infer_config(flat: dict[str, np.ndarray], path: str = "npz"):
  """Infers the VLAConfig from the shapes of a normalized flat tree."""
  p, _, _, w = _shape(flat, "img/embedding/kernel", 4, path)
  _, n, _ = _shape(flat, "img/pos_embedding", 3, path)
  side = math.isqrt(n)
  if side * side != n:
    raise VlaxError(f"{path}: img/pos_embedding has {n} positions, not a square grid")
  lv, _, h, _ = _shape(flat, f"{_ATT}/query/kernel", 4, path)
  _, _, m = _shape(flat, f"{_ENC}/MlpBlock_0/Dense_0/kernel", 3, path)
  v, e = _shape(flat, "llm/embedder/input_embedding", 2, path)
  ll, nh, _, dh = _shape(flat, f"{_LLM}/attn/q_einsum/w", 4, path)
  _, _, k, _, _ = _shape(flat, f"{_LLM}/attn/kv_einsum/w", 5, path)
  _, _, _, f = _shape(flat, f"{_LLM}/mlp/gating_einsum", 4, path)
  try:
    return VLAConfig(
        vision=SigLIPConfig(image_size=side * p, patch_size=p, width=w, depth=lv,
                            mlp_dim=m, num_heads=h, layer_norm_eps=1e-6),
        llm=GemmaConfig(vocab_size=v, width=e, depth=ll, mlp_dim=f, num_heads=nh,
                        num_kv_heads=k, head_dim=dh, rms_norm_eps=1e-6,
                        rope_theta=10000.0))
  except VlaxError as err:
    raise VlaxError(f"{path}: inconsistent shapes: {err}") from None


def load_big_vision_npz(path: str) -> tuple[Any, dict[str, Any]]:
  """Reads a big_vision PaliGemma npz into (VLAConfig, nested float32 params)."""
  flat = read_npz(path)
  config = infer_config(flat, path)
  check_shapes(flat, config, path)
  return config, unflatten(flat)


def save_big_vision_npz(path: str, params: dict[str, Any], prefix: str = "params/"
                        ) -> None:
  """Writes params in big_vision's flat npz layout (for tests and round trips)."""
  flat = flatten(params)
  np.savez(path, **{prefix + k: np.asarray(x) for k, x in flat.items()})
