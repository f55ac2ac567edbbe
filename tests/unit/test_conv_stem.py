"""The optional convolutional stem of the ViT (`vision.stem=conv`): same token grid as the
linear patches, its own parameters, the default unchanged (PaliGemma weights)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from vlax.errors import VlaxError
from vlax.models.config import SigLIPConfig
from vlax.models.siglip import SigLIP


def _init(stem: str, patch: int = 16):
  c = SigLIPConfig(image_size=64, patch_size=patch, width=32, depth=1, mlp_dim=64,
                   num_heads=2, stem=stem)
  m = SigLIP(c, out_width=24)
  x = jax.random.uniform(jax.random.PRNGKey(1), (2, 2, 64, 64, 3), minval=-1, maxval=1)
  v = m.init(jax.random.PRNGKey(0), x)
  return c, m.apply(v, x), nn.unbox(v["params"])


def test_conv_stem_keeps_the_token_grid():
  c, patch_out, patch_params = _init("patch")
  _, conv_out, conv_params = _init("conv")
  assert conv_out.shape == patch_out.shape == (2, 2 * c.num_patches, 24)
  assert bool(jnp.all(jnp.isfinite(conv_out)))
  assert [k for k in conv_params if k.startswith("stem_conv")] == [
      "stem_conv0", "stem_conv1", "stem_conv2", "stem_conv3"]  # 64 px -> 4 x 4
  assert not any(k.startswith("stem") for k in patch_params)
  assert patch_params["embedding"]["kernel"].shape == (16, 16, 3, 32)
  assert conv_params["embedding"]["kernel"].shape == (1, 1, 32, 32)


def test_stem_validation():
  assert SigLIPConfig().stem == "patch"  # released weights keep SigLIP's patches
  with pytest.raises(VlaxError, match="stem"):
    SigLIPConfig(stem="resnet")
  with pytest.raises(VlaxError, match="power-of-two"):
    SigLIPConfig(patch_size=14, stem="conv")
