"""Checkpoints: retention, atomic resume, another mesh, metadata, the NaN guard."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlax.checkpoints import format as ckpt_format
from vlax.errors import VlaxError
from vlax.training import checkpointing
from vlax.training import init_from
from vlax.training import mesh as mesh_lib
from vlax.training import trainer
from vlax.training.state import TrainState

import _train_utils as U


def _fake_state(v: float):
  rep = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  params = {"w": jnp.full((4, 2), v), "b": jnp.zeros(2)}
  opt = ({"mu": {"w": jnp.full((4, 2), v / 2)}}, jnp.asarray(3, jnp.int32))
  return TrainState(step=jnp.asarray(int(v), jnp.int32), params=params, opt_state=opt,
                    rng=jnp.zeros(2, jnp.uint32)), rep


def test_keep_last_k_plus_best(tmp_path):
  ckpt = checkpointing.Checkpointer(str(tmp_path), keep=2, keep_best=1, best_metric="loss")
  losses = {1: 5.0, 2: 1.0, 3: 4.0, 4: 3.0, 5: 6.0, 6: 7.0}
  for step, loss in losses.items():
    state, _ = _fake_state(step)
    ckpt.save(step, state, {"model": {}}, metrics={"loss": loss})
    ckpt.wait()
  assert ckpt.all_steps() == [2, 5, 6]  # best (2) + last two
  ckpt.close()
  # Opt state round trip through the flattened item.
  state, rep = _fake_state(6)
  shard = jax.tree.map(lambda _: rep, state)
  ckpt = checkpointing.Checkpointer(str(tmp_path))
  restored, meta = ckpt.restore(6, state, shard)
  ckpt.close()
  assert meta["format"] == ckpt_format.FORMAT and meta["step"] == 6
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), jax.device_get(state))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A 4-step tiny run (checkpoints at 2 and 4) on the default 8-device fsdp mesh."""
  workdir = tmp_path_factory.mktemp("run")
  config = U.tiny_config(num_steps=4, checkpoint_every=2, eval_every=2, eval_steps=2,
                         **{"logging.tensorboard": True, "logging.progress": True})
  out = trainer.train(config, str(workdir), data_iterator_fn=U.synthetic_data_fn(),
                      eval_iterator_fn=U.synthetic_eval_fn)
  return workdir, config, out


@pytest.mark.slow
def test_resume_ignores_unfinished_save(trained, tmp_path):
  workdir, config, _ = trained
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.copytree(workdir, tmp_path / "run")
  root = tmp_path / "run" / "checkpoints"
  # A save killed mid-write: orbax's temporary directory, never renamed to "6".
  tmp_dir = root / "6.orbax-checkpoint-tmp-1234567"
  (tmp_dir / "params").mkdir(parents=True)
  (tmp_dir / "params" / "garbage").write_text("partial")
  # And a step directory missing its training items.
  (root / "5" / "params").mkdir(parents=True)
  config = U.tiny_config(num_steps=6, checkpoint_every=2)
  out = trainer.train(config, str(tmp_path / "run"), data_iterator_fn=U.synthetic_data_fn())
  assert out["resumed_from"] == 4 and out["step"] == 6
  assert not tmp_dir.exists()  # cleaned up at start-up
  rows = U.read_jsonl(tmp_path / "run" / "metrics.jsonl")
  assert [r["step"] for r in rows] == list(range(1, 7))


def test_metadata_round_trip_and_model_loader_reads_it(trained):
  workdir, config, out = trained
  root = str(workdir / "checkpoints")
  meta = ckpt_format.read_metadata(root)
  assert meta["step"] == 4 and meta["format"] == ckpt_format.FORMAT
  want = U.metadata()
  for k in ("statistics", "text_tokenizer", "action_tokenizer", "dataset_names"):
    assert meta[k] == want[k]
  assert meta["model"] == trainer.build_model_config(config, want).to_dict()
  assert meta["model"]["llm"]["vocab_size"] == U.VOCAB
  assert meta["config"]["num_steps"] == 4 and meta["config"]["model"]["preset"] == "tiny"
  params, _ = ckpt_format.load_params(root)
  jax.tree.map(np.testing.assert_array_equal, params, jax.device_get(out["state"].params))
  rows = U.read_jsonl(workdir / "metrics.jsonl")
  assert {"loss", "learning_rate", "loss/robot", "loss/web", "loss/toy_a",
          "accuracy/action", "perf/examples_per_sec"} <= set(rows[-1])
  assert "eval/loss" in rows[-1] and "eval/loss/toy_web" in rows[-1]
  events = os.listdir(workdir / "tensorboard")
  assert any(e.startswith("events.out.tfevents") for e in events)


