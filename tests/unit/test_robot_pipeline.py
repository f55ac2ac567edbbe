"""The whole robot pipeline on a mixture of the two toy embodiments."""

import itertools

import numpy as np
import pytest
import tensorflow as tf

from vlax.data import images, normalization, rlds, robot
from vlax.data.oxe import toy
from vlax.errors import VlaxError

SIZE = 32
K = 3
EP_LEN = 6
MIX = [("toy_reach_a", 1.0), ("toy_reach_b", 1.0)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("robot_toy"))
  toy.write_toy_robot_data(d, num_episodes=10, image_size=SIZE, episode_len=EP_LEN,
                           num_shards=2)
  return d, str(tmp_path_factory.mktemp("robot_cache"))


def _build(data, **kw):
  d, cache = data
  datasets = kw.pop("datasets", MIX)
  args = dict(image_size=SIZE, chunk_len=K, seed=0, shuffle_buffer=50,
              stats_cache_dir=cache, process_index=0, process_count=1, progress=False)
  args.update(kw)
  return robot.make_robot_dataset(datasets, d, **args)


def _take(ds, n):
  return list(itertools.islice(ds.as_numpy_iterator(), n))


def test_mixture_frames_are_padded_masked_and_chunked(data):
  ds, stats = _build(data)
  assert set(stats) == {"toy_reach_a", "toy_reach_b"}
  frames = _take(ds, 60)
  f = frames[0]
  assert f["observation"]["image_primary"].shape == (SIZE, SIZE, 3)
  assert f["observation"]["image_primary"].dtype == np.uint8
  assert f["observation"]["image_wrist"].shape == (SIZE, SIZE, 3)
  assert f["observation"]["proprio"].shape == (4,)
  assert f["action"].shape == (K, 4) and f["action"].dtype == np.float32
  assert f["action_pad_mask"].shape == (K, 4)
  seen = {int(x["dataset_index"]) for x in frames}
  assert seen == {0, 1}
  for x in frames:
    i = int(x["dataset_index"])
    name = x["dataset_name"].decode()
    assert name == MIX[i][0]
    obs, mask = x["observation"], x["action_pad_mask"]
    assert mask[0].any()  # the current step is always real
    assert x["language_instruction"].startswith(b"move to the")
    if i == 0:
      assert int(x["action_dim"]) == 3
      assert not mask[:, 3].any() and (x["action"][:, 3] == 0).all()
      np.testing.assert_array_equal(obs["proprio_pad_mask"], [True, True, False, False])
      assert not obs["image_wrist_mask"] and (obs["image_wrist"] == 0).all()
      assert obs["image_primary_mask"] and obs["image_primary"].any()
      gripper = 2
    else:
      assert int(x["action_dim"]) == 4
      assert obs["proprio_pad_mask"].all()
      assert obs["image_wrist_mask"] and obs["image_wrist"].any()
      gripper = 3
    # Time mask is the same for every real dim; padded steps are zero.
    t_valid = mask[:, 0]
    assert (mask[:, :gripper + 1] == t_valid[:, None]).all()
    assert (x["action"][~t_valid] == 0).all()
    real = x["action"][t_valid]
    assert (np.abs(real[:, :gripper]) <= 1).all()  # normalized dims
    assert set(np.unique(real[:, gripper])) <= {0.0, 1.0}  # raw gripper


def test_eval_stream_is_finite_ordered_and_chunks_match_raw(data):
  d, _ = data
  ds, stats = _build(data, datasets=[("toy_reach_a", 1.0)], train=False, split="train")
  frames = list(ds.as_numpy_iterator())
  raw = list(rlds.read_trajectories("toy_reach_a", d, split="train", process_index=0,
                                    process_count=1).as_numpy_iterator())
  assert len(frames) == sum(len(r["action"]) for r in raw) == 10 * EP_LEN
  s = stats["toy_reach_a"]
  a = normalization.normalize(raw[0]["action"], s["action"], "bounds")
  for t in range(EP_LEN):
    f = frames[t]
    for k in range(K):
      if t + k < EP_LEN:
        np.testing.assert_allclose(f["action"][k, :3], a[t + k], atol=1e-5)
        assert f["action_pad_mask"][k, :3].all()
      else:
        assert not f["action_pad_mask"][k].any()
  # Eval images are the plain decode + resize of the stored bytes (no augmentation).
  for t in range(2):
    img = images.process(tf.constant(raw[0]["observation"]["image"][t]), (SIZE, SIZE))
    np.testing.assert_array_equal(frames[t]["observation"]["image_primary"], img.numpy())
  p = normalization.normalize(raw[0]["observation"]["state"], s["proprio"], "bounds")
  np.testing.assert_allclose(frames[0]["observation"]["proprio"][:2], p[0], atol=1e-5)


def _signature(frames):
  return [(int(f["dataset_index"]), f["action"].tobytes(),
           f["observation"]["image_primary"].tobytes()) for f in frames]


