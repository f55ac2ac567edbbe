"""Normalization (numpy/tf), streaming statistics, and the statistics cache."""

import dataclasses
import glob
import os

import numpy as np
import pytest
import tensorflow as tf

from vlax.data import normalization, statistics
from vlax.data.oxe import registry, toy
from vlax.errors import VlaxError


def _stats(x, mask=None):
  out = statistics.compute_statistics([{"action": x}], dataset_name="t",
                                      action_mask=mask, progress=False)
  return out["action"]


def test_bounds_maps_quantiles_to_unit_and_clips():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(1000, 3)) * [1, 5, 0.1] + [0, 2, -1]
  s = _stats(x)
  lo, hi = np.array(s["q01"]), np.array(s["q99"])
  y = normalization.normalize(np.stack([lo, hi]), s, "bounds")
  np.testing.assert_allclose(y, [[-1] * 3, [1] * 3], atol=1e-5)
  y = normalization.normalize(x, s, "bounds")
  assert y.min() >= -1 and y.max() <= 1
  assert y.dtype == np.float32 or y.dtype == np.float64


def test_normal_mode_and_inverse():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(500, 2)) * [3, 0.5] + [1, -2]
  s = _stats(x)
  y = normalization.normalize(x, s, "normal")
  np.testing.assert_allclose(y.mean(0), 0, atol=1e-6)
  np.testing.assert_allclose(y.std(0), 1, atol=1e-6)
  np.testing.assert_allclose(normalization.unnormalize(y, s, "normal"), x, atol=1e-6)


def test_masked_dims_stay_raw_and_unnormalize_inverts_in_range():
  rng = np.random.default_rng(2)
  x = np.concatenate([rng.uniform(-3, 3, (400, 2)), rng.integers(0, 2, (400, 1))], 1)
  s = _stats(x, mask=[True, True, False])
  assert s["mask"] == [True, True, False]
  y = normalization.normalize(x, s, "bounds")
  np.testing.assert_array_equal(y[:, 2], x[:, 2])
  inside = np.all((x[:, :2] >= s["q01"][:2]) & (x[:, :2] <= s["q99"][:2]), axis=1)
  back = normalization.unnormalize(y, s, "bounds")
  np.testing.assert_allclose(back[inside], x[inside], atol=1e-5)
  np.testing.assert_array_equal(back[:, 2], x[:, 2])


@pytest.mark.parametrize("mode", ["bounds", "normal"])
def test_tf_matches_numpy(mode):
  rng = np.random.default_rng(3)
  x = rng.normal(size=(50, 4)).astype(np.float32)
  s = _stats(x, mask=[True, False, True, True])
  y_np = normalization.normalize(x, s, mode)
  y_tf = normalization.normalize_tf(tf.constant(x), s, mode).numpy()
  np.testing.assert_allclose(y_tf, y_np, atol=1e-5)
  back = normalization.unnormalize_tf(tf.constant(y_np), s, mode).numpy()
  np.testing.assert_allclose(back, normalization.unnormalize(y_np, s, mode), atol=1e-5)


def test_zero_variance_gives_no_nan():
  x = np.stack([np.full(100, 3.0), np.linspace(0, 1, 100)], 1)
  s = _stats(x)
  assert s["std"][0] == 0
  for mode in ("bounds", "normal"):
    y = normalization.normalize(x, s, mode)
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y[:, 0], 0)
    np.testing.assert_allclose(normalization.unnormalize(y, s, mode)[:, 0], 3.0)


def test_statistics_match_numpy_over_several_trajectories():
  rng = np.random.default_rng(4)
  trajs = [{"action": rng.normal(size=(int(rng.integers(1, 30)), 3)) * 2 + 1,
            "proprio": rng.uniform(size=(0, 2))} for _ in range(20)]
  for t in trajs:
    t["proprio"] = rng.uniform(size=(len(t["action"]), 2))
  out = statistics.compute_statistics(trajs, dataset_name="t", progress=False)
  a = np.concatenate([t["action"] for t in trajs])
  p = np.concatenate([t["proprio"] for t in trajs])
  for key, ref in (("action", a), ("proprio", p)):
    s = out[key]
    np.testing.assert_allclose(s["mean"], ref.mean(0), atol=1e-10)
    np.testing.assert_allclose(s["std"], ref.std(0), atol=1e-10)
    np.testing.assert_allclose(s["min"], ref.min(0))
    np.testing.assert_allclose(s["max"], ref.max(0))
    np.testing.assert_allclose(s["q01"], np.quantile(ref, 0.01, axis=0))
    np.testing.assert_allclose(s["q99"], np.quantile(ref, 0.99, axis=0))
  assert out["num_transitions"] == len(a)
  assert out["num_trajectories"] == 20


