"""LoRA adapters for fine-tuning: low-rank deltas beside frozen base weights.

Why: adapting a released checkpoint to a new robot with a small number of trainable
parameters (and optimizer state) while the base weights stay bit-identical.

Convention (the one `merge_adapters` implements and every loader of weights reads through
`vlax.checkpoints.weights`): beside a
targeted base weight `W` of a params node sit `W_lora_a` and `W_lora_b` with
    A: [*batch, in, r],  B: [*batch, r, out],  W_eff = W + (alpha / rank) * (A @ B)
(A @ B has W's size and is reshaped row-major to W's shape). Which axes of W are
batch / in / out is chosen so that the row-major reshape is the right one:
  * Gemma einsum weights (`q_einsum/w` [L,H,E,Dh], `kv_einsum/w` [L,2,K,E,Dh],
    `attn_vec_einsum/w` [L,H,Dh,E], `mlp/gating_einsum` [L,2,E,F], `mlp/linear` [L,F,E]):
    the last two axes are in/out, every leading axis (layer, head, gate) is a batch axis,
    i.e. one rank-r adapter per layer and head.
  * SigLIP attention kernels: `query|key|value/kernel` [L,W,H,D] -> in W, out H*D;
    `out/kernel` [L,H,D,W] -> in H*D, out W; the patch embedding [P,P,3,W] -> in P*P*3.
  * Any other weight matrix: the last two axes. Biases, norm scales and position
    embeddings never get adapters (stacking makes some of them 2-D).
A is initialized N(0, 1/in), B zeros, so a fresh adapter leaves the model unchanged.
The train step merges the adapters into the base weights functionally (`merge`) before
`model.apply`; checkpoints store the adapters unmerged plus metadata['lora'] =
{rank, alpha, targets}; `vlax export` merges them.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vlax.errors import VlaxError
from vlax.utils import flat_paths, path_str

LORA_A, LORA_B = "lora_a", "lora_b"
DEFAULT_TARGETS = (r"^llm/layers/attn/", r"^llm/layers/mlp/")
# Stacked layers make biases and norm scales 2-D: they are still not weight matrices.
_NOT_WEIGHT = re.compile(r"(^|/)(bias|scale|pos_embedding)$")

# (regex on the param path, number of `in` axes, number of `out` axes); first match wins.
_LAYOUTS = (
    (re.compile(r"MultiHeadDotProductAttention_0/(query|key|value)/kernel$"), 1, 2),
    (re.compile(r"MultiHeadDotProductAttention_0/out/kernel$"), 2, 1),
    (re.compile(r"^img/embedding/kernel$"), 3, 1),
)


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  rank: int
  alpha: float
  targets: tuple[str, ...] = DEFAULT_TARGETS

  @property
  def scale(self) -> float:
    return float(self.alpha) / float(self.rank)

  def to_metadata(self) -> dict[str, Any]:
    """metadata['lora'] as written into checkpoints (read by merge_lora / Policy)."""
    return {"rank": int(self.rank), "alpha": float(self.alpha),
            "targets": list(self.targets)}


def _split(patterns: Sequence[str] | str | None) -> tuple[str, ...]:
  if patterns is None:
    return ()
  if isinstance(patterns, str):
    return tuple(p.strip() for p in patterns.split(",") if p.strip())
  return tuple(str(p) for p in patterns if str(p))


def config_from(c: Any) -> LoraConfig | None:
  """LoraConfig from a training config's `lora` section (None when rank is 0 / absent)."""
  if c is None:
    return None
  get = (lambda k, d: c.get(k, d)) if hasattr(c, "get") else (lambda k, d: getattr(c, k, d))
  rank = int(get("rank", 0) or 0)
  if rank <= 0:
    if rank < 0:
      raise VlaxError(f"lora.rank must be >= 0 (0 = off), got {rank}")
    return None
  alpha = float(get("alpha", rank) or rank)
  targets = _split(get("targets", DEFAULT_TARGETS)) or DEFAULT_TARGETS
  for p in targets:
    try:
      re.compile(p)
    except re.error as e:
      raise VlaxError(f"lora.targets: bad regex {p!r}: {e}") from None
  return LoraConfig(rank=rank, alpha=alpha, targets=targets)


