"""Greedy decoding: with the explicit KV cache (fast) and by full re-computation (reference).

Both take right-padded prompts of different lengths: every example continues after its
own last valid token. Each is compiled once per (config, num_steps, input shapes): the
jitted function is cached per (config, num_steps) and jax.jit caches per shape.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from vlax.models import gemma, vla
from vlax.models.config import VLAConfig
from vlax.models.vla import VLA

# Incremented at trace time: tests use it to check that a call does not retrace.
TRACE_COUNTS = {"greedy_decode": 0, "greedy_decode_recompute": 0}


def _argmax(logits: jax.Array) -> jax.Array:
  """First index of the maximum over the last axis, int32.

  Same result as jnp.argmax, written as max + masked min because XLA:CPU does not
  vectorize argmax's variadic reduce (it cost ~13% of decode time over a 1k vocab).
  """
  top = jnp.max(logits, axis=-1, keepdims=True)
  iota = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
  return jnp.min(jnp.where(logits == top, iota, logits.shape[-1]), axis=-1)


def _constrain(logits: jax.Array, allowed, t) -> jax.Array:
  """Logits [B, V] with the ids not allowed at step t set to the lowest value.

  allowed: (lo, hi int32 [B, S], extra int32 [B, S, E]): at step t example b may emit ids
  in [lo, hi) and the E ids extra[b, t] (-1 = none); None = every id.
  """
  if allowed is None:
    return logits
  lo, hi, extra = (jnp.take(a, t, axis=1) for a in allowed)
  ids = jax.lax.broadcasted_iota(jnp.int32, logits.shape, 1)
  ok = (ids >= lo[:, None]) & (ids < hi[:, None])
  for j in range(extra.shape[-1]):
    ok = ok | (ids == extra[:, j, None])
  return jnp.where(ok, logits, jnp.finfo(logits.dtype).min)


@functools.lru_cache(maxsize=32)
def _cached_greedy(config: VLAConfig, num_steps: int):
  model = VLA(config)

  @jax.jit
  def run(params, images, image_mask, tokens, input_mask, prefix_mask, weights,
          allowed=None):
    TRACE_COUNTS["greedy_decode"] += 1
    seq = images.shape[1] * config.vision.num_patches + tokens.shape[1]
    # Weights in matmul layout, one array per layer, and one cache array per layer, made
    # once: slicing the stacked layers inside the token loop copies them at every token.
    if weights is None:
      weights = gemma.decode_weights(params["llm"], config.llm, jnp.dtype(config.dtype))
    logits, cache = model.apply({"params": params}, weights, images, image_mask, tokens,
                                input_mask, prefix_mask, seq + num_steps,
                                method=VLA.prefill_layers)
    first = _argmax(_constrain(logits, allowed, 0))

    def step(carry, t):
      token, cache = carry
      logits, cache = vla.decode_step_layers(config, weights, token, cache)
      nxt = _argmax(_constrain(logits, allowed, t))
      return (nxt, cache), nxt

    _, rest = jax.lax.scan(step, (first, cache), jnp.arange(1, num_steps))
    return jnp.concatenate([first[:, None], rest.T], axis=1)

  return run


def greedy_decode(model: VLA, params, images, image_mask, tokens, input_mask, prefix_mask,
                  num_steps: int, weights=None, allowed=None) -> jax.Array:
  """Greedy tokens int32 [B, num_steps] after each example's prompt, using the KV cache.

  weights: optional `prepare_weights(model, params)`, for callers that decode many times
  with the same params; by default they are built inside every call.
  allowed: optional constrained decoding, (lo, hi int32 [B, num_steps], extra int32
  [B, num_steps, E]): step t of example b picks the best id in [lo, hi) or among
  extra[b, t] (-1 = unused); e.g. a robot prompt's action tokens then eos (RT-2 §3.2,
  `SequenceBuilder.action_grammar`).
  """
  if num_steps < 1:
    raise ValueError(f"num_steps must be >= 1, got {num_steps}")
  if allowed is not None:
    allowed = tuple(jnp.asarray(a, jnp.int32) for a in allowed)
    b = tokens.shape[0]
    if (allowed[0].shape != (b, num_steps) or allowed[1].shape != (b, num_steps)
        or allowed[2].shape[:2] != (b, num_steps)):
      raise ValueError(f"allowed must be ([{b}, {num_steps}], [{b}, {num_steps}], "
                       f"[{b}, {num_steps}, E]), got {[a.shape for a in allowed]}")
  fn = _cached_greedy(model.config, int(num_steps))
  return fn(params, images, image_mask, tokens, input_mask, prefix_mask, weights, allowed)


@functools.lru_cache(maxsize=32)
def _cached_prepare(config: VLAConfig):
  return jax.jit(lambda p: gemma.decode_weights(p["llm"], config.llm, jnp.dtype(config.dtype)))


def prepare_weights(model: VLA, params) -> dict:
  """The decoder weights as greedy_decode uses them (`gemma.decode_weights`), built once.

  Why: greedy_decode otherwise re-lays them out in every call, a fresh copy of the
  decoder layers (on CPU ~0.4 s per GB, mostly page faults of the new buffer); a robot
  loop that keeps this copy (as much memory as the decoder layers) skips that.
  """
  return _cached_prepare(model.config)(params)


@functools.lru_cache(maxsize=32)
def _cached_recompute(config: VLAConfig, num_steps: int):
  model = VLA(config)

  @jax.jit
  def run(params, images, image_mask, tokens, input_mask, prefix_mask):
    TRACE_COUNTS["greedy_decode_recompute"] += 1
    b, l = tokens.shape
    pad = ((0, 0), (0, num_steps))
    tokens = jnp.pad(tokens, pad)
    input_mask = jnp.pad(input_mask.astype(bool), pad)
    prefix_mask = jnp.pad(prefix_mask.astype(bool), pad)
    last = jnp.max(jnp.where(input_mask, jnp.arange(l + num_steps)[None], 0), axis=1)
    rows = jnp.arange(b)

    def step(t, carry):
      tokens, input_mask, prefix_mask, out = carry
      logits = model.apply({"params": params}, images, image_mask, tokens, input_mask, prefix_mask)
      nxt = _argmax(logits[rows, last + t])
      at = last + t + 1
      tokens = tokens.at[rows, at].set(nxt)
      input_mask = input_mask.at[rows, at].set(True)
      prefix_mask = prefix_mask.at[rows, at].set(False)
      return tokens, input_mask, prefix_mask, out.at[:, t].set(nxt)

    out = jnp.zeros((b, num_steps), jnp.int32)
    return jax.lax.fori_loop(0, num_steps, step, (tokens, input_mask, prefix_mask, out))[3]

  return run


def greedy_decode_recompute(model: VLA, params, images, image_mask, tokens, input_mask,
                            prefix_mask, num_steps: int) -> jax.Array:
  """Same tokens as greedy_decode, re-running the full forward pass for every new token."""
  if num_steps < 1:
    raise ValueError(f"num_steps must be >= 1, got {num_steps}")
  fn = _cached_recompute(model.config, int(num_steps))
  return fn(params, images, image_mask, tokens, input_mask, prefix_mask)
