"""The train step (one jitted function) and the eval step.

Shapes of the step:
  state (TrainState, donated, sharded like `setup.state_shardings`) +
  batch (a `Batch` of global jax.Arrays sharded over (data, fsdp))
  -> new state (same shardings) + metrics (replicated small arrays).

Gradient accumulation scans over `grad_accum_steps` microbatches inside the step: the
loss is the sum of token CEs divided by the number of target tokens of the *whole*
batch, so k microbatches give the same gradient as one big batch. Frozen params are
cut out of the graph (stop_gradient) and copied through unchanged.

LoRA (`lora_scale` set): the params hold adapters beside frozen base weights; the step
folds them into the base weights (`vlax.models.lora.merge`) inside the differentiated
function, so gradients reach only the adapters and the model code knows nothing of LoRA.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vlax.models import lora as lora_lib
from vlax.models.batch import Batch
from vlax.training import loss as loss_lib
from vlax.training import mesh as mesh_lib
from vlax.training.state import TrainState


def batch_shardings(mesh: Mesh, example: Batch) -> Batch:
  """The example's structure (absent optional fields stay None) with every array sharded
  over the batch axes."""
  sh = mesh_lib.batch_sharding(mesh)
  return jax.tree.map(lambda _: sh, example)


def _model_logits(model: nn.Module, params, batch: Batch, lora_scale: float | None = None):
  if lora_scale is not None:
    params = lora_lib.merge(params, lora_scale)
  return model.apply({"params": params}, *batch.inputs.args())


def _split_microbatches(batch: Batch, k: int, mesh: Mesh | None) -> Batch:
  """[B, ...] -> [k, B/k, ...], microbatch j = rows j, j+k, ... so that every
  microbatch keeps an even split over the batch shards."""

  def split(x):
    b = x.shape[0]
    y = jnp.swapaxes(x.reshape((b // k, k) + x.shape[1:]), 0, 1)
    if mesh is not None:
      y = jax.lax.with_sharding_constraint(
          y, NamedSharding(mesh, P(None, mesh_lib.BATCH_AXES)))
    return y

  return jax.tree.map(split, batch)


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    schedule: Callable, frozen: Any, *, num_datasets: int,
                    grad_accum_steps: int = 1, mesh: Mesh | None = None,
                    lora_scale: float | None = None,
                    grad_shardings: Any = None, ema_decay: float = 0.0,
                    label_smoothing: float = 0.0,
                    action_range: tuple[int, int] | None = None) -> Callable:
  """Returns step(state, batch: Batch) -> (state, metrics) (not jitted; see
  `jit_train_step`).

  grad_shardings: the params' shardings. The gradients are pinned to them, so each
  gradient is reduced straight into its FSDP shard whatever sharding propagation would
  pick for it (the optimizer update then never sees a full-size gradient).
  ema_decay > 0: state.ema_params becomes d * ema + (1 - d) * new params (frozen params
  are copied through, so their EMA stays bit-equal to them).
  label_smoothing > 0: Gaussian label smoothing over the action bins `action_range`
  (config.loss.action_label_smoothing; see loss.loss_sums), in this loss only.

  metrics = {"sums": loss sums (see loss.loss_sums) + nonfinite,
             "last": {"loss", "grad_norm", "param_norm", "learning_rate"}}.
  """
  k = int(grad_accum_steps)

  def loss_fn(params, batch, denom):
    logits = _model_logits(model, params, batch, lora_scale)
    sums = loss_lib.loss_sums(logits, batch, num_datasets, label_smoothing=label_smoothing,
                              action_range=action_range)
    return sums["loss_sum"] / denom, sums

  raw_grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def grad_fn(params, batch, denom):
    out, grads = raw_grad_fn(params, batch, denom)
    if grad_shardings is not None:
      grads = jax.lax.with_sharding_constraint(grads, grad_shardings)
    return out, grads

  def step(state: TrainState, batch: Batch):
    params = jax.tree.map(lambda f, p: jax.lax.stop_gradient(p) if f else p,
                          frozen, state.params)
    denom = jnp.maximum(batch.loss_mask[:, 1:].astype(jnp.float32).sum(), 1.0)
    if k == 1:
      (loss, sums), grads = grad_fn(params, batch, denom)
    else:
      micro = _split_microbatches(batch, k, mesh)

      def body(carry, mb):
        g_acc, s_acc = carry
        (_, s), g = grad_fn(params, mb, denom)
        return (jax.tree.map(jnp.add, g_acc, g), jax.tree.map(jnp.add, s_acc, s)), None

      g0 = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
      if grad_shardings is not None:
        g0 = jax.lax.with_sharding_constraint(g0, grad_shardings)
      mb0 = jax.tree.map(lambda x: x[0], micro)
      s0 = jax.tree.map(jnp.zeros_like,
                        jax.eval_shape(lambda p, b: loss_fn(p, b, denom)[1], params, mb0))
      (grads, sums), _ = jax.lax.scan(body, (g0, s0), micro)
      loss = sums["loss_sum"] / denom
      grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
    trainable = jax.tree.map(lambda f, g: jnp.zeros((), g.dtype) if f else g, frozen, grads)
    grad_norm = optax.global_norm(trainable)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    new_params = jax.tree.map(lambda f, old, new: old if f else new,
                              frozen, state.params, new_params)
    rng, _ = jax.random.split(jax.random.wrap_key_data(state.rng))
    ema = state.ema_params
    if ema is not None and ema_decay > 0:
      d = jnp.float32(ema_decay)
      ema = jax.tree.map(
          lambda f, e, p: e if f else (d * e + (1 - d) * p).astype(e.dtype),
          frozen, ema, new_params)
    new_state = state.replace(step=state.step + 1, params=new_params, opt_state=opt_state,
                              rng=jax.random.key_data(rng), ema_params=ema)
    sums = dict(sums)
    param_norm = optax.global_norm(new_params)
    # nonfinite_loss: the old params (or the batch) are bad; nonfinite adds the new params
    # overflowing (the update blew up): no checkpoint is saved from a window with either.
    bad_loss = jnp.logical_not(jnp.isfinite(loss) & jnp.isfinite(grad_norm))
    sums["nonfinite_loss"] = bad_loss.astype(jnp.float32)
    sums["nonfinite"] = (bad_loss | ~jnp.isfinite(param_norm)).astype(jnp.float32)
    sums["steps"] = jnp.ones((), jnp.float32)
    last = {"loss": loss, "grad_norm": grad_norm,
            "param_norm": param_norm,
            "learning_rate": jnp.asarray(schedule(state.step), jnp.float32)}
    return new_state, {"sums": sums, "last": last}

  return step


def make_eval_step(model: nn.Module, *, num_datasets: int,
                   lora_scale: float | None = None) -> Callable:
  """Returns eval(params, batch: Batch) -> loss sums (same keys as training's)."""

  def step(params, batch: Batch):
    logits = _model_logits(model, params, batch, lora_scale)
    return loss_lib.loss_sums(logits, batch, num_datasets)

  return step


def jit_train_step(step_fn: Callable, mesh: Mesh, state_sharding: TrainState,
                   example: Batch) -> Callable:
  """One jit with explicit shardings; the old state is donated (updated in place).
  `example`: a batch with the fields the data has (its shapes do not matter)."""
  rep = NamedSharding(mesh, P())
  return jax.jit(step_fn,
                 in_shardings=(state_sharding, batch_shardings(mesh, example)),
                 out_shardings=(state_sharding, rep),
                 donate_argnums=(0,))


def jit_eval_step(eval_fn: Callable, mesh: Mesh, params_sharding: Any,
                  example: Batch) -> Callable:
  rep = NamedSharding(mesh, P())
  return jax.jit(eval_fn, in_shardings=(params_sharding, batch_shardings(mesh, example)),
                 out_shardings=rep)


def accumulate(acc: dict | None, metrics: dict) -> dict:
  """Adds a step's metric sums to the window's (on device, async); keeps the last 'last'."""
  if acc is None:
    return metrics
  return {"sums": jax.tree.map(jnp.add, acc["sums"], metrics["sums"]),
          "last": metrics["last"]}
