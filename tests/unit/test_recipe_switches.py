"""The Meta-World recipe switches of config.data / config.loss (README "Recipe switches"):
random shift, proprio dropout, proprio source, zero cameras, action label smoothing."""

import itertools

import numpy as np
import pytest
import tensorflow as tf

import _seq_utils as S
from vlax.actions import BinTokenizer, default_action_vocab
from vlax.data import images, robot
from vlax.data.oxe import toy
from vlax.data.sequence import SequenceBuilder, SequenceConfig, numpy_iterator
from vlax.data.text_tokenizer import load_toy_tokenizer
from vlax.errors import VlaxError
from vlax.training import config_checks

SIZE = 16
SHIFT = 2


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("recipe_toy"))
  toy.write_toy_robot_data(d, num_episodes=6, image_size=SIZE, episode_len=6, num_shards=1)
  return d, str(tmp_path_factory.mktemp("recipe_cache"))


def _frames(data, n=12, **kw):
  d, cache = data
  args = dict(image_size=SIZE, chunk_len=2, seed=0, shuffle_buffer=20, augment=False,
              stats_cache_dir=cache, process_index=0, process_count=1, progress=False,
              history=2)
  args.update(kw)
  ds, _ = robot.make_robot_dataset([("toy_reach_b", 1.0)], d, **args)
  return list(itertools.islice(ds.as_numpy_iterator(), n))


def _np_shift(img, dy, dx):
  """Reference: edge pad by SHIFT, crop at offset (SHIFT + dy, SHIFT + dx)."""
  h, w = img.shape[-3], img.shape[-2]
  pad = [(0, 0)] * (img.ndim - 3) + [(SHIFT, SHIFT), (SHIFT, SHIFT), (0, 0)]
  p = np.pad(img, pad, mode="edge")
  return p[..., SHIFT + dy:SHIFT + dy + h, SHIFT + dx:SHIFT + dx + w, :]


def _offsets(plain, shifted):
  """The (dy, dx) that turn `plain` [H, W, 3] into `shifted`."""
  r = range(-SHIFT, SHIFT + 1)
  return {(dy, dx) for dy in r for dx in r
          if np.array_equal(_np_shift(plain, dy, dx), shifted)}


def test_random_shift_op_is_edge_pad_and_crop_same_over_history():
  rng = np.random.default_rng(0)
  hist = rng.integers(0, 256, (3, SIZE, SIZE, 3)).astype(np.uint8)
  out = images.random_shift(tf.constant(hist), SHIFT, tf.constant([5, 7], tf.int64)).numpy()
  per_step = [_offsets(hist[t], out[t]) for t in range(3)]
  assert all(len(o) == 1 for o in per_step) and per_step[0] == per_step[1] == per_step[2]
  np.testing.assert_array_equal(
      images.random_shift(tf.constant(hist), 0, tf.constant([5, 7], tf.int64)).numpy(), hist)


def test_random_shift_pipeline_per_example_same_across_history_train_only(data):
  plain = _frames(data)
  shifted = _frames(data, random_shift=SHIFT)
  offsets = []
  for a, b in zip(plain, shifted):
    np.testing.assert_array_equal(a["action"], b["action"])  # same order, same frames
    for cam in ("primary", "wrist"):
      x, y = a["observation"][f"image_{cam}"], b["observation"][f"image_{cam}"]
      common = _offsets(x[0], y[0]) & _offsets(x[1], y[1])
      assert common, f"history steps of camera {cam} were shifted differently"
      if len(common) == 1:
        offsets.append(next(iter(common)))
  assert len(set(offsets)) > 3  # differs across examples (and cameras)
  assert any(o != (0, 0) for o in offsets)
  # Validation / eval stream: never shifted.
  ev = _frames(data, train=False, n=6, split="train")
  ev_shift = _frames(data, train=False, n=6, random_shift=SHIFT, split="train")
  for a, b in zip(ev, ev_shift):
    np.testing.assert_array_equal(a["observation"]["image_primary"],
                                  b["observation"]["image_primary"])


def _builder(**kw):
  text = load_toy_tokenizer()
  tok = BinTokenizer()
  cfg = SequenceConfig(**{"max_len": 64, "cameras": ("primary", "wrist"),
                          "image_size": (S.IMG, S.IMG), **kw})
  return SequenceBuilder(cfg, text, tok, default_action_vocab(text.vocab_size,
                                                              tok.vocab_size))


def test_proprio_dropout_prompt_is_the_no_proprio_prompt():
  frames, _, _ = S.synthetic_frames("arm7", 0, n=6)
  dropped = np.array([True, False, True, False, False, True])
  frames["observation"]["proprio_dropped"] = dropped
  with_p = list(numpy_iterator(_builder(proprio_bins=16).robot_dataset(
      tf.data.Dataset.from_tensor_slices(frames))))
  del frames["observation"]["proprio_dropped"]
  never = list(numpy_iterator(_builder(proprio_bins=16).robot_dataset(
      tf.data.Dataset.from_tensor_slices(frames))))
  off = list(numpy_iterator(_builder(proprio_bins=0).robot_dataset(
      tf.data.Dataset.from_tensor_slices(frames))))
  for d, ex, n, o in zip(dropped, with_p, never, off):
    want = o if d else n
    np.testing.assert_array_equal(ex["tokens"], want["tokens"])
    np.testing.assert_array_equal(ex["prefix_mask"], want["prefix_mask"])
  assert not np.array_equal(never[0]["tokens"], off[0]["tokens"])


def test_proprio_dropout_pipeline_rate_and_train_only(data):
  fr = _frames(data, n=200, proprio_dropout=0.5, history=1)
  rate = np.mean([f["observation"]["proprio_dropped"] for f in fr])
  assert 0.35 < rate < 0.65, rate
  ev = _frames(data, n=4, proprio_dropout=0.5, train=False, history=1,
                split="train")
  assert "proprio_dropped" not in ev[0]["observation"]
  assert "proprio_dropped" not in _frames(data, n=1, history=1)[0]["observation"]


@pytest.mark.parametrize("key,value", [("data.random_shift", -1),
                                       ("data.proprio_dropout", 1.5),
                                       ("loss.action_label_smoothing", -0.1)])
def test_config_checks(key, value):
  import ml_collections
  c = ml_collections.ConfigDict({"data": {}, "loss": {}})
  group, name = key.split(".")
  c[group][name] = value
  with pytest.raises(VlaxError, match=key.replace(".", r"\.")):
    config_checks.check_train_config(c)
