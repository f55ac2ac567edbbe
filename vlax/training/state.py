"""TrainState: everything that changes during training, as one pytree."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp


class TrainState(flax.struct.PyTreeNode):
  """step: int32 scalar (optimizer steps done); params: float32 master params;
  opt_state: optax state; rng: raw uint32 key data (for dropout etc.), [2];
  ema_params: the params' exponential moving average (config.ema_decay > 0) or None."""
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
  ema_params: Any = None


def create(params: Any, tx, rng: jax.Array, step: int = 0, ema: bool = False) -> TrainState:
  """Fresh optimizer state around `params` (call under jit to get sharded outputs);
  `ema`: an EMA starting at the params (a copy: its own buffers)."""
  if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
    rng = jax.random.key_data(rng)
  return TrainState(step=jnp.asarray(step, jnp.int32), params=params,
                    opt_state=tx.init(params), rng=jnp.asarray(rng, jnp.uint32),
                    ema_params=jax.tree.map(jnp.copy, params) if ema else None)
