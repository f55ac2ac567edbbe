"""EMA weights (config.ema_decay): the update, bit-identical resume, and which weights
the loaders (vlax.checkpoints.weights, export) take."""

import jax
import numpy as np
import pytest

from vlax.checkpoints import format as ckpt_format
from vlax.checkpoints import weights
from vlax.inference import export
from vlax.training import trainer

import _train_utils as U

DECAY = 0.8


def _config(**kw):
  return U.tiny_config(ema_decay=DECAY, log_every=2, **kw)


def _host(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))


def _assert_same(a, b):
  jax.tree.map(np.testing.assert_array_equal, _host(a), _host(b))


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """4 steps in one go, a checkpoint after each."""
  workdir = tmp_path_factory.mktemp("ema_run")
  out = trainer.train(_config(num_steps=4, checkpoint_every=1, keep_checkpoints=4),
                      str(workdir), data_iterator_fn=U.synthetic_data_fn())
  return workdir, out


def test_ema_update_follows_the_decay(straight):
  workdir, out = straight
  root = str(workdir / "checkpoints")
  state = out["state"]
  jax.tree.map(lambda e, p: assert_same_sharding(e, p), state.ema_params, state.params)
  ema = {s: ckpt_format.load_params(root, s, item=ckpt_format.EMA_PARAMS_ITEM)[0]
         for s in (3, 4)}
  p4 = ckpt_format.load_params(root, 4)[0]
  jax.tree.map(lambda e, a, b: np.testing.assert_allclose(e, DECAY * a + (1 - DECAY) * b,
                                                          rtol=1e-6, atol=1e-7),
               ema[4], ema[3], p4)
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(ema[4]),
                                                      jax.tree.leaves(p4)))


def assert_same_sharding(a, b):
  assert a.sharding.is_equivalent_to(b.sharding, a.ndim), (a.sharding, b.sharding)


def test_resume_is_bit_identical_with_ema(straight, tmp_path):
  _, full = straight
  run = tmp_path / "run"
  trainer.train(_config(num_steps=2), str(run), data_iterator_fn=U.synthetic_data_fn())
  out = trainer.train(_config(num_steps=4), str(run), data_iterator_fn=U.synthetic_data_fn())
  assert out["resumed_from"] == 2 and out["step"] == 4
  _assert_same(out["state"].params, full["state"].params)
  _assert_same(out["state"].ema_params, full["state"].ema_params)


def test_loaders_take_the_ema_unless_asked_for_the_raw_params(straight, tmp_path,
                                                             monkeypatch):
  workdir, full = straight
  root = str(workdir / "checkpoints")
  ema, raw = _host(full["state"].ema_params), _host(full["state"].params)
  params, meta = weights.load(root)
  assert meta["weights"] == "ema"
  _assert_same(params, ema)
  params, meta = weights.load(root, use_ema=False)
  assert meta["weights"] == "params"
  _assert_same(params, raw)
  monkeypatch.setenv(weights.RAW_WEIGHTS_ENV, "1")  # what --raw-weights sets
  _assert_same(weights.load(root)[0], raw)
  monkeypatch.delenv(weights.RAW_WEIGHTS_ENV)
  # export: the bundle's params are the EMA (raw on request), and it says which.
  bundle = export.export(root, str(tmp_path / "bundle"))
  assert ckpt_format.read_metadata(bundle)["export"]["weights"] == "ema"
  assert not ckpt_format.has_ema(bundle)
  _assert_same(ckpt_format.load_params(bundle)[0], ema)
  bundle = export.export(root, str(tmp_path / "raw"), use_ema=False)
  _assert_same(ckpt_format.load_params(bundle)[0], raw)


def test_ema_switched_on_for_a_run_saved_without_it(tmp_path, capfd):
  run = tmp_path / "run"
  trainer.train(U.tiny_config(num_steps=2), str(run), data_iterator_fn=U.synthetic_data_fn())
  assert weights.load(str(run / "checkpoints"))[1]["weights"] == "params"
  out = trainer.train(_config(num_steps=3), str(run), data_iterator_fn=U.synthetic_data_fn())
  assert "has no ema_params: the EMA starts at its params" in capfd.readouterr().err
  params, meta = weights.load(str(run / "checkpoints"))
  assert meta["weights"] == "ema"
  _assert_same(params, out["state"].ema_params)
