"""The assembled VLA policy: SigLIP image tokens + text tokens through a prefix-LM Gemma.

Why Flax linen (not NNX): the decoder and the ViT stack their layers with `nn.scan`
(one compiled block, params stacked on a leading 'layers' axis), which gives exactly
big_vision's PaliGemma parameter tree (so released weights load without renaming), and
linen's mature `nn.with_logical_partitioning` / `nn.logical_to_mesh_sharding` carry the
MaxText-style logical axis names from which `vlax.models.sharding` derives the mesh
shardings.

Sequence = [N cameras x num_patches image tokens] + [L text tokens]. Image tokens are
always prefix. Attention (big_vision prefix-LM rule): a query attends to every valid
prefix token and to valid non-prefix tokens at or before it. RoPE positions are
cumsum(valid) - 1 over the whole sequence, so missing cameras and padding do not shift
later positions (RoPE is relative, so this equals HF's 1-based arange for right-padded
inputs with all cameras present).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlax.errors import VlaxError
from vlax.models.config import VLAConfig
from vlax.models.gemma import (Gemma, cached_layers, decode_weights, embed_logits,
                               embed_tokens)
from vlax.models.siglip import SigLIP

Cache = dict[str, Any]


def prefix_lm_mask(valid, prefix):
  """[B, S] bool x2 -> [B, S, S]: query i sees key j iff valid[j] and (prefix[j] or j <= i)."""
  s = valid.shape[1]
  causal = jnp.arange(s)[:, None] >= jnp.arange(s)[None, :]
  return valid[:, None, :] & (prefix[:, None, :] | causal[None])


class VLA(nn.Module):
  """PaliGemma-architecture policy. See the module docstring for the sequence layout."""
  config: VLAConfig

  def setup(self):
    c = self.config
    dtype, param_dtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
    self.img = SigLIP(c.vision, c.llm.width, dtype, param_dtype, c.remat, c.remat_policy,
                      c.scan_unroll)
    self.llm = Gemma(c.llm, dtype, param_dtype, c.remat, c.remat_policy, c.scan_unroll)

  def _prefix(self, images, image_mask, tokens, input_mask, prefix_mask):
    """Image embeddings, and the validity / prefix flags and positions of the full sequence."""
    check_inputs(self.config, images, image_mask, tokens, input_mask, prefix_mask)
    b, n = images.shape[:2]
    if n:
      img = self.img(images)
    else:  # no cameras (a state-only policy): no image tokens. The tower still runs on a
      # dummy image whose tokens are cut away, so the param tree is the same whatever the
      # camera count (checkpoints, init_from, Policy); XLA drops the dead computation.
      img = self.img(jnp.zeros((b, 1) + tuple(images.shape[2:]), images.dtype))[:, :0]
    p = self.config.vision.num_patches
    img_valid = jnp.repeat(image_mask.astype(bool), p, axis=1)
    valid = jnp.concatenate([img_valid, input_mask.astype(bool)], axis=1)
    prefix = jnp.concatenate([jnp.ones((b, n * p), bool), prefix_mask.astype(bool)], axis=1)
    positions = jnp.cumsum(valid.astype(jnp.int32), axis=1) - 1
    return img, valid, prefix, positions

  def __call__(self, images, image_mask, tokens, input_mask, prefix_mask):
    """Logits float32 [B, L, vocab] for the text positions (position i predicts token i+1)."""
    img, valid, prefix, positions = self._prefix(images, image_mask, tokens, input_mask,
                                                 prefix_mask)
    return self.llm(tokens, img, positions, prefix_lm_mask(valid, prefix))

  def prefill(self, images, image_mask, tokens, input_mask, prefix_mask, cache_size: int):
    """Runs images + prompt once: (logits [B, V] at each example's last valid token, cache).

    cache: {'k', 'v': [layers, B, cache_size, K, Dh] (compute dtype), 'mask': bool [B,
    cache_size] (valid keys), 'index': int32 [] (next write slot), 'position': int32 [B]
    (next RoPE position)}. Right padding inside the prompt stays as masked holes.
    """
    logits, cache = self.prefill_layers(self._decode_weights(), images, image_mask, tokens,
                                        input_mask, prefix_mask, cache_size)
    return logits, stack_layers(cache)

  def decode_step(self, tokens, cache: Cache):
    """Appends one (causal) token per example: tokens int32 [B] -> (logits [B, V], cache).

    Re-lays out the decoder weights on every call: a token loop should build them once
    (`gemma.decode_weights`) and call `decode_step_layers`, as greedy_decode does.
    """
    logits, cache = decode_step_layers(self.config, self._decode_weights(), tokens,
                                       unstack_layers(cache))
    return logits, stack_layers(cache)

  def prefill_layers(self, weights, images, image_mask, tokens, input_mask, prefix_mask,
                     cache_size: int):
    """VLA.prefill on `gemma.decode_weights`, returning the per-layer cache form.

    (Per-layer cache: 'k' and 'v' are tuples of [B, cache_size, K, Dh] arrays, one per
    layer, so that a token loop updates each in place; see decode_step_layers.)
    """
    img, valid, prefix, positions = self._prefix(images, image_mask, tokens, input_mask,
                                                 prefix_mask)
    b, s = valid.shape
    if cache_size < s:
      raise ValueError(f"cache_size {cache_size} is smaller than the prompt sequence {s}")
    g = self.config.llm
    dtype = jnp.dtype(self.config.dtype)
    shape = (b, cache_size, g.num_kv_heads, g.head_dim)
    caches = tuple((jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(g.depth))
    mask = jnp.pad(prefix_lm_mask(valid, prefix), ((0, 0), (0, 0), (0, cache_size - s)))
    x = jnp.concatenate([img.astype(dtype), embed_tokens(weights["embedding"], tokens, dtype)],
                        axis=1)
    x, caches = cached_layers(weights, g, dtype, x, positions, mask, 0, caches)
    last = jnp.max(jnp.where(valid, jnp.arange(s)[None], 0), axis=1)
    x = jnp.take_along_axis(x, last[:, None, None], axis=1)[:, 0]
    cache = {"k": tuple(k for k, _ in caches), "v": tuple(v for _, v in caches),
             "mask": jnp.pad(valid, ((0, 0), (0, cache_size - s))),
             "index": jnp.asarray(s, jnp.int32),
             "position": jnp.sum(valid, axis=1).astype(jnp.int32)}
    return embed_logits(weights["embedding"], x, dtype), cache

  def _decode_weights(self):
    return decode_weights(self.variables["params"]["llm"], self.config.llm,
                          jnp.dtype(self.config.dtype))


def decode_step_layers(config: VLAConfig, weights, tokens, cache: Cache):
  """VLA.decode_step on `gemma.decode_weights` and a per-layer cache (see prefill_layers)."""
  b = tokens.shape[0]
  dtype = jnp.dtype(config.dtype)
  idx = cache["index"]
  mask = jax.lax.dynamic_update_slice(cache["mask"], jnp.ones((b, 1), bool), (0, idx))
  x = embed_tokens(weights["embedding"], tokens[:, None], dtype)
  x, caches = cached_layers(weights, config.llm, dtype, x, cache["position"][:, None],
                            mask[:, None, :], idx, tuple(zip(cache["k"], cache["v"])))
  logits = embed_logits(weights["embedding"], x[:, 0], dtype)
  return logits, {"k": tuple(k for k, _ in caches), "v": tuple(v for _, v in caches),
                  "mask": mask, "index": idx + 1, "position": cache["position"] + 1}


def unstack_layers(cache: Cache) -> Cache:
  """Stacked cache (k, v [layers, ...]) -> per-layer form (tuples of [B, S, K, Dh])."""
  n = cache["k"].shape[0]
  return dict(cache, k=tuple(cache["k"][i] for i in range(n)),
              v=tuple(cache["v"][i] for i in range(n)))


def stack_layers(cache: Cache) -> Cache:
  """Per-layer cache -> the stacked form of VLA.prefill / decode_step."""
  return dict(cache, k=jnp.stack(cache["k"]), v=jnp.stack(cache["v"]))


def check_inputs(config: VLAConfig, images, image_mask, tokens, input_mask,
                 prefix_mask) -> None:
  """Static shape checks; raises VlaxError naming the offending input."""
  s = config.vision.image_size
  if images.ndim != 5 or tuple(images.shape[2:]) != (s, s, 3):
    raise VlaxError(f"images must be [B, N, {s}, {s}, 3], got {tuple(images.shape)}")
  b, n = images.shape[:2]
  if tuple(image_mask.shape) != (b, n):
    raise VlaxError(f"image_mask must be [B, N] = {(b, n)}, got {tuple(image_mask.shape)}")
  if tokens.ndim != 2 or tokens.shape[0] != b:
    raise VlaxError(f"tokens must be [B={b}, L], got {tuple(tokens.shape)}")
  for name, m in (("input_mask", input_mask), ("prefix_mask", prefix_mask)):
    if tuple(m.shape) != tuple(tokens.shape):
      raise VlaxError(f"{name} must have the shape of tokens {tuple(tokens.shape)}, "
                      f"got {tuple(m.shape)}")


def example_inputs(config: VLAConfig, batch: int = 1, num_images: int = 1, text_len: int = 8):
  """Zero inputs with the right shapes/dtypes (for init and eval_shape)."""
  s = config.vision.image_size
  return (jnp.zeros((batch, num_images, s, s, 3), jnp.float32),
          jnp.ones((batch, num_images), bool),
          jnp.zeros((batch, text_len), jnp.int32),
          jnp.ones((batch, text_len), bool),
          jnp.ones((batch, text_len), bool))


def init_params(model: VLA, rng: jax.Array, inputs=None):
  """Plain (unboxed) float params; inputs default to example_inputs(model.config)."""
  inputs = example_inputs(model.config) if inputs is None else inputs
  return jax.jit(lambda r: nn.unbox(model.init(r, *inputs)["params"]))(rng)