def test_same_seed_same_stream_different_seed_different(data):
  a = _signature(_take(_build(data, seed=3)[0], 40))
  b = _signature(_take(_build(data, seed=3)[0], 40))
  c = _signature(_take(_build(data, seed=4)[0], 40))
  assert a == b
  assert a != c


def test_augmentation_is_seeded_and_eval_has_none(data):
  img = tf.constant(np.random.default_rng(0).integers(0, 255, (SIZE, SIZE, 3), np.uint8))
  data_bytes = tf.io.encode_png(img)
  cfg = images.AugmentConfig()
  s1 = tf.constant([1, 2], tf.int64)
  s2 = tf.constant([1, 3], tf.int64)
  out1 = images.process(data_bytes, (SIZE, SIZE), augment_config=cfg, seed=s1).numpy()
  out1b = images.process(data_bytes, (SIZE, SIZE), augment_config=cfg, seed=s1).numpy()
  out2 = images.process(data_bytes, (SIZE, SIZE), augment_config=cfg, seed=s2).numpy()
  plain = images.process(data_bytes, (SIZE, SIZE)).numpy()
  np.testing.assert_array_equal(out1, out1b)
  assert not np.array_equal(out1, out2)
  assert not np.array_equal(out1, plain)
  np.testing.assert_array_equal(plain, img.numpy())
  # Missing camera stays zero even with augmentation.
  empty = images.process(tf.constant(b""), (SIZE, SIZE), augment_config=cfg, seed=s1)
  assert not empty.numpy().any()


def test_train_images_are_augmented_and_eval_not(data):
  train = _take(_build(data, datasets=[("toy_reach_a", 1.0)], shuffle_buffer=1,
                       split="train")[0], 6)
  noaug = _take(_build(data, datasets=[("toy_reach_a", 1.0)], shuffle_buffer=1,
                       split="train", augment=False)[0], 6)
  same = sum(np.array_equal(a["observation"]["image_primary"],
                            b["observation"]["image_primary"]) for a, b in zip(train, noaug))
  assert same == 0
  # Same frames otherwise (same seed, same order).
  for a, b in zip(train, noaug):
    np.testing.assert_array_equal(a["action"], b["action"])


def test_history_window(data):
  ds, _ = _build(data, history=2, train=False, datasets=[("toy_reach_b", 1.0)],
                 split="train")
  frames = _take(ds, 3)
  obs = frames[0]["observation"]
  assert obs["image_primary"].shape == (2, SIZE, SIZE, 3)
  assert obs["proprio"].shape == (2, 4)
  np.testing.assert_array_equal(obs["timestep_pad_mask"], [False, True])
  np.testing.assert_array_equal(frames[1]["observation"]["timestep_pad_mask"], [True, True])
  np.testing.assert_array_equal(frames[1]["observation"]["image_primary"][0],
                                frames[0]["observation"]["image_primary"][1])


def test_weights_shape_the_mixture(data):
  ds, _ = _build(data, datasets=[("toy_reach_a", 3.0), ("toy_reach_b", 1.0)],
                 augment=False, image_size=8)
  idx = np.array([int(f["dataset_index"]) for f in _take(ds, 400)])
  frac = (idx == 0).mean()
  assert 0.65 < frac < 0.85, frac


def test_bad_arguments(data):
  with pytest.raises(VlaxError, match="weight"):
    _build(data, datasets=[("toy_reach_a", 0.0)])
  with pytest.raises(VlaxError, match="unknown dataset"):
    _build(data, datasets=[("toy_reach_zz", 1.0)])
  with pytest.raises(VlaxError, match="max_action_dim"):
    _build(data, max_action_dim=2)


def test_inspect_data_and_stats_cli_library(data, capsys, tmp_path):
  from vlax.data import inspect as vinspect  # pylint: disable=g-import-not-at-top
  d, cache = data
  r = vinspect.inspect_data(["toy_reach_a", "toy_reach_b"], d, batch_size=4, image_size=16,
                            chunk_len=2, stats_cache_dir=cache)
  keys = r["keys"]
  assert keys["action"]["shape"] == [4, 2, 4] and keys["action"]["dtype"] == "float32"
  assert -1 <= keys["action"]["min"] and keys["action"]["max"] <= 1
  assert keys["observation/image_primary"]["shape"] == [4, 16, 16, 3]
  assert keys["observation/image_primary_mask"]["sum"] == 4
  assert "sum" in keys["action_pad_mask"]
  assert keys["dataset_name"]["dtype"] == "string"
  import json  # pylint: disable=g-import-not-at-top
  json.dumps(r)  # JSON-safe
  out = tmp_path / "stats.json"
  s = vinspect.compute_and_print_stats("toy_reach_b", d, str(out), cache_dir=cache)
  assert json.loads(out.read_text())["num_transitions"] == s["num_transitions"]
  vinspect.compute_and_print_stats("toy_reach_b", d, cache_dir=cache)
  assert json.loads(capsys.readouterr().out)["action"]["mask"] == [True, True, True, False]
