"""The jitted train step on an 8-device CPU mesh with the `tiny` model."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from vlax.errors import VlaxError
from vlax.models import sharding
from vlax.models.batch import Batch
from vlax.training import mesh as mesh_lib
from vlax.training import trainer

import _train_utils as U


def _setup(config, devices=None):
  mesh = mesh_lib.mesh_from_config(dict(config.mesh), devices=devices)
  batch = U.make_batch(config.batch_size)
  model_config = trainer.build_model_config(config, U.metadata())
  setup = trainer.ModelSetup(config, model_config, mesh, batch, len(U.DATASET_NAMES))
  state = setup.create_state(setup.init_params(config.seed), config.seed)
  return setup, state


def _run(setup, state, steps, fixed=True):
  losses = []
  for i in range(steps):
    batch = mesh_lib.global_batch(Batch.from_dict(U.make_batch(8, step=0 if fixed else i)),
                                  setup.mesh)
    state, metrics = setup.step(state, batch)
    losses.append(float(metrics["last"]["loss"]))
  return state, losses


@pytest.fixture(scope="module")
def sharded():
  assert jax.device_count() == 8
  config = U.tiny_config(**{"mesh.data": 1, "mesh.fsdp": 4, "mesh.tensor": 2})
  return config, *_setup(config)


@pytest.mark.slow
def test_sharded_matches_unsharded_and_loss_falls(sharded):
  config, setup, state = sharded
  one = U.tiny_config(**{"mesh.data": 1, "mesh.fsdp": 1, "mesh.tensor": 1})
  setup1, state1 = _setup(one, devices=jax.devices()[:1])
  state1, losses1 = _run(setup1, state1, 2)
  state, losses = _run(setup, state, 2)
  np.testing.assert_allclose(losses, losses1, rtol=2e-5)
  a = jax.device_get(state.params)
  b = jax.device_get(state1.params)
  # The attention key bias has an exactly-zero gradient (softmax is shift-invariant), so
  # Adam turns float noise into +-lr there; every other param must agree.
  del a["img"]["Transformer"]["encoderblock"]["MultiHeadDotProductAttention_0"]["key"]["bias"]
  del b["img"]["Transformer"]["encoderblock"]["MultiHeadDotProductAttention_0"]["key"]["bias"]
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5), a, b)
  state, more = _run(setup, state, 6)
  assert more[-1] < 0.7 * losses[0], (losses, more)


def test_params_and_opt_state_are_sharded_by_the_rules(sharded):
  _, setup, _ = sharded
  state = setup.create_state(setup.init_params(0), 0)
  state, _ = _run(setup, state, 1)  # the step's outputs keep the shardings
  emb = state.params["llm"]["embedder"]["input_embedding"]  # (vocab, embed)
  assert emb.sharding.spec == P("tensor", "fsdp")
  assert emb.addressable_shards[0].data.shape == (emb.shape[0] // 2, emb.shape[1] // 4)
  q = state.params["llm"]["layers"]["attn"]["q_einsum"]["w"]  # (layers, heads, embed, head_dim)
  assert q.sharding.spec[1:3] == ("tensor", "fsdp")
  flat_params = jax.tree.leaves(state.params)
  mu = [x for x in jax.tree.leaves(state.opt_state) if x.ndim > 0]
  # Adam's mu and nu mirror every param and its sharding.
  specs = {(x.shape, x.sharding.spec) for x in flat_params}
  assert len(mu) == 2 * len(flat_params)
  assert all((x.shape, x.sharding.spec) in specs for x in mu)
  for p, s in zip(flat_params, jax.tree.leaves(setup.params_sharding)):
    assert p.sharding == s


@pytest.mark.slow
def test_frozen_vision_bf16_remat_and_accumulation():
  config = U.tiny_config(**{"optimizer.freeze_patterns": "^img/", "model.dtype": "bfloat16",
                            "model.remat": True, "optimizer.grad_accum_steps": 2})
  setup, state = _setup(config)
  before = jax.device_get(state.params)
  state, losses = _run(setup, state, 3)
  after = jax.device_get(state.params)
  jax.tree.map(np.testing.assert_array_equal, after["img"], before["img"])
  assert not np.array_equal(after["llm"]["final_norm"]["scale"],
                            before["llm"]["final_norm"]["scale"])
  assert after["llm"]["final_norm"]["scale"].dtype == np.float32  # fp32 master params
  assert losses[-1] < losses[0]


def test_mesh_shapes_and_batch_checks():
  assert sharding.resolve_mesh_shape(1, -1, 2, 8) == (1, 4, 2)
  assert sharding.resolve_mesh_shape(-1, 2, 1, 8) == (4, 2, 1)
  with pytest.raises(VlaxError, match="at most one"):
    sharding.resolve_mesh_shape(-1, -1, 1, 8)
  with pytest.raises(VlaxError, match="needs 12 devices"):
    sharding.resolve_mesh_shape(3, 4, 1, 8)
  with pytest.raises(VlaxError, match="do not divide"):
    sharding.resolve_mesh_shape(3, -1, 1, 8)
  mesh = sharding.make_mesh(2, -1, 2)
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  with pytest.raises(VlaxError, match="batch_size=6"):
    mesh_lib.check_batch_size(6, mesh)
  with pytest.raises(VlaxError, match="grad_accum_steps"):
    mesh_lib.check_batch_size(8, mesh, grad_accum_steps=3)
  batch = mesh_lib.global_batch(Batch.from_dict(U.make_batch(8)), mesh)
  assert batch.inputs.tokens.sharding.spec == P(("data", "fsdp"))
  assert batch.inputs.images.addressable_shards[0].data.shape[0] == 2
  assert batch.source.sharding.spec == P(("data", "fsdp"))


def test_distributed_flags_must_come_together():
  from vlax.training import distributed  # pylint: disable=g-import-not-at-top
  with pytest.raises(VlaxError, match="--num_processes"):
    distributed.initialize("127.0.0.1:1234", None, 0)
  with pytest.raises(VlaxError, match="process_id=3"):
    distributed.initialize("127.0.0.1:1234", 2, 3)


def test_model_overrides_and_vocab_from_data():
  c = U.tiny_config(**{"model.overrides": "llm.depth=1,vision.depth=1"})
  m = trainer.build_model_config(c, {"vocab_size": 300})
  assert (m.llm.depth, m.vision.depth, m.llm.vocab_size) == (1, 1, 300)
  c = U.tiny_config(**{"model.overrides": {"llm": {"vocab_size": 512}}})
  assert trainer.build_model_config(c, {"vocab_size": 300}).llm.vocab_size == 512
  with pytest.raises(VlaxError, match="unknown key 'llm.nope'"):
    trainer.build_model_config(U.tiny_config(**{"model.overrides": "llm.nope=1"}))
