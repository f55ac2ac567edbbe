"""Action tokenizers: bins (uniform / quantile), FAST, vocabulary mapping, serialization."""

import json

import numpy as np
import pytest

from vlax.actions import (ActionVocab, BinTokenizer, FASTTokenizer, default_action_vocab,
                          fit_action_tokenizer, make_action_tokenizer, tokenizer_from_dict)
from vlax.errors import VlaxError


def _smooth(rng, n, k=10, a=5):
  t = np.linspace(0, 1, k)[:, None]
  return [0.8 * np.sin(2 * np.pi * (t * rng.uniform(0.2, 1.0, (1, a))
                                    + rng.uniform(0, 1, (1, a)))) for _ in range(n)]


def _noisy(rng, n, k=10, a=5):
  return [rng.uniform(-1, 1, (k, a)) for _ in range(n)]


@pytest.fixture(scope="module")
def fast():
  rng = np.random.default_rng(0)
  return FASTTokenizer(vocab_size=512, scale=10.0).fit(_smooth(rng, 300) + _noisy(rng, 300))


def test_uniform_bins_round_trip_within_half_bin():
  tok = BinTokenizer(num_bins=256)
  rng = np.random.default_rng(1)
  x = rng.uniform(-1, 1, (8, 7))
  x[0, :3] = [-1.0, 1.0, 0.0]
  ids = tok.encode(x)
  assert len(ids) == tok.max_tokens(8, 7) == 56
  assert min(ids) >= 0 and max(ids) < 256
  y = tok.decode(ids, 8, 7)
  assert y.shape == (8, 7) and y.dtype == np.float32
  assert np.abs(y - x).max() <= 1.0 / 256 + 1e-6  # half a bin of width 2/256
  # Out-of-range values clip to the end bins.
  assert tok.encode(np.array([[-5.0, 5.0]])) == [0, 255]


def test_bins_encode_tf_matches_numpy():
  import tensorflow as tf
  rng = np.random.default_rng(2)
  x = rng.uniform(-1.2, 1.2, (6, 4)).astype(np.float32)
  for tok in [BinTokenizer(num_bins=256),
              BinTokenizer(num_bins=32, strategy="quantile").fit(rng.normal(0, .3, (200, 6, 4)))]:
    np.testing.assert_array_equal(tok.encode_tf(tf.constant(x)).numpy(), tok.encode(x))


def test_quantile_bins_equalize_usage_on_skewed_data():
  rng = np.random.default_rng(3)
  data = np.clip(rng.exponential(0.1, (2000, 4, 3)) - 0.95, -1, 1)  # piled up near -1
  q = BinTokenizer(num_bins=16, strategy="quantile").fit(data)
  u = BinTokenizer(num_bins=16)
  count = lambda tok: np.bincount(np.concatenate([tok.encode(c) for c in data]),
                                  minlength=16)
  cq, cu = count(q), count(u)
  assert cq.min() > 0.8 * cq.mean() and cq.max() < 1.2 * cq.mean()
  assert cu.max() > 5 * cu.mean()  # uniform bins: most data in one or two bins
  # Narrow bins where the data is: lower mean reconstruction error than uniform bins.
  err = lambda tok: np.mean([np.abs(tok.decode(tok.encode(c), 4, 3) - c).mean()
                             for c in data[:200]])
  assert err(q) < 0.5 * err(u)


def test_fit_action_tokenizer_on_chunks_of_mixed_action_dims():
  rng = np.random.default_rng(1)
  chunks = _noisy(rng, 40, k=4, a=3) + [c ** 3 for c in _noisy(rng, 60, k=4, a=5)]
  quantile = fit_action_tokenizer(BinTokenizer(num_bins=8, strategy="quantile"), chunks)
  # Dims 0-2 are fitted over all 100 chunks, dims 3-4 only over the 5-D ones.
  cubed = np.concatenate([c[:, 3:] for c in chunks[40:]]).reshape(-1, 2)
  want = BinTokenizer(num_bins=8, strategy="quantile").fit(cubed)
  np.testing.assert_allclose(quantile.edges[3:], want.edges)
  all3 = np.concatenate([c[:, :3] for c in chunks])
  np.testing.assert_allclose(quantile.edges[:3],
                             BinTokenizer(num_bins=8, strategy="quantile").fit(all3).edges)
  fast = fit_action_tokenizer(FASTTokenizer(vocab_size=256, scale=10.0), chunks)
  assert fast.to_dict() == FASTTokenizer(vocab_size=256, scale=10.0).fit(chunks).to_dict()
  uniform = BinTokenizer(num_bins=8)
  assert fit_action_tokenizer(uniform, chunks) is uniform and uniform.edges is None
  with pytest.raises(VlaxError, match="no action chunks"):
    fit_action_tokenizer(FASTTokenizer(), [])
  with pytest.raises(VlaxError, match="different lengths"):
    fit_action_tokenizer(BinTokenizer(strategy="quantile"), [chunks[0], chunks[0][:2]])


