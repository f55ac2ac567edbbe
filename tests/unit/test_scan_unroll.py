"""model.scan_unroll changes the compiled program only, and decoding slices no weights per token."""

import dataclasses
import json

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from _model_utils import model_inputs
from vlax.checkpoints import format as ckpt_format
from vlax.errors import VlaxError
from vlax.models import VLA, VLAConfig, decoding, get_preset, init_params

TINY = get_preset("tiny")


def _loss(model, params, x):
  logits = model.apply({"params": params}, **x)
  logp = jax.nn.log_softmax(logits[:, :-1])
  return -jnp.mean(jnp.take_along_axis(logp, x["tokens"][:, 1:, None], -1))


@pytest.mark.parametrize("remat", [False, True])
def test_unrolled_and_scanned_layers_agree(remat):
  x = model_inputs(TINY, ragged=True)
  rolled = VLA(dataclasses.replace(TINY, scan_unroll=1, remat=remat))
  unrolled = VLA(dataclasses.replace(TINY, scan_unroll=True, remat=remat))
  params = init_params(rolled, jax.random.PRNGKey(0))
  params_u = init_params(unrolled, jax.random.PRNGKey(0))
  # Same (stacked, big_vision) tree, shapes and initial values.
  assert jax.tree.structure(params) == jax.tree.structure(params_u)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params_u)):
    assert a.shape == b.shape
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert params["llm"]["layers"]["attn"]["q_einsum"]["w"].shape[0] == TINY.llm.depth
  grad = lambda m: jax.jit(jax.value_and_grad(lambda p: _loss(m, p, x)))(params)
  (l, g), (lu, gu) = grad(rolled), grad(unrolled)
  np.testing.assert_allclose(lu, l, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves(gu), jax.tree.leaves(g)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
  out = jax.jit(rolled.apply)({"params": params}, **x)
  out_u = jax.jit(unrolled.apply)({"params": params}, **x)
  np.testing.assert_allclose(np.asarray(out_u), np.asarray(out), rtol=1e-5, atol=1e-5)


def test_partial_unroll_matches_and_decoding_is_independent_of_it():
  config = dataclasses.replace(TINY, scan_unroll=2)
  x = model_inputs(TINY, ragged=True)
  params = init_params(VLA(TINY), jax.random.PRNGKey(1))
  want = np.asarray(jax.jit(VLA(TINY).apply)({"params": params}, **x))
  got = np.asarray(jax.jit(VLA(config).apply)({"params": params}, **x))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  tokens = decoding.greedy_decode(VLA(config), params, **x, num_steps=3)
  ref = decoding.greedy_decode_recompute(VLA(TINY), params, **x, num_steps=3)
  np.testing.assert_array_equal(np.asarray(tokens), np.asarray(ref))
  weights = decoding.prepare_weights(VLA(config), params)
  again = decoding.greedy_decode(VLA(config), params, **x, num_steps=3, weights=weights)
  np.testing.assert_array_equal(np.asarray(again), np.asarray(ref))


def test_metadata_without_scan_unroll_loads(tmp_path):
  old = get_preset("debug").to_dict()
  del old["scan_unroll"]  # as written before the field existed
  root = str(tmp_path / "ckpt")
  ckpt_format.save_checkpoint(root, 1, {"w": np.zeros((2,), np.float32)}, {"model": old})
  config = VLAConfig.from_dict(ckpt_format.read_metadata(root)["model"])
  assert config.scan_unroll is True
  assert config == get_preset("debug")
  two = dataclasses.replace(config, scan_unroll=2)
  assert VLAConfig.from_dict(json.loads(json.dumps(two.to_dict()))) == two


@pytest.mark.parametrize("bad", [0, -1, "yes", 1.5, None])
def test_bad_scan_unroll_names_the_field(bad):
  with pytest.raises(VlaxError, match="model.scan_unroll"):
    VLAConfig.from_dict({"scan_unroll": bad})


def _eqns(jaxpr):
  """Every equation of a jaxpr and of the jaxprs nested in it."""
  for eqn in jaxpr.eqns:
    yield eqn
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      yield from _eqns(sub)


def test_token_loop_reads_no_stacked_weights():
  """Regression guard: slicing the stacked [layers, ...] weights inside the token loop
  cost ~60% of decode time on CPU (a copy per token and layer)."""
  num_steps = 7
  params = init_params(VLA(TINY), jax.random.PRNGKey(0))
  x = {k: jnp.concatenate([v, v[:1]])  # B=3: no clashes
       for k, v in model_inputs(TINY, ragged=True).items()}
  jaxpr = jax.make_jaxpr(decoding._cached_greedy(TINY, num_steps))(  # pylint: disable=protected-access
      params, *x.values(), None).jaxpr
  loops = [e for e in _eqns(jaxpr)
           if e.primitive.name == "scan" and e.params["length"] == num_steps - 1]
  assert len(loops) == 1
  stacked = {tuple(a.shape) for a in jax.tree.leaves(params["llm"]["layers"]) if a.ndim > 2}
  body = loops[0].params["jaxpr"].jaxpr
  for eqn in _eqns(body):
    assert eqn.primitive.name not in ("scan", "while"), "layers should be unrolled per token"
    for v in eqn.invars:
      shape = tuple(getattr(getattr(v, "aval", None), "shape", ()))
      assert shape not in stacked, f"{eqn.primitive.name} reads a stacked weight {shape}"


def test_train_config_scan_unroll():
  """config.model.scan_unroll: 0 = all layers unrolled (default), k = k per loop step."""
  from vlax.training.trainer import build_model_config, default_train_config
  c = default_train_config()
  assert build_model_config(c).scan_unroll is True
  c.model.scan_unroll = 2
  assert build_model_config(c).scan_unroll == 2
  c.model.scan_unroll = -1
  with pytest.raises(VlaxError, match="scan_unroll"):
    build_model_config(c)
