"""Sharding rules: the jitted forward on an 8-device CPU mesh equals the unsharded one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from vlax.errors import VlaxError
from vlax.models import VLA, example_inputs, get_preset, init_params
from vlax.models import sharding

TINY = get_preset("tiny")


@pytest.fixture(scope="module")
def setup():
  assert jax.device_count() == 8, "tests/conftest.py should give 8 CPU devices"
  model = VLA(TINY)
  r = np.random.RandomState(0)
  images, image_mask, tokens, input_mask, prefix_mask = example_inputs(TINY, 8, 2, 6)
  inputs = (jnp.asarray(r.uniform(-1, 1, images.shape), jnp.float32),
            image_mask.at[1, 1].set(False),
            jnp.asarray(r.randint(0, TINY.llm.vocab_size, tokens.shape), jnp.int32),
            input_mask.at[0, 4:].set(False), prefix_mask.at[:, 3:].set(False))
  params = init_params(model, jax.random.PRNGKey(0))
  ref = np.asarray(jax.jit(model.apply)({"params": params}, *inputs))
  return model, params, inputs, ref


def test_make_mesh_sizes_and_errors():
  mesh = sharding.make_mesh(data=-1, fsdp=2, tensor=2)
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert dict(sharding.make_mesh().shape) == {"data": 1, "fsdp": 8, "tensor": 1}
  with pytest.raises(VlaxError, match="needs 12 devices"):
    sharding.make_mesh(data=3, fsdp=2, tensor=2)
  with pytest.raises(VlaxError, match="do not divide"):
    sharding.make_mesh(data=-1, fsdp=3)
  with pytest.raises(VlaxError, match="at most one"):
    sharding.make_mesh(data=-1, fsdp=-1)


@pytest.mark.parametrize("shape", [(2, 2, 2), (1, 8, 1)])
def test_sharded_forward_matches_unsharded(setup, shape):
  model, params, inputs, ref = setup
  mesh = sharding.make_mesh(*shape)
  abstract, shardings = sharding.abstract_params_and_shardings(model, mesh, inputs)
  assert jax.tree.structure(abstract) == jax.tree.structure(params)
  placed = jax.device_put(params, shardings)
  xs = [jax.device_put(x, sharding.batch_sharding(mesh, x.ndim)) for x in inputs]
  with sharding.mesh_context(mesh):
    fwd = jax.jit(model.apply)
    out = fwd({"params": placed}, *xs)
    hlo = fwd.lower({"params": placed}, *xs).as_text()
  np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5, rtol=1e-5)
  assert "sharding_constraint" in hlo  # logical activation constraints are live
  emb = placed["llm"]["embedder"]["input_embedding"]
  q = placed["llm"]["layers"]["attn"]["q_einsum"]["w"]
  mlp = placed["llm"]["layers"]["mlp"]["linear"]
  if shape == (2, 2, 2):
    assert emb.sharding.spec == P("tensor", "fsdp")
    assert q.sharding.spec == P(None, "tensor", "fsdp", None)
    assert mlp.sharding.spec == P(None, "tensor", "fsdp")
    assert out.sharding.spec[0] == ("data", "fsdp")
    # One KV head cannot be split over tensor=2: it is replicated rather than failing.
    assert shardings["llm"]["layers"]["attn"]["kv_einsum"]["w"].spec[2] is None
  else:
    assert q.sharding.spec[2] == "fsdp"
    # FSDP really splits the embed dimension: each device holds 1/8 of it.
    assert emb.addressable_shards[0].data.shape == (TINY.llm.vocab_size, TINY.llm.width // 8)


def test_init_sharded_params_equals_plain_init(setup):
  model, params, inputs, _ = setup
  mesh = sharding.make_mesh(2, 2, 2)
  sharded = sharding.init_sharded_params(model, mesh, jax.random.PRNGKey(0), inputs)
  assert sharded["img"]["head"]["kernel"].sharding.spec == P(None, "fsdp")
  # The same random stream: values agree to float rounding (the two programs fuse the
  # initialisers' arithmetic differently; another stream would differ by ~0.1).
  for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)


@pytest.mark.slow
def test_sharded_grad_and_greedy_decode_match_unsharded(setup):
  from vlax.models import decoding
  model, params, inputs, _ = setup

  def loss(p, x):
    logits = model.apply({"params": p}, *x)
    logp = jax.nn.log_softmax(logits[:, :-1])
    return -jnp.mean(jnp.take_along_axis(logp, x[2][:, 1:, None], -1))

  grad = jax.value_and_grad(loss)
  ref_l, ref_g = jax.jit(grad)(params, inputs)
  ref_tokens = decoding.greedy_decode(model, params, *inputs, num_steps=3)
  mesh = sharding.make_mesh(2, 2, 2)
  _, shardings = sharding.abstract_params_and_shardings(model, mesh, inputs)
  placed = jax.device_put(params, shardings)
  xs = [jax.device_put(x, sharding.batch_sharding(mesh, x.ndim)) for x in inputs]
  with sharding.mesh_context(mesh):
    l, g = jax.jit(grad, out_shardings=(None, shardings))(placed, xs)
    tokens = decoding.greedy_decode(model, placed, *xs, num_steps=3)
  np.testing.assert_allclose(l, ref_l, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(ref_g)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-4)
  assert g["llm"]["embedder"]["input_embedding"].sharding.spec == P("tensor", "fsdp")
  np.testing.assert_array_equal(np.asarray(tokens), np.asarray(ref_tokens))