def test_quantile_requires_fit():
  with pytest.raises(VlaxError, match="fit"):
    BinTokenizer(strategy="quantile").encode(np.zeros((2, 2)))


def test_fast_reconstruction_error_bound(fast):
  rng = np.random.default_rng(4)
  k = 10
  # Rounding each DCT coefficient errs by <= 0.5/scale; an orthonormal inverse spreads
  # that to at most sqrt(K) * 0.5 / scale per sample.
  bound = np.sqrt(k) * 0.5 / fast.scale
  errs = [np.abs(fast.decode(fast.encode(c), k, 5) - c).max() for c in _smooth(rng, 50)]
  assert max(errs) <= bound + 1e-6
  assert np.mean(errs) < bound / 2


def test_fast_fewer_tokens_for_smooth_chunks(fast):
  rng = np.random.default_rng(5)
  smooth = np.mean([len(fast.encode(c)) for c in _smooth(rng, 100)])
  noisy = np.mean([len(fast.encode(c)) for c in _noisy(rng, 100)])
  assert smooth < 0.8 * noisy
  assert noisy <= fast.max_tokens(10, 5)
  ids = fast.encode(_noisy(rng, 1)[0])
  assert min(ids) >= 0 and max(ids) < fast.vocab_size


def test_decode_tolerates_invalid_ids(fast):
  rng = np.random.default_rng(6)
  for tok in [BinTokenizer(), fast]:
    good = tok.encode(_smooth(rng, 1)[0])
    for ids in ([], [-1, -7], [10**9], list(rng.integers(-50, 5000, 400)), good * 3,
                good[:3], np.array(good)):
      out = tok.decode(ids, 10, 5)
      assert out.shape == (10, 5) and np.all(np.isfinite(out))


def test_fast_decode_truncated_loses_only_high_frequencies(fast):
  c = _smooth(np.random.default_rng(7), 1)[0]
  ids = fast.encode(c)
  partial = fast.decode(ids[: max(1, len(ids) // 2)], 10, 5)
  assert np.abs(partial - c).max() < 1.0  # still a plausible chunk, not garbage


def test_serialization_round_trip(fast):
  rng = np.random.default_rng(8)
  x = _smooth(rng, 1)[0]
  q = BinTokenizer(num_bins=8, strategy="quantile").fit(rng.normal(0, .3, (100, 10, 5)))
  for tok in [BinTokenizer(num_bins=64, low=-2, high=2), q, fast]:
    d = json.loads(json.dumps(tok.to_dict()))
    tok2 = tokenizer_from_dict(d)
    assert type(tok2) is type(tok)
    assert tok2.encode(x) == tok.encode(x)
    np.testing.assert_array_equal(tok2.decode(tok.encode(x), 10, 5),
                                  tok.decode(tok.encode(x), 10, 5))
  with pytest.raises(VlaxError, match="unknown type"):
    tokenizer_from_dict({"type": "nope"})


def test_fast_errors():
  with pytest.raises(VlaxError, match="fit"):
    FASTTokenizer().encode(np.zeros((4, 2)))
  with pytest.raises(VlaxError, match="vocab_size"):
    FASTTokenizer(vocab_size=8, scale=100.0).fit([np.ones((10, 3))])
  assert isinstance(make_action_tokenizer("quantile", num_bins=4), BinTokenizer)
  with pytest.raises(VlaxError):
    make_action_tokenizer("nope")


def test_action_vocab_mapping():
  v = ActionVocab(start=1000, size=256)
  assert v.end == 1256
  assert v.to_vocab([0, 255]) == [1000, 1255]
  np.testing.assert_array_equal(v.from_vocab([999, 1000, 1255, 1256, -3]), [-1, 0, 255, -1, -1])
  assert default_action_vocab(257152, 1024) == ActionVocab(256000, 1024)  # <loc> ids
  assert default_action_vocab(1000, 256) == ActionVocab(1000, 256)  # after text pieces
  assert default_action_vocab(257152, 2048) == ActionVocab(257152, 2048)
  assert ActionVocab.from_dict(v.to_dict()) == v
  with pytest.raises(VlaxError):
    ActionVocab(0, 0)
