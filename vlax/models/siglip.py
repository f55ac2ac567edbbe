"""SigLIP ViT image encoder with big_vision parameter names and logical axis names.

Each camera image becomes its own block of num_patches tokens; the linear projector
(`head`) maps them into the decoder width.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlax.models.config import SigLIPConfig

Dtype = Any
_P = nn.with_logical_partitioning


def remat_policy(name: str):
  return getattr(jax.checkpoint_policies, name)


class Proj(nn.Module):
  """Biased multi-axis linear map, x[..., in] -> y[..., out] (big_vision DenseGeneral names)."""
  in_shape: tuple[int, ...]
  out_shape: tuple[int, ...]
  names: tuple[str | None, ...]
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    n_in = len(self.in_shape)
    fan_in_axes = tuple(range(n_in))
    out_axes = tuple(range(n_in, n_in + len(self.out_shape)))
    init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal",
                                            in_axis=fan_in_axes, out_axis=out_axes)
    kernel = self.param("kernel", _P(init, self.names), self.in_shape + self.out_shape,
                        self.param_dtype)
    bias = self.param("bias", _P(nn.initializers.zeros_init(), self.names[n_in:]),
                      self.out_shape, self.param_dtype)
    x = jnp.asarray(x, self.dtype)
    y = jax.lax.dot_general(x, jnp.asarray(kernel, self.dtype),
                            ((tuple(range(x.ndim - n_in, x.ndim)), fan_in_axes), ((), ())))
    return y + jnp.asarray(bias, self.dtype)


class MultiHeadDotProductAttention(nn.Module):
  """Bidirectional biased MHA (SigLIP); softmax in float32 like HF/big_vision."""
  num_heads: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    w = x.shape[-1]
    hd = w // self.num_heads
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    qkv_names = ("vit_embed", "vit_heads", "vit_head_dim")
    q = Proj((w,), (self.num_heads, hd), qkv_names, name="query", **kw)(x)
    k = Proj((w,), (self.num_heads, hd), qkv_names, name="key", **kw)(x)
    v = Proj((w,), (self.num_heads, hd), qkv_names, name="value", **kw)(x)
    q = nn.with_logical_constraint(q, ("batch", "act_length", "act_heads", "act_head_dim"))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) * (hd ** -0.5)
    probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
    out = nn.with_logical_constraint(out, ("batch", "act_length", "act_heads", "act_head_dim"))
    return Proj((self.num_heads, hd), (w,), ("vit_heads", "vit_head_dim", "vit_embed"),
                name="out", **kw)(out)


class MlpBlock(nn.Module):
  mlp_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    w = x.shape[-1]
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    init = nn.initializers.xavier_uniform()
    bias_init = nn.initializers.normal(stddev=1e-6)
    x = nn.Dense(self.mlp_dim, kernel_init=_P(init, ("vit_embed", "vit_mlp")),
                 bias_init=_P(bias_init, ("vit_mlp",)), **kw)(x)
    x = nn.gelu(x, approximate=True)
    x = nn.with_logical_constraint(x, ("batch", "act_length", "act_mlp"))
    return nn.Dense(w, kernel_init=_P(init, ("vit_mlp", "vit_embed")),
                    bias_init=_P(bias_init, ("vit_embed",)), **kw)(x)


def _layer_norm(eps, dtype, param_dtype, name=None):
  return nn.LayerNorm(epsilon=eps, dtype=dtype, param_dtype=param_dtype, name=name,
                      scale_init=_P(nn.initializers.ones_init(), ("vit_embed",)),
                      bias_init=_P(nn.initializers.zeros_init(), ("vit_embed",)))


class Encoder1DBlock(nn.Module):
  """Pre-LN transformer block; returns (x, None) so nn.scan can stack it."""
  config: SigLIPConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, _=None):
    c = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    act = ("batch", "act_length", "act_embed")
    x = nn.with_logical_constraint(x, act)
    y = _layer_norm(c.layer_norm_eps, **kw)(x)
    y = MultiHeadDotProductAttention(c.num_heads, **kw)(y)
    x = x + y
    y = _layer_norm(c.layer_norm_eps, **kw)(x)
    y = MlpBlock(c.mlp_dim, **kw)(y)
    x = nn.with_logical_constraint(x + y, act)
    return x, None


class Encoder(nn.Module):
  config: SigLIPConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  remat: bool = False
  remat_policy: str = "nothing_saveable"
  scan_unroll: int | bool = True

  @nn.compact
  def __call__(self, x):
    block = Encoder1DBlock
    if self.remat:
      block = nn.remat(block, prevent_cse=False, policy=remat_policy(self.remat_policy))
    stack = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                    in_axes=nn.broadcast, length=self.config.depth,
                    unroll=self.scan_unroll, metadata_params={nn.PARTITION_NAME: "layers"})
    x, _ = stack(self.config, dtype=self.dtype, param_dtype=self.param_dtype,
                 name="encoderblock")(x, None)
    return _layer_norm(self.config.layer_norm_eps, self.dtype, self.param_dtype,
                       name="encoder_norm")(x)


class SigLIP(nn.Module):
  """images [B, N, H, W, 3] in [-1, 1] -> tokens [B, N * num_patches, out_width]."""
  config: SigLIPConfig
  out_width: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  remat: bool = False
  remat_policy: str = "nothing_saveable"
  scan_unroll: int | bool = True

  @nn.compact
  def __call__(self, images):
    c = self.config
    b, n, h, w, ch = images.shape
    if (h, w, ch) != (c.image_size, c.image_size, 3):
      raise ValueError(f"images must be [B, N, {c.image_size}, {c.image_size}, 3], "
                       f"got {images.shape}")
    x = jnp.asarray(images, self.dtype).reshape(b * n, h, w, ch)
    patch = c.patch_size
    if c.stem == "conv":
      x = self._conv_stem(x)
      patch = 1  # the stem already reduced the image to the patch grid
    x = nn.Conv(c.width, (patch, patch), strides=(patch, patch),
                padding="VALID", dtype=self.dtype, param_dtype=self.param_dtype,
                kernel_init=_P(nn.initializers.lecun_normal(), (None, None, None, "vit_embed")),
                bias_init=_P(nn.initializers.zeros_init(), ("vit_embed",)), name="embedding")(x)
    x = x.reshape(b * n, -1, c.width)
    pos_init = _P(nn.initializers.normal(stddev=c.width ** -0.5),
                  (None, "vit_patches", "vit_embed"))
    pos = self.param("pos_embedding", pos_init, (1, c.num_patches, c.width), self.param_dtype)
    x = x + jnp.asarray(pos, self.dtype)
    x = Encoder(c, self.dtype, self.param_dtype, self.remat, self.remat_policy,
                self.scan_unroll, name="Transformer")(x)
    x = nn.Dense(self.out_width, dtype=self.dtype, param_dtype=self.param_dtype,
                 kernel_init=_P(nn.initializers.lecun_normal(), ("vit_embed", "embed")),
                 bias_init=_P(nn.initializers.zeros_init(), ("embed",)), name="head")(x)
    x = x.reshape(b, n * c.num_patches, self.out_width)
    return nn.with_logical_constraint(x, ("batch", "act_length", "act_embed"))

  def _conv_stem(self, x):
    """log2(patch_size) x (3x3 conv, stride 2, GroupNorm, ReLU); 32, 64, ... channels."""
    c = self.config
    for i in range(int(c.patch_size).bit_length() - 1):
      ch = min(c.width, 32 * 2 ** i)
      x = nn.Conv(ch, (3, 3), strides=(2, 2), padding="SAME", dtype=self.dtype,
                  param_dtype=self.param_dtype, name=f"stem_conv{i}")(x)
      x = nn.GroupNorm(num_groups=min(8, ch), dtype=self.dtype,
                       param_dtype=self.param_dtype, name=f"stem_norm{i}")(x)
      x = nn.relu(x)
    return x