def test_restore_onto_other_meshes(trained):
  workdir, config, out = trained
  want = jax.device_get(out["state"].params)
  for devices, shape in ((jax.devices(), (2, 2, 2)), (jax.devices()[:2], (1, 1, 2))):
    c = U.tiny_config(**{"mesh.data": shape[0], "mesh.fsdp": shape[1], "mesh.tensor": shape[2]})
    mesh = mesh_lib.mesh_from_config(dict(c.mesh), devices=devices)
    setup = trainer.ModelSetup(c, trainer.build_model_config(c, U.metadata()), mesh,
                               U.make_batch(8), 3)
    ckpt = checkpointing.Checkpointer(str(workdir / "checkpoints"))
    state, _ = ckpt.restore(4, setup.abstract_state, setup.state_sharding)
    ckpt.close()
    emb = state.params["llm"]["embedder"]["input_embedding"]
    assert emb.sharding.mesh.shape == mesh.shape and len(emb.sharding.device_set) == len(devices)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), want)


@pytest.mark.slow
def test_nan_guard_stops_and_keeps_last_good_checkpoint(tmp_path):
  base = U.synthetic_data_fn()

  def poisoned(config, pid, nproc, start_step):
    it, meta = base(config, pid, nproc, start_step)

    def gen():
      for step, b in enumerate(it, start=start_step + 1):
        if step >= 6:  # the batch of step 6 onwards (step 5 confirmed checkpoint 4)
          b = dict(b, images=np.full_like(b["images"], np.nan))
        yield b

    return gen(), meta

  # Checked at checkpoint steps too: step 6 is a checkpoint step before any log step.
  config = U.tiny_config(num_steps=10, checkpoint_every=2, log_every=10)
  with pytest.raises(trainer.TrainingDivergedError, match=r"NaN/Inf.*\(0, 6\].*checkpoints/4"):
    trainer.train(config, str(tmp_path), data_iterator_fn=poisoned)
  ckpt = checkpointing.Checkpointer(str(tmp_path / "checkpoints"))
  assert ckpt.all_steps() == [2, 4]
  ckpt.close()
  params, _ = ckpt_format.load_params(str(tmp_path / "checkpoints"))
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_init_from_checkpoint_and_shape_mismatch(trained):
  workdir, config, out = trained
  root = str(workdir / "checkpoints")
  mesh = mesh_lib.mesh_from_config({"data": 1, "fsdp": 4, "tensor": 2})
  setup = trainer.ModelSetup(config, trainer.build_model_config(config, U.metadata()), mesh,
                             U.make_batch(8), 3)
  params = init_from.load_params(root, setup)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(params),
               jax.device_get(out["state"].params))
  jax.tree.map(lambda x, s: x.sharding == s or pytest.fail(str(x.sharding)), params,
               setup.params_sharding)
  bigger = U.tiny_config(**{"model.overrides": "llm.width=64"})
  setup2 = trainer.ModelSetup(bigger, trainer.build_model_config(bigger, U.metadata()), mesh,
                              U.make_batch(8), 3)
  with pytest.raises(VlaxError, match="do not match the configured model"):
    init_from.load_params(root, setup2)


@pytest.mark.slow
def test_optimizer_change_needs_reset_optimizer(trained, tmp_path):
  workdir, _, out = trained
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.copytree(workdir, tmp_path / "run")
  config = U.tiny_config(num_steps=5, checkpoint_every=5,
                         **{"optimizer.freeze_patterns": "^img/"})
  with pytest.raises(VlaxError, match="reset_optimizer=True"):
    trainer.train(config, str(tmp_path / "run"), data_iterator_fn=U.synthetic_data_fn())
  config.reset_optimizer = True
  res = trainer.train(config, str(tmp_path / "run"), data_iterator_fn=U.synthetic_data_fn())
  assert res["resumed_from"] == 4 and res["step"] == 5
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(res["state"].params["img"]),
               jax.device_get(out["state"].params["img"]))
