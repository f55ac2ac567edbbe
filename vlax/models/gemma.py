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
    return rms_norm(x, scale, self.eps)


def rms_norm(x, scale, eps):
  """Gemma RMSNorm x * (1 + scale), computed in float32, returned in x's dtype."""
  x32 = x.astype(jnp.float32)
  normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)
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
    return embed_tokens(self.input_embedding, tokens, self.dtype)

  def decode(self, x):
    return embed_logits(self.input_embedding, x, self.dtype)


def embed_tokens(table, tokens, dtype):
  """Token ids -> embeddings scaled by sqrt(width), the normalizer cast to the compute dtype."""
  x = jnp.take(table, tokens, axis=0).astype(dtype)
  return x * jnp.sqrt(jnp.float32(table.shape[-1])).astype(dtype)


def embed_logits(table, x, dtype):
  """Tied output projection; logits in float32."""
  return jnp.einsum("...e,ve->...v", x, jnp.asarray(table, dtype),
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
  def __call__(self, x, positions, attn_mask):
    """x [B, T, E]; attn_mask [B, T, T]. (Cached decoding: `cached_layers`.)"""
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
    out = attend(q, k, v, attn_mask, self.dtype)
    out = nn.with_logical_constraint(out, ("batch", "act_length", "act_heads", "act_head_dim"))
    return Einsum((h, d, e), ("heads", "head_dim", "embed"), _fan_in_init((0, 1), 2),
                  name="attn_vec_einsum", **kw)("bthd,hde->bte", out)


def attend(q, k, v, attn_mask, dtype):
  """Grouped-query attention: q [B, T, H, D], k/v [B, S, K, D], attn_mask [B, T, S].

  Scores and softmax in float32; returns [B, T, H, D] in dtype.
  """
  b, t, h, d = q.shape
  k_heads = k.shape[2]
  q = q.reshape(b, t, k_heads, h // k_heads, d)
  logits = jnp.einsum("btkgd,bskd->bkgts", q, k.astype(dtype)).astype(jnp.float32)
  logits = logits * (d ** -0.5)
  logits = jnp.where(attn_mask[:, None, None, :, :], logits, _NEG)
  probs = jax.nn.softmax(logits, axis=-1).astype(dtype)
  return jnp.einsum("bkgts,bskd->btkgd", probs, v.astype(dtype)).reshape(b, t, h, d)


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
  """Pre-norm decoder block; returns (x, None) so nn.scan can stack it."""
  config: GemmaConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, positions, attn_mask):
    c = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    act = ("batch", "act_length", "act_embed")
    x = nn.with_logical_constraint(x, act)
    y = RMSNorm(c.rms_norm_eps, self.param_dtype, name="pre_attention_norm")(x)
    x = x + Attention(c, name="attn", **kw)(y, positions, attn_mask)
    y = RMSNorm(c.rms_norm_eps, self.param_dtype, name="pre_ffw_norm")(x)
    y = FeedForward(c.width, c.mlp_dim, name="mlp", **kw)(y)
    x = nn.with_logical_constraint(x + y, act)
    return x, None


class Gemma(nn.Module):
  """Decoder over [prefix embeddings (images), embedded text tokens], without a cache.

  Training and full re-computation use it; KV-cache prefill and decoding run the same
  math on `decode_weights` (`cached_layers`).
  """
  config: GemmaConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  remat: bool = False
  remat_policy: str = "nothing_saveable"
  scan_unroll: int | bool = True

  @nn.compact
  def __call__(self, tokens, prefix_embeds, positions, attn_mask):
    """Logits float32 [B, L, V] for the text positions.

    tokens [B, L]; prefix_embeds [B, P, E] or None; positions [B, P + L]; attn_mask
    [B, P + L, P + L].
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
                    in_axes=nn.broadcast, length=c.depth, unroll=self.scan_unroll,
                    metadata_params={nn.PARTITION_NAME: "layers"})
    x, _ = stack(c, self.dtype, self.param_dtype, name="layers")(x, positions, attn_mask)
    x = RMSNorm(c.rms_norm_eps, self.param_dtype, name="final_norm")(x)
    logits = embedder.decode(x[:, num_prefix:])
    return nn.with_logical_constraint(logits, ("batch", "act_length", "act_vocab"))


# KV-cache prefill and decoding on pre-laid-out weights (VLA.prefill / decode_step).


def decode_weights(params, config: GemmaConfig, dtype: Dtype) -> dict[str, Any]:
  """The decoder's params (`params['llm']`) re-laid out for cached prefill and decoding.

  Why: a token loop over the stacked [L, ...] params makes XLA:CPU copy every layer's
  slice out of the stack (and transpose the einsum weights to [in, out]) at every token,
  ~60% of decode time; a layer scan over the stacked weights copies the same way. Built
  once, outside the loop, each layer gets its own arrays in matmul layout and the compute
  dtype: q [E, H*Dh], kv [E, 2*K*Dh], o [H*Dh, E], gate, up [E, F], linear [F, E]. Only
  q and kv are transposed (XLA:CPU transposes far slower than it slices). Costs one copy
  of the decoder's layer weights while decoding.
  """
  c = config
  h, k, d, e, f, n = (c.num_heads, c.num_kv_heads, c.head_dim, c.width, c.mlp_dim, c.depth)
  lp = params["layers"]
  cast = lambda x: jnp.asarray(x, dtype)
  q = cast(lp["attn"]["q_einsum"]["w"]).transpose(0, 2, 1, 3).reshape(n, e, h * d)
  kv = cast(lp["attn"]["kv_einsum"]["w"]).transpose(0, 3, 1, 2, 4).reshape(n, e, 2 * k * d)
  o = cast(lp["attn"]["attn_vec_einsum"]["w"]).reshape(n, h * d, e)
  gating = cast(lp["mlp"]["gating_einsum"])
  linear = cast(lp["mlp"]["linear"])
  layers = [{"attn_norm": lp["pre_attention_norm"]["scale"][i], "q": q[i], "kv": kv[i],
             "o": o[i], "ffw_norm": lp["pre_ffw_norm"]["scale"][i], "gate": gating[i, 0],
             "up": gating[i, 1], "linear": linear[i]} for i in range(n)]
  return {"embedding": cast(params["embedder"]["input_embedding"]),
          "final_norm": params["final_norm"]["scale"], "layers": layers}


def cached_layers(weights, config: GemmaConfig, dtype: Dtype, x, positions, attn_mask,
                  cache_index, caches):
  """x [B, T, E] through all decoder layers and the final norm, with a KV cache.

  Same math as Gemma.__call__. weights: from decode_weights; positions [B, T]; caches:
  per layer (k, v) [B, S, K, Dh]. The T new keys/values are written at cache_index and
  the queries attend over the whole cache under attn_mask [B, T, S].
  Returns (x [B, T, E], caches).
  """
  c = config
  b, t = x.shape[:2]
  h, k_heads, d = c.num_heads, c.num_kv_heads, c.head_dim
  start = (0, cache_index, 0, 0)
  new_caches = []
  # A Python loop (not a scan) so that each layer's weights are used in place.
  for w, (k_cache, v_cache) in zip(weights["layers"], caches):
    y = rms_norm(x, w["attn_norm"], c.rms_norm_eps)
    q = apply_rope(jnp.dot(y, w["q"]).reshape(b, t, h, d), positions, c.rope_theta)
    kv = jnp.dot(y, w["kv"]).reshape(b, t, 2, k_heads, d)
    k = apply_rope(kv[:, :, 0], positions, c.rope_theta)
    k_cache = jax.lax.dynamic_update_slice(k_cache, k.astype(k_cache.dtype), start)
    v_cache = jax.lax.dynamic_update_slice(v_cache, kv[:, :, 1].astype(v_cache.dtype), start)
    new_caches.append((k_cache, v_cache))
    out = attend(q, k_cache, v_cache, attn_mask, dtype)
    x = x + jnp.dot(out.reshape(b, t, h * d), w["o"])
    y = rms_norm(x, w["ffw_norm"], c.rms_norm_eps)
    gate = nn.gelu(jnp.dot(y, w["gate"]), approximate=True)
    x = x + jnp.dot(gate * jnp.dot(y, w["up"]), w["linear"])
  return rms_norm(x, weights["final_norm"], c.rms_norm_eps), tuple(new_caches)
