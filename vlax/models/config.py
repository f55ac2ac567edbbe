"""Model configuration: frozen, JSON-safe dataclasses shared by models, checkpoints, training."""

from __future__ import annotations

import dataclasses
from typing import Any

from vlax.errors import VlaxError

_DTYPES = ("float32", "bfloat16", "float16")
_REMAT_POLICIES = ("nothing_saveable", "dots_with_no_batch_dims_saveable", "everything_saveable")


@dataclasses.dataclass(frozen=True)
class SigLIPConfig:
  """SigLIP ViT image encoder (defaults: So400m/14 at 224 px, as in PaliGemma 3B)."""
  image_size: int = 224
  patch_size: int = 14
  width: int = 1152
  depth: int = 27
  mlp_dim: int = 4304
  num_heads: int = 16
  layer_norm_eps: float = 1e-6
  # "patch": SigLIP's linear patch embedding (released weights). "conv": a small CNN
  # (log2(patch_size) stride-2 3x3 convs) tokenizes the image at the same grid, as
  # Octo does; it sees small objects far sooner when training from scratch.
  stem: str = "patch"

  def __post_init__(self):
    if self.stem not in ("patch", "conv"):
      raise VlaxError(f"model.vision.stem must be 'patch' or 'conv', got {self.stem!r}")
    p = self.patch_size
    if self.stem == "conv" and (p < 2 or p & (p - 1)):
      raise VlaxError(f"model.vision.stem='conv' needs a power-of-two patch_size, got {p}")

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch_size) ** 2

  @property
  def head_dim(self) -> int:
    return self.width // self.num_heads


@dataclasses.dataclass(frozen=True)
class GemmaConfig:
  """Gemma decoder (defaults: Gemma 2B as in PaliGemma 3B)."""
  vocab_size: int = 257152
  width: int = 2048
  depth: int = 18
  mlp_dim: int = 16384
  num_heads: int = 8
  num_kv_heads: int = 1
  head_dim: int = 256
  rms_norm_eps: float = 1e-6
  rope_theta: float = 10000.0


@dataclasses.dataclass(frozen=True)
class VLAConfig:
  """The assembled policy: encoder, projector, decoder, and how it is computed.

  dtype is the compute dtype (activations, matmul inputs); params are stored in
  param_dtype. remat wraps every scanned block in nn.remat with remat_policy.
  scan_unroll is nn.scan's `unroll` for both layer stacks (True = all layers, 1 = a
  rolled loop). It changes only the compiled program, never the (stacked) param tree:
  unrolled, XLA:CPU drops a rolled loop's per-layer residual stacking and copies (train
  step -21% at debug and medium size); 1 compiles about twice as fast and was faster with
  remat at debug size (benchmarks/README.md). Absent from old checkpoints' metadata.
  """
  vision: SigLIPConfig = dataclasses.field(default_factory=SigLIPConfig)
  llm: GemmaConfig = dataclasses.field(default_factory=GemmaConfig)
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat: bool = False
  remat_policy: str = "nothing_saveable"
  scan_unroll: int | bool = True

  def __post_init__(self):
    validate(self)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "VLAConfig":
    if not isinstance(d, dict):
      raise VlaxError(f"model config must be a dict, got {type(d).__name__}")
    d = dict(d)
    vision = _build(SigLIPConfig, d.pop("vision", {}), "model.vision")
    llm = _build(GemmaConfig, d.pop("llm", {}), "model.llm")
    known = {f.name for f in dataclasses.fields(cls)} - {"vision", "llm"}
    unknown = sorted(set(d) - known)
    if unknown:
      raise VlaxError(f"unknown key(s) in model config: {unknown}")
    return cls(vision=vision, llm=llm, **d)


def _build(cls, d, where):
  if isinstance(d, cls):
    return d
  if not isinstance(d, dict):
    raise VlaxError(f"{where} must be a dict, got {type(d).__name__}")
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(d) - names)
  if unknown:
    raise VlaxError(f"unknown key(s) in {where}: {unknown}")
  return cls(**d)


def validate(config: VLAConfig) -> None:
  """Raises VlaxError naming the bad field; called on construction."""
  v, g = config.vision, config.llm
  if config.dtype not in _DTYPES:
    raise VlaxError(f"model.dtype must be one of {_DTYPES}, got {config.dtype!r}")
  if config.param_dtype not in _DTYPES:
    raise VlaxError(f"model.param_dtype must be one of {_DTYPES}, got {config.param_dtype!r}")
  if config.remat_policy not in _REMAT_POLICIES:
    raise VlaxError(f"model.remat_policy must be one of {_REMAT_POLICIES}, "
                    f"got {config.remat_policy!r}")
  u = config.scan_unroll
  if not isinstance(u, (bool, int)) or (not isinstance(u, bool) and u < 1):
    raise VlaxError(f"model.scan_unroll must be a bool or an int >= 1, got {u!r}")
  for name in ("image_size", "patch_size", "width", "depth", "mlp_dim", "num_heads"):
    if getattr(v, name) <= 0:
      raise VlaxError(f"model.vision.{name} must be positive, got {getattr(v, name)}")
  if v.image_size % v.patch_size:
    raise VlaxError(f"model.vision.image_size {v.image_size} is not a multiple of "
                    f"patch_size {v.patch_size}")
  if v.width % v.num_heads:
    raise VlaxError(f"model.vision.width {v.width} is not a multiple of num_heads {v.num_heads}")
  for name in ("vocab_size", "width", "depth", "mlp_dim", "num_heads", "num_kv_heads", "head_dim"):
    if getattr(g, name) <= 0:
      raise VlaxError(f"model.llm.{name} must be positive, got {getattr(g, name)}")
  if g.num_heads % g.num_kv_heads:
    raise VlaxError(f"model.llm.num_heads {g.num_heads} is not a multiple of "
                    f"num_kv_heads {g.num_kv_heads}")
  if g.head_dim % 2:
    raise VlaxError(f"model.llm.head_dim must be even for RoPE, got {g.head_dim}")
