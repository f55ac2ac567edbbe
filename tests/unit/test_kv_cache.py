"""KV-cache decoding equals full re-computation and compiles once per shape."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlax.models import VLA, get_preset, init_params
from vlax.models import decoding

TINY = get_preset("tiny")


@pytest.fixture(scope="module")
def setup():
  model = VLA(TINY)
  params = init_params(model, jax.random.PRNGKey(0))
  # Sharpen the random decoder so greedy tokens vary (instead of echoing the input token).
  params["llm"]["layers"] = jax.tree.map(lambda x: 3 * x, params["llm"]["layers"])
  return model, params


def _batch(lens, prefix_lens, l=6, n=2, seed=0):
  r = np.random.RandomState(seed)
  b = len(lens)
  s = TINY.vision.image_size
  pos = np.arange(l)[None]
  return dict(
      images=jnp.asarray(r.uniform(-1, 1, (b, n, s, s, 3)), jnp.float32),
      image_mask=jnp.asarray(np.arange(n)[None] < np.array([n, 1, n][:b])[:, None]),
      tokens=jnp.asarray(r.randint(0, TINY.llm.vocab_size, (b, l)), jnp.int32),
      input_mask=jnp.asarray(pos < np.array(lens)[:, None]),
      prefix_mask=jnp.asarray(pos < np.array(prefix_lens)[:, None]),
  )


def test_greedy_with_cache_equals_recomputation(setup):
  model, params = setup
  # Different prompt lengths (right padded), a missing camera, and one prompt whose last
  # two tokens are causal rather than prefix.
  x = _batch(lens=[6, 3, 4], prefix_lens=[6, 3, 2])
  fast = np.asarray(decoding.greedy_decode(model, params, **x, num_steps=10))
  slow = np.asarray(decoding.greedy_decode_recompute(model, params, **x, num_steps=10))
  assert fast.shape == (3, 10) and fast.dtype == np.int32
  np.testing.assert_array_equal(fast, slow)
  assert len(np.unique(fast)) > 10  # a real sequence, not one repeated token


def test_prefill_and_decode_logits_match_forward(setup):
  model, params = setup
  x = _batch(lens=[5, 2], prefix_lens=[3, 2], l=5, n=1)
  forced = jnp.array([[11, 12, 13], [21, 22, 23]], jnp.int32)
  lens = np.array([5, 2])
  seq = TINY.vision.num_patches + 5
  prefill = jax.jit(functools.partial(model.apply, method=VLA.prefill),
                    static_argnames=("cache_size",))
  decode = jax.jit(functools.partial(model.apply, method=VLA.decode_step))
  logits, cache = prefill({"params": params}, **x, cache_size=seq + 3)
  steps = [np.asarray(logits)]
  for t in range(2):
    logits, cache = decode({"params": params}, forced[:, t], cache)
    steps.append(np.asarray(logits))
  # Reference: the forced tokens appended right after each prompt, as causal tokens.
  tokens = np.zeros((2, 8), np.int32)
  valid = np.zeros((2, 8), bool)
  prefix = np.zeros((2, 8), bool)
  for b in range(2):
    n = lens[b]
    tokens[b, :n] = np.asarray(x["tokens"])[b, :n]
    tokens[b, n:n + 3] = forced[b]
    valid[b, :n + 3] = True
    prefix[b, :n] = np.asarray(x["prefix_mask"])[b, :n]
  ref = np.asarray(jax.jit(model.apply)({"params": params}, x["images"], x["image_mask"],
                                        tokens, valid, prefix))
  for t, got in enumerate(steps):
    want = ref[np.arange(2), lens - 1 + t]
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
  assert int(cache["index"]) == seq + 2
  np.testing.assert_array_equal(np.asarray(cache["position"]), TINY.vision.num_patches + lens + 2)


def test_greedy_decode_compiles_once_per_shape(setup):
  model, params = setup
  x = _batch(lens=[4, 2], prefix_lens=[4, 2])
  decoding.greedy_decode(model, params, **x, num_steps=4)
  before = decoding.TRACE_COUNTS["greedy_decode"]
  y = _batch(lens=[6, 1], prefix_lens=[6, 1], seed=1)  # same shapes, new values
  out = decoding.greedy_decode(model, params, **y, num_steps=4)
  assert out.shape == (2, 4)
  assert decoding.TRACE_COUNTS["greedy_decode"] == before
  decoding.greedy_decode(model, params, **_batch(lens=[3], prefix_lens=[3]), num_steps=4)
  assert decoding.TRACE_COUNTS["greedy_decode"] == before + 1