def test_reservoir_quantiles_close_on_large_data():
  rng = np.random.default_rng(5)
  trajs = [{"action": rng.uniform(size=(100, 1))} for _ in range(100)]
  out = statistics.compute_statistics(trajs, dataset_name="t", progress=False,
                                      reservoir_size=2000)
  assert out["quantiles"].startswith("reservoir")
  assert abs(out["action"]["q01"][0] - 0.01) < 0.01
  assert abs(out["action"]["q99"][0] - 0.99) < 0.01
  assert abs(out["action"]["mean"][0] - 0.5) < 0.01


def test_one_dimensional_actions():
  out = statistics.compute_statistics([{"action": np.arange(10.0)}], dataset_name="t",
                                      progress=False)
  assert len(out["action"]["mean"]) == 1
  y = normalization.normalize(np.arange(10.0)[:, None], out["action"])
  assert y.shape == (10, 1) and np.isfinite(y).all()


def test_nan_error_names_dataset_key_and_dimension():
  x = np.zeros((5, 3))
  x[2, 1] = np.nan
  with pytest.raises(VlaxError, match=r"'mydata'.*'action'.*dimension 1"):
    statistics.compute_statistics([{"action": np.zeros((2, 3))}, {"action": x}],
                                  dataset_name="mydata", progress=False)
  p = np.zeros((5, 2))
  p[0, 1] = np.inf
  with pytest.raises(VlaxError, match=r"'proprio'.*dimension 1"):
    statistics.compute_statistics([{"action": np.zeros((5, 3)), "proprio": p}],
                                  dataset_name="mydata", progress=False)


def test_unknown_mode_and_dim_mismatch():
  s = _stats(np.zeros((4, 2)))
  with pytest.raises(VlaxError, match="mode"):
    normalization.normalize(np.zeros((1, 2)), s, "minmax")
  with pytest.raises(VlaxError, match="dims"):
    normalization.normalize(np.zeros((1, 3)), s)


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("toy_stats")
  toy.write_toy_robot_data(str(d), num_episodes=20, image_size=16, episode_len=5,
                           datasets=("toy_reach_a",))
  return str(d)


def test_dataset_statistics_cache_hit_and_recompute(toy_dir, tmp_path, monkeypatch):
  cache = str(tmp_path / "cache")
  s1 = statistics.get_dataset_statistics("toy_reach_a", toy_dir, cache_dir=cache,
                                         progress=False)
  files = glob.glob(os.path.join(cache, "stats", "toy_reach_a-*.json"))
  assert len(files) == 1
  assert s1["num_trajectories"] == 19  # train[:95%] of 20 episodes
  assert s1["num_transitions"] == 95
  assert s1["action"]["mask"] == [True, True, False]

  # Cache hit: no recomputation.
  def boom(*a, **k):
    raise AssertionError("recomputed")
  monkeypatch.setattr(statistics, "compute_statistics", boom)
  assert statistics.get_dataset_statistics("toy_reach_a", toy_dir, cache_dir=cache) == s1
  monkeypatch.undo()

  # A changed spec (or standardize) -> a new key, recomputed.
  spec = registry.get_spec("toy_reach_a")
  try:
    registry.register(dataclasses.replace(spec, action_normalization_mask=(True,) * 3),
                      overwrite=True)
    s2 = statistics.get_dataset_statistics("toy_reach_a", toy_dir, cache_dir=cache,
                                           progress=False)
  finally:
    registry.register(spec, overwrite=True)
  assert s2["action"]["mask"] == [True, True, True]
  assert len(glob.glob(os.path.join(cache, "stats", "toy_reach_a-*.json"))) == 2

  # Changed data files -> recomputed.
  key_before, _ = statistics.cache_key(spec, toy_dir, spec.train_split)
  with open(os.path.join(toy_dir, "toy_reach_a", "1.0.0", "extra.txt"), "w") as f:
    f.write("x")
  key_after, _ = statistics.cache_key(spec, toy_dir, spec.train_split)
  assert key_before != key_after
  statistics.get_dataset_statistics("toy_reach_a", toy_dir, cache_dir=cache, progress=False)
  assert len(glob.glob(os.path.join(cache, "stats", "toy_reach_a-*.json"))) == 3