def is_adapter(name: str) -> bool:
  """True for an adapter param (path or key ending in lora_a / lora_b)."""
  return name.endswith(LORA_A) or name.endswith(LORA_B)


def has_lora(params: Any) -> bool:
  if not isinstance(params, Mapping):
    return False
  return any((is_adapter(k) and not isinstance(v, Mapping)) or has_lora(v)
             for k, v in params.items())


def base_name(node: Mapping[str, Any], name: str, where: str) -> str:
  """The base weight an adapter key belongs to ('w_lora_a' -> 'w'; 'lora_a' -> the one
  non-adapter array beside it, 'kernel' or 'w' first)."""
  stem = name[:-len(LORA_A)].rstrip("_")
  if stem:
    if stem not in node:
      raise VlaxError(f"LoRA adapter {where}/{name} has no base weight {where}/{stem}")
    return stem
  arrays = [k for k, v in node.items() if not isinstance(v, Mapping) and not is_adapter(k)]
  for preferred in ("kernel", "w"):
    if preferred in arrays:
      return preferred
  if len(arrays) != 1:
    raise VlaxError(f"LoRA adapter {where}/{name}: cannot tell its base weight among "
                    f"{sorted(arrays)}; name it '<base>_{LORA_A}'")
  return arrays[0]


_flat = flat_paths


def layout(name: str, shape: Sequence[int]) -> tuple[tuple[int, ...], int, int]:
  """(batch shape, in size, out size) of base weight `name` (see the module docstring)."""
  shape = tuple(int(s) for s in shape)
  n_in, n_out = 1, 1
  for reg, i, o in _LAYOUTS:
    if reg.search(name):
      n_in, n_out = i, o
      break
  if len(shape) < n_in + n_out:
    raise VlaxError(f"LoRA target {name} has shape {shape}: too few axes for an adapter")
  nb = len(shape) - n_in - n_out
  return (shape[:nb], int(np.prod(shape[nb:nb + n_in])), int(np.prod(shape[nb + n_in:])))


def adapter_shapes(name: str, shape: Sequence[int], rank: int
                   ) -> tuple[tuple[int, ...], tuple[int, ...]]:
  batch, fan_in, fan_out = layout(name, shape)
  return batch + (fan_in, rank), batch + (rank, fan_out)


def target_names(params: Any, config: LoraConfig) -> list[str]:
  """Paths of the weight matrices (>= 2-D, not a (stacked) bias / norm scale / position
  embedding) matched by config.targets (VlaxError if a pattern
  matches no weight: most likely a typo)."""
  regs = [re.compile(p) for p in config.targets]
  names = [n for n, x in _flat(params).items()
           if not is_adapter(n) and len(np.shape(x)) >= 2 and not _NOT_WEIGHT.search(n)]
  out = [n for n in names if any(r.search(n) for r in regs)]
  for r in regs:
    if not any(r.search(n) for n in names):
      raise VlaxError(f"lora.targets: {r.pattern!r} matches no weight matrix (>= 2-D "
                      f"param); e.g. {names[:4]}")
  return out


def _insert(params: Any, leaves: Mapping[str, Any]) -> dict:
  """Copy of the nested dict `params` with extra leaves at '/'-joined paths."""
  def copy(node):
    return {k: copy(v) if isinstance(v, Mapping) else v for k, v in node.items()}
  out = copy(params)
  for name, leaf in leaves.items():
    parts = name.split("/")
    node = out
    for p in parts[:-1]:
      node = node[p]
    node[parts[-1]] = leaf
  return out


def add_adapters(params: Any, config: LoraConfig,
                 make: Callable[[str, str, tuple[int, ...], int], Any]) -> dict:
  """Params + adapter leaves `make(base_name, 'a'|'b', shape, fan_in)` beside each target."""
  flat = _flat(params)
  new = {}
  for name in target_names(params, config):
    a_shape, b_shape = adapter_shapes(name, np.shape(flat[name]), config.rank)
    fan_in = a_shape[-2]
    new[f"{name}_{LORA_A}"] = make(name, "a", a_shape, fan_in)
    new[f"{name}_{LORA_B}"] = make(name, "b", b_shape, fan_in)
  return _insert(params, new)


