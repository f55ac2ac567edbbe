"""Optimizer: schedules, clipping, weight-decay mask, frozen groups, grad accumulation."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vlax.errors import VlaxError
from vlax.models.batch import Batch, ModelInputs
from vlax.training import optimizer as opt_lib
from vlax.training import state as state_lib
from vlax.training import train_step as step_lib
from vlax.training.trainer import default_train_config

import _train_utils as U


class ToyVLA(nn.Module):
  """Same call signature as vlax.models.VLA, a few thousand params, compiles instantly."""

  @nn.compact
  def __call__(self, images, image_mask, tokens, input_mask, prefix_mask):
    img = nn.Dense(16, name="img_proj")(images.mean(axis=(2, 3)))  # [B, N, 16]
    img = (img * image_mask[..., None]).sum(1, keepdims=True)
    x = nn.Embed(U.VOCAB, 16, name="input_embedding")(tokens) + img
    x = nn.LayerNorm(name="norm")(x)
    x = jnp.cumsum(x * input_mask[..., None], axis=1) / jnp.arange(1, x.shape[1] + 1)[:, None]
    x = nn.gelu(nn.Dense(32, name="hidden")(x))
    return nn.Dense(U.VOCAB, name="head")(x).astype(jnp.float32)


def _params():
  b = U.make_batch(2)
  return ToyVLA().init(jax.random.key(0), *ModelInputs.from_dict(b).args())["params"]


def test_schedules():
  s = opt_lib.make_schedule(1.0, num_steps=100, warmup_steps=10, schedule="cosine")
  assert float(s(0)) == 0.0
  np.testing.assert_allclose(float(s(5)), 0.5, rtol=1e-6)
  np.testing.assert_allclose(float(s(10)), 1.0, rtol=1e-6)
  np.testing.assert_allclose(float(s(55)), 0.5, atol=1e-6)  # half way through the cosine
  np.testing.assert_allclose(float(s(100)), 0.0, atol=1e-6)
  lin = opt_lib.make_schedule(2.0, 110, 10, "linear", end_lr_ratio=0.5)
  np.testing.assert_allclose(float(lin(60)), 1.5, rtol=1e-6)
  np.testing.assert_allclose(float(lin(110)), 1.0, rtol=1e-6)
  const = opt_lib.make_schedule(0.3, 50, 0, "constant")
  assert float(const(0)) == float(const(49)) == pytest.approx(0.3)
  with pytest.raises(VlaxError, match="schedule"):
    opt_lib.make_schedule(1.0, 10, 0, "exp")


def test_clip_by_global_norm():
  params = {"a": jnp.zeros(3), "b": jnp.zeros((2, 2))}
  tx, _, _ = opt_lib.make_optimizer(
      {"name": "sgd", "lr": 1.0, "schedule": "constant", "warmup_steps": 0,
       "clip_norm": 1.0}, params, 10)
  grads = {"a": jnp.full(3, 10.0), "b": jnp.full((2, 2), -10.0)}
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(float(optax.global_norm(updates)), 1.0, rtol=1e-5)
  small = jax.tree.map(lambda g: g * 1e-3, grads)
  updates, _ = tx.update(small, tx.init(params), params)
  np.testing.assert_allclose(updates["a"], -small["a"], rtol=1e-6)  # below the norm: untouched


def test_decay_mask_and_adamw_decay():
  params = _params()
  mask = {opt_lib.path_str(p): m for p, m in
          jax.tree_util.tree_flatten_with_path(opt_lib.decay_mask(params))[0]}
  assert mask["hidden/kernel"] and mask["head/kernel"] and mask["img_proj/kernel"]
  assert not mask["hidden/bias"] and not mask["norm/scale"] and not mask["norm/bias"]
  real = opt_lib.decay_mask({"llm": {"embedder": {"input_embedding": 1},
                                     "final_norm": {"scale": 1}},
                             "img": {"pos_embedding": 1, "embedding": {"kernel": 1}}})
  assert real == {"llm": {"embedder": {"input_embedding": False}, "final_norm": {"scale": False}},
                  "img": {"pos_embedding": False, "embedding": {"kernel": True}}}
  tx, _, _ = opt_lib.make_optimizer(
      {"name": "adamw", "lr": 0.1, "schedule": "constant", "warmup_steps": 0,
       "weight_decay": 0.5}, params, 10)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  np.testing.assert_allclose(new["hidden"]["kernel"], params["hidden"]["kernel"] * 0.95, rtol=1e-6)
  np.testing.assert_array_equal(new["norm"]["scale"], params["norm"]["scale"])
  np.testing.assert_array_equal(new["hidden"]["bias"], params["hidden"]["bias"])


def _toy_step(opt_config, accum=1, frozen_patterns=""):
  params = _params()
  cfg = dict(opt_config, freeze_patterns=frozen_patterns)
  tx, sched, frozen = opt_lib.make_optimizer(cfg, params, 100)
  step = jax.jit(step_lib.make_train_step(ToyVLA(), tx, sched, frozen, num_datasets=3,
                                          grad_accum_steps=accum))
  return params, tx, step, frozen


def test_frozen_params_stay_bit_identical():
  cfg = {"name": "adamw", "lr": 1e-2, "schedule": "constant", "warmup_steps": 0,
         "weight_decay": 0.1, "clip_norm": 1.0}
  params, tx, step, frozen = _toy_step(cfg, frozen_patterns="^img_proj/,^norm/")
  state = state_lib.create(params, tx, jax.random.key(1))
  before = jax.device_get(state.params)
  for i in range(3):
    state, metrics = step(state, Batch.from_dict(U.make_batch(8, step=i)))
  after = jax.device_get(state.params)
  for name in ("img_proj", "norm"):
    for k in before[name]:
      np.testing.assert_array_equal(after[name][k], before[name][k])
  assert not np.allclose(after["hidden"]["kernel"], before["hidden"]["kernel"])
  # Frozen params have no optimizer state.
  n_state = sum(x.size for x in jax.tree.leaves(state.opt_state))
  n_train = sum(x.size for x, f in zip(jax.tree.leaves(params), jax.tree.leaves(frozen)) if not f)
  assert n_state <= 2 * n_train + 8
  with pytest.raises(VlaxError, match="matches no parameter"):
    opt_lib.make_optimizer(cfg | {"freeze_patterns": "^vision_typo/"}, params, 10)


@pytest.mark.parametrize("name", ["adamw", "adafactor"])
def test_grad_accumulation_matches_big_batch(name):
  cfg = {"name": name, "lr": 1e-2, "schedule": "constant", "weight_decay": 0.0, "clip_norm": 1.0}
  params, tx, step1, _ = _toy_step(cfg, accum=1)
  _, _, step4, _ = _toy_step(cfg, accum=4)
  batch = Batch.from_dict(U.make_batch(16, step=3))
  s1, m1 = step1(state_lib.create(params, tx, jax.random.key(1)), batch)
  s4, m4 = step4(state_lib.create(params, tx, jax.random.key(1)), batch)
  np.testing.assert_allclose(m4["last"]["loss"], m1["last"]["loss"], rtol=1e-5)
  np.testing.assert_allclose(m4["last"]["grad_norm"], m1["last"]["grad_norm"], rtol=1e-4)
  for k in m1["sums"]:
    np.testing.assert_allclose(m4["sums"][k], m1["sums"][k], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               s4.params, s1.params)
  assert int(s4.step) == 1


def test_one_default_per_key():
  """The training config's optimizer section is optimizer.DEFAULTS, and make_optimizer
  fills missing keys from it (no second set of defaults)."""
  assert default_train_config().optimizer.to_dict() == opt_lib.DEFAULTS
  params = _params()
  _, sched, frozen = opt_lib.make_optimizer({}, params, 1000)
  assert float(sched(0)) == 0.0  # warmup_steps: 100
  assert float(sched(opt_lib.DEFAULTS["warmup_steps"])) == pytest.approx(
      opt_lib.DEFAULTS["lr"])
  assert not any(jax.tree.leaves(frozen))
