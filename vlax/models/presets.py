"""Named model sizes, plus analytic parameter and FLOP counts (no model is built)."""

from __future__ import annotations

from vlax.errors import VlaxError
from vlax.models.config import GemmaConfig, SigLIPConfig, VLAConfig

PRESETS: dict[str, VLAConfig] = {
    # CPU unit tests: compiles and runs in seconds.
    "tiny": VLAConfig(
        vision=SigLIPConfig(image_size=32, patch_size=8, width=32, depth=2, mlp_dim=64,
                            num_heads=2),
        llm=GemmaConfig(vocab_size=1024, width=32, depth=2, mlp_dim=64, num_heads=2,
                        num_kv_heads=1, head_dim=16),
    ),
    # CPU training demo (minutes on 2 cores); training sets llm.vocab_size for its tokenizers.
    "debug": VLAConfig(
        vision=SigLIPConfig(image_size=64, patch_size=8, width=128, depth=3, mlp_dim=512,
                            num_heads=4),
        llm=GemmaConfig(vocab_size=1024, width=192, depth=4, mlp_dim=512, num_heads=4,
                        num_kv_heads=1, head_dim=48),
    ),
    # About 300M parameters: ViT-B/16 at 224 px and a 12-layer, 1024-wide decoder.
    "medium": VLAConfig(
        vision=SigLIPConfig(image_size=224, patch_size=16, width=768, depth=12, mlp_dim=3072,
                            num_heads=12),
        llm=GemmaConfig(vocab_size=32768, width=1024, depth=12, mlp_dim=4096, num_heads=8,
                        num_kv_heads=1, head_dim=128),
    ),
    # The released PaliGemma 3B: SigLIP So400m/14 at 224 px + Gemma 2B.
    "paligemma_3b": VLAConfig(vision=SigLIPConfig(), llm=GemmaConfig()),
}


def get_preset(name: str) -> VLAConfig:
  if name not in PRESETS:
    raise VlaxError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
  return PRESETS[name]


def count_params(config: VLAConfig) -> dict[str, int]:
  """Parameter counts by part ({'vision', 'projector', 'llm', 'total'}), from the shapes."""
  v, g = config.vision, config.llm
  w, m = v.width, v.mlp_dim
  vision = v.patch_size ** 2 * 3 * w + w + v.num_patches * w + 2 * w
  vision += v.depth * (4 * w + 4 * (w * w + w) + w * m + m + m * w + w)
  projector = w * g.width + g.width
  e, f, h, k, d = g.width, g.mlp_dim, g.num_heads, g.num_kv_heads, g.head_dim
  llm = g.vocab_size * e + e
  llm += g.depth * (2 * e + h * e * d + 2 * k * e * d + h * d * e + 3 * e * f)
  return {"vision": vision, "projector": projector, "llm": llm,
          "total": vision + projector + llm}


def forward_flops(config: VLAConfig, num_images: int = 1, text_len: int = 48,
                  batch: int = 1) -> dict[str, int]:
  """Matmul FLOPs (2 per multiply-add) of one forward pass.

  Attention scores and values count the full [S, S] square (no mask savings); the
  logits are computed for the text positions only, as VLA.__call__ does.
  """
  v, g = config.vision, config.llm
  p, w, m = v.num_patches, v.width, v.mlp_dim
  per_image = 2 * p * v.patch_size ** 2 * 3 * w
  per_image += v.depth * (2 * p * 4 * w * w + 2 * 2 * p * p * w + 2 * 2 * p * w * m)
  projector = 2 * p * w * g.width
  vision = num_images * (per_image + projector)
  s = num_images * p + text_len
  e, f, h, k, d = g.width, g.mlp_dim, g.num_heads, g.num_kv_heads, g.head_dim
  per_layer = (2 * s * e * (h + 2 * k) * d + 2 * s * h * d * e + 2 * 2 * s * s * h * d
               + 2 * 3 * s * e * f)
  llm = g.depth * per_layer + 2 * text_len * e * g.vocab_size
  return {"vision": batch * vision, "llm": batch * llm, "total": batch * (vision + llm)}


def decode_flops(config: VLAConfig, context_len: int) -> int:
  """Matmul FLOPs to decode one token with a KV cache holding context_len entries."""
  g = config.llm
  e, f, h, k, d = g.width, g.mlp_dim, g.num_heads, g.num_kv_heads, g.head_dim
  per_layer = (2 * e * (h + 2 * k) * d + 2 * h * d * e + 2 * 2 * (context_len + 1) * h * d
               + 2 * 3 * e * f)
  return g.depth * per_layer + 2 * e * g.vocab_size
