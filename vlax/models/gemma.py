"""Gemma decoder with big_vision parameter names, prefix-LM masks and an explicit KV cache.

Math follows HF transformers' Gemma: RMSNorm x * (1 + scale) in float32, half-split
RoPE, queries scaled by head_dim**-0.5, softmax in float32, GeGLU (tanh GELU), tied
output embedding with float32 logits.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlax.models.config import GemmaConfig
from vlax.models.siglip import remat_policy

Dtype = Any
_P = nn.with_logical_partitioning
_NEG = -2.3819763e38  # finite "minus infinity": masked rows stay NaN-free


def _fan_in_init(in_axis, out_axis, batch_axis=()):
  return nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=in_axis,
                                          out_axis=out_axis, batch_axis=batch_axis)


class RMSNorm(nn.Module):
  eps: float = 1e-6
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", _P(nn.initializers.zeros_init(), ("embed",)), (x.shape[-1],),
                       self.param_dtype)
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
    return (normed * (1.0 + scale.astype(jnp.float32))).astype(x.dtype)


class Einsum(nn.Module):
  """One weight `w` used in an einsum (big_vision Gemma naming)."""
  shape: tuple[int, ...]
  names: tuple[str | None, ...]
  init: Any
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, eqn, x):
    w = self.param("w", _P(self.init, self.names), self.shape, self.param_dtype)
    return jnp.einsum(eqn, jnp.asarray(x, self.dtype), jnp.asarray(w, self.dtype))


class Embedder(nn.Module):
  vocab_size: int
  width: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    init = nn.initializers.normal(stddev=self.width ** -0.5)
    self.input_embedding = self.param("input_embedding", _P(init, ("vocab", "embed")),
                                      (self.vocab_size, self.width), self.param_dtype)

  def encode(self, tokens):
    """Token ids -> embeddings scaled by sqrt(width), the normalizer cast to the compute dtype."""
    x = jnp.take(self.input_embedding, tokens, axis=0).astype(self.dtype)
    return x * jnp.sqrt(jnp.float32(self.width)).astype(self.dtype)

  def decode(self, x):
    """Tied output projection; logits in float32."""
    return jnp.einsum("...e,ve->...v", x, jnp.asarray(self.input_embedding, self.dtype),
                      preferred_element_type=jnp.float32)


def apply_rope(x, positions, theta):
  """Half-split RoPE (HF rotate_half). x [B, T, N, D], positions [B, T]."""
  d = x.shape[-1]
  inv_freq = 1.0 / (theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))
  freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, D/2]
  cos = jnp.cos(freqs)[:, :, None, :].astype(x.dtype)
  sin = jnp.sin(freqs)[:, :, None, :].astype(x.dtype)
  x1, x2 = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


class Attention(nn.Module):
  config: GemmaConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, positions, attn_mask, kv_cache=None, cache_index=None):
    """x [B, T, E]; attn_mask [B, T, S] (S = T, or the cache length when kv_cache is given).

    With kv_cache=(k, v) [B, S, K, Dh], the T new keys/values are written at cache_index
    and the queries attend over the whole cache; the updated cache is returned.
    """
    c = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h, k_heads, d, e = c.num_heads, c.num_kv_heads, c.head_dim, c.width
    q = Einsum((h, e, d), ("heads", "embed", "head_dim"), _fan_in_init(1, 2, 0), name="q_einsum",
               **kw)("bte,hed->bthd", x)
    kv = Einsum((2, k_heads, e, d), (None, "kv_heads", "embed", "head_dim"),
                _fan_in_init(2, 3, (0, 1)), name="kv_einsum", **kw)("bte,cked->cbtkd", x)
    k, v = kv[0], kv[1]
    q = apply_rope(q, positions, c.rope_theta)
    k = apply_rope(k, positions, c.rope_theta)
    q = nn.with_logical_constraint(q, ("batch", "act_length", "act_heads", "act_head_dim"))
    k = nn.with_logical_constraint(k, ("batch", "act_length", "act_kv_heads", "act_head_dim"))
    v = nn.with_logical_constraint(v, ("batch", "act_length", "act_kv_heads", "act_head_dim"))
    new_cache = None
    if kv_cache is not None:
      k_cache, v_cache = kv_cache
      start = (0, cache_index, 0, 0)
      k = jax.lax.dynamic_update_slice(k_cache, k.astype(k_cache.dtype), start)
      v = jax.lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype), start)
      new_cache = (k, v)
    b, t = q.shape[:2]
    q = q.reshape(b, t, k_heads, h // k_heads, d)
    logits = jnp.einsum("btkgd,bskd->bkgts", q, k.astype(self.dtype)).astype(jnp.float32)
    logits = logits * (d ** -0.5)
    logits = jnp.where(attn_mask[:, None, None, :, :], logits, _NEG)
    probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v.astype(self.dtype)).reshape(b, t, h, d)
    out = nn.with_logical_constraint(out, ("batch", "act_length", "act_heads", "act_head_dim"))
    out = Einsum((h, d, e), ("heads", "head_dim", "embed"), _fan_in_init((0, 1), 2),
                 name="attn_vec_einsum", **kw)("bthd,hde->bte", out)
    return out, new_cache


class FeedForward(nn.Module):
  """GeGLU: gelu_tanh(x W_gate) * (x W_up), then W_down (gating_einsum[0] is the gate)."""
  width: int
  mlp_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    w_gating = self.param("gating_einsum", _P(_fan_in_init(1, 2, 0), (None, "embed", "mlp")),
                          (2, self.width, self.mlp_dim), self.param_dtype)
    w_linear = self.param("linear", _P(_fan_in_init(0, 1), ("mlp", "embed")),
                          (self.mlp_dim, self.width), self.param_dtype)
    x = jnp.asarray(x, self.dtype)
    w_gating = jnp.asarray(w_gating, self.dtype)
    gate = nn.gelu(jnp.einsum("bte,ef->btf", x, w_gating[0]), approximate=True)
    hidden = gate * jnp.einsum("bte,ef->btf", x, w_gating[1])
    hidden = nn.with_logical_constraint(hidden, ("batch", "act_length", "act_mlp"))
    return jnp.einsum("btf,fe->bte", hidden, jnp.asarray(w_linear, self.dtype))


class Block(nn.Module):
  """Pre-norm decoder block; (x, per-layer cache or None) -> (x, updated cache or None)."""
  config: GemmaConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, positions, attn_mask, cache_index, kv_cache):
    c = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    act = ("batch", "act_length", "act_embed")
    x = nn.with_logical_constraint(x, act)
    y = RMSNorm(c.rms_norm_eps, self.param_dtype, name="pre_attention_norm")(x)
    y, new_cache = Attention(c, name="attn", **kw)(y, positions, attn_mask, kv_cache, cache_index)
    x = x + y
    y = RMSNorm(c.rms_norm_eps, self.param_dtype, name="pre_ffw_norm")(x)
    y = FeedForward(c.width, c.mlp_dim, name="mlp", **kw)(y)
    x = nn.with_logical_constraint(x + y, act)
    return x, new_cache


class Gemma(nn.Module):
  """Decoder over [prefix embeddings (images), embedded text tokens]."""
  config: GemmaConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  remat: bool = False
  remat_policy: str = "nothing_saveable"

  @nn.compact
  def __call__(self, tokens, prefix_embeds, positions, attn_mask, kv_cache=None, cache_index=None,
               logits_index=None):
    """Returns (logits, kv_cache).

    tokens [B, L]; prefix_embeds [B, P, E] or None; positions [B, P + L]; attn_mask
    [B, P + L, S]. kv_cache: None (no cache) or (k, v), each [layers, B, S, K, Dh].
    logits: [B, L, V] for the text positions, or [B, V] at sequence index logits_index [B].
    """
    c = self.config
    embedder = Embedder(c.vocab_size, c.width, self.dtype, self.param_dtype, name="embedder")
    x = embedder.encode(tokens)
    num_prefix = 0
    if prefix_embeds is not None:
      num_prefix = prefix_embeds.shape[1]
      x = jnp.concatenate([prefix_embeds.astype(self.dtype), x], axis=1)
    x = nn.with_logical_constraint(x, ("batch", "act_length", "act_embed"))
    block = Block
    if self.remat:
      block = nn.remat(block, prevent_cse=False, policy=remat_policy(self.remat_policy))
    stack = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                    in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, 0), length=c.depth,
                    metadata_params={nn.PARTITION_NAME: "layers"})
    x, kv_cache = stack(c, self.dtype, self.param_dtype, name="layers")(
        x, positions, attn_mask, cache_index, kv_cache)
    x = RMSNorm(c.rms_norm_eps, self.param_dtype, name="final_norm")(x)
    if logits_index is None:
      x = x[:, num_prefix:]
    else:
      x = jnp.take_along_axis(x, logits_index[:, None, None], axis=1)[:, 0]
    logits = embedder.decode(x)
    if logits_index is None:
      logits = nn.with_logical_constraint(logits, ("batch", "act_length", "act_vocab"))
    return logits, kv_cache