def init_adapters(params: Any, config: LoraConfig, rng: jax.Array) -> dict:
  """Adds freshly initialized adapters (A ~ N(0, 1/in), B = 0): the model is unchanged."""
  names = target_names(params, config)
  keys = dict(zip(names, jax.random.split(rng, max(1, len(names)))))

  def make(name, which, shape, fan_in):
    if which == "b":
      return jnp.zeros(shape, jnp.float32)
    return jax.random.normal(keys[name], shape, jnp.float32) / math.sqrt(fan_in)

  return add_adapters(params, config, make)


def abstract_adapters(abstract_params: Any, config: LoraConfig) -> dict:
  """ShapeDtypeStruct version of `init_adapters` (for eval_shape / shardings)."""
  return add_adapters(abstract_params, config,
                      lambda n, w, shape, f: jax.ShapeDtypeStruct(shape, jnp.float32))


def adapter_mask(params: Any) -> Any:
  """Bool pytree: True for adapter leaves."""
  return jax.tree_util.tree_map_with_path(lambda p, _: is_adapter(path_str(p)), params)


def fill_like(tree: Any, known: Any, default: Any) -> Any:
  """A pytree shaped like `tree`: `known`'s leaf where the path exists there, else
  `default` (e.g. shardings for params + adapters from the base params' shardings)."""
  flat = _flat(known)
  return jax.tree_util.tree_map_with_path(
      lambda p, _: flat.get(path_str(p), default), tree)


def merge_adapters(params: Any, scale: float) -> dict[str, Any]:
  """Adapters folded into their base weights and removed: W += scale * (A @ B).

  A [*batch, in, r] @ B [*batch, r, out] is a batched matmul (stacked layers and heads
  are batch axes); the product must have W's shape or its size (then it is reshaped
  row-major). Computes in float32 and returns W's dtype. Host numpy arrays stay numpy
  (export: no device memory); jax arrays and tracers use jnp (jit- and grad-friendly).
  """

  def rec(node: Mapping[str, Any], where: str) -> dict[str, Any]:
    out = {k: (rec(v, f"{where}/{k}" if where else k) if isinstance(v, Mapping) else v)
           for k, v in node.items() if isinstance(v, Mapping) or not is_adapter(k)}
    for name, a in node.items():
      if isinstance(a, Mapping):
        continue
      if name.endswith(LORA_B) and name[:-len(LORA_B)] + LORA_A not in node:
        raise VlaxError(f"LoRA adapter {where}/{name} has no "
                        f"{name[:-len(LORA_B)] + LORA_A} beside it")
      if not name.endswith(LORA_A):
        continue
      b_name = name[:-len(LORA_A)] + LORA_B
      if b_name not in node:
        raise VlaxError(f"LoRA adapter {where}/{name} has no {b_name} beside it")
      base = base_name(node, name, where)
      b, w = node[b_name], node[base]
      xp = jnp if any(isinstance(x, jax.Array) for x in (a, b, w)) else np
      a, b, w = xp.asarray(a), xp.asarray(b), xp.asarray(w)
      try:
        delta = xp.matmul(a.astype(xp.float32), b.astype(xp.float32))
      except (ValueError, TypeError):
        raise VlaxError(f"LoRA adapters of {where}/{base}: {name} {a.shape} and {b_name} "
                        f"{b.shape} cannot be multiplied") from None
      if delta.shape != w.shape:
        if delta.size != w.size:
          raise VlaxError(f"LoRA adapters of {where}/{base}: A @ B has shape "
                          f"{delta.shape}, the base weight {w.shape}")
        delta = delta.reshape(w.shape)
      out[base] = (w.astype(xp.float32) + scale * delta).astype(w.dtype)
    return out

  return rec(params, "")


merge = merge_adapters  # the train step's name for it


def count(params: Any) -> int:
  return int(sum(np.size(x) for n, x in _flat(params).items() if is_adapter(n)))
