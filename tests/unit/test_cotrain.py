"""Co-training end to end: robot frames of two embodiments + web examples -> fixed-shape
batches whose action tokens decode (through unnormalize) back to robot-unit actions."""

import itertools
import os

import numpy as np
import pytest
import tensorflow as tf

import _seq_utils as S
from vlax.actions import BinTokenizer, FASTTokenizer, default_action_vocab
from vlax.data import cotrain, normalization, web
from vlax.data.sequence import (SequenceBuilder, SequenceConfig, collect_action_chunks,
                                target_action_ids)
from vlax.data.text_tokenizer import load_toy_tokenizer
from vlax.errors import VlaxError

NAMES = ["arm7", "base3"]


def _builder(tok=None, max_len=64):
  text = load_toy_tokenizer()
  tok = tok or BinTokenizer()
  cfg = SequenceConfig(max_len=max_len, cameras=("primary", "wrist"),
                       image_size=(S.IMG, S.IMG))
  return SequenceBuilder(cfg, text, tok, default_action_vocab(text.vocab_size,
                                                              tok.vocab_size))


def _synthetic_robot():
  """Infinite stream of both embodiments' frames + {index: (frames, raw, stats)}."""
  parts, info = [], {}
  for i, name in enumerate(NAMES):
    frames, raw, stats = S.synthetic_frames(name, i, n=6)
    info[i] = (frames, raw, stats)
    parts.append(tf.data.Dataset.from_tensor_slices(frames).repeat())
  return tf.data.Dataset.sample_from_datasets(parts, seed=0), info


def _iterator(builder, **kw):
  robot, info = _synthetic_robot()
  args = dict(builder=builder, global_batch_size=8, robot_frames=robot,
              num_robot_datasets=2, web_sources=[web.WebSource("toy", num_examples=32)],
              web_weight=0.5, seed=0, process_index=0, process_count=1,
              shuffle_buffer=16)
  args.update(kw)
  return cotrain.make_train_iterator(**args), info


def _find_raw(frames, raw, ex):
  """Index of the synthetic frame an example was built from (by its first image)."""
  imgs = frames["observation"]["image_primary"] / 127.5 - 1
  i = int(np.argmin(np.abs(imgs - ex["images"][0]).reshape(len(imgs), -1).sum(1)))
  return i


@pytest.mark.parametrize("kind", ["bins", "fast"])
def test_end_to_end_batches_decode_to_robot_units(kind):
  if kind == "fast":
    robot, _ = _synthetic_robot()
    tok = FASTTokenizer(vocab_size=256, scale=50.0).fit(collect_action_chunks(robot, 48))
  else:
    tok = BinTokenizer()
  b = _builder(tok)
  it, info = _iterator(b)
  seen_sources, seen_datasets = [], set()
  for batch in itertools.islice(it, 4):
    assert batch["tokens"].shape == (8, 64) and batch["images"].shape == (8, 2, S.IMG,
                                                                         S.IMG, 3)
    for key in ("input_mask", "prefix_mask", "loss_mask", "action_token_mask"):
      assert batch[key].shape == (8, 64) and batch[key].dtype == bool
    assert not (batch["loss_mask"] & batch["prefix_mask"]).any()
    assert not (batch["action_token_mask"] & ~batch["loss_mask"]).any()
    for j in range(8):
      ex = {k: v[j] for k, v in batch.items()}
      src, di = int(ex["source"]), int(ex["dataset_index"])
      seen_sources.append(src)
      seen_datasets.add(di)
      if src == 1:  # web: answer is the target, no action tokens, one image
        assert di == 2 and not ex["action_token_mask"].any()
        assert ex["image_mask"].tolist() == [True, False]
        n_prompt, n = int(ex["prefix_mask"].sum()), int(ex["input_mask"].sum())
        assert b.text.decode(ex["tokens"][n_prompt:n - 1]).strip()
        continue
      frames, raw, stats = info[di]
      a = S.EMBODIMENTS[NAMES[di]][0]
      i = _find_raw(frames, raw, ex)
      norm = b.actions_from_tokens(target_action_ids(ex, b.eos_id), a, S.K)
      got = normalization.unnormalize(norm, stats["action"])
      valid = frames["action_pad_mask"][i, :, 0]
      s = stats["action"]
      half = (np.asarray(s["q99"]) - np.asarray(s["q01"])) / 2
      if kind == "bins":
        tol = np.where(s["mask"], half, 1.0) / 256 + 1e-5
      else:
        tol = np.where(s["mask"], half, 1.0) * np.sqrt(S.K) * 0.5 / tok.scale + 1e-5
      assert (np.abs(got - raw[i])[valid] <= tol).all(), (kind, NAMES[di], i)
  assert set(seen_sources) == {0, 1} and seen_datasets == {0, 1, 2}
  assert it.counters.total() == 0


def test_deterministic_and_ratio():
  b = _builder()
  it1, _ = _iterator(b, seed=3)
  it2, _ = _iterator(b, seed=3)
  it3, _ = _iterator(b, seed=4)
  s1 = np.concatenate([next(it1)["source"] for _ in range(8)])
  s2 = np.concatenate([next(it2)["source"] for _ in range(8)])
  s3 = np.concatenate([next(it3)["source"] for _ in range(8)])
  np.testing.assert_array_equal(s1, s2)
  assert not np.array_equal(s1, s3)
  assert 0.3 < s1.mean() < 0.7  # ~50% web


def test_schedule_and_web_only_robot_only():
  b = _builder()
  it, _ = _iterator(b, web_schedule=[(0, 0.0), (2, 1.0)], global_batch_size=4)
  sources = [next(it)["source"].tolist() for _ in range(4)]
  assert sources[0] == [0] * 4 and sources[2] == sources[3] == [1] * 4
  w = lambda s: float(cotrain.web_weight_at(s, 0.5, [(0, 0.5), (100, 0.1)]))
  assert w(0) == 0.5 and abs(w(50) - 0.3) < 1e-6 and abs(w(1000) - 0.1) < 1e-6
  # Resuming continues the schedule.
  it, _ = _iterator(b, web_schedule=[(0, 0.0), (2, 1.0)], global_batch_size=4, start_step=5)
  assert next(it)["source"].tolist() == [1] * 4
  it, _ = _iterator(b, web_sources=[])
  assert next(it)["source"].tolist() == [0] * 8
  it, _ = _iterator(b, robot_frames=None)
  assert next(it)["source"].tolist() == [1] * 8


def test_per_host_batches():
  b = _builder()
  it, _ = _iterator(b, global_batch_size=8, process_index=1, process_count=2)
  assert next(it)["tokens"].shape == (4, 64)
  with pytest.raises(VlaxError, match="divisible"):
    _iterator(b, global_batch_size=7, process_index=0, process_count=2)


# --- real toy datasets through the data helper's robot pipeline -----------------------

SIZE, K, EP_LEN = 16, 3, 6


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
  from vlax.data.oxe import toy
  d = str(tmp_path_factory.mktemp("toy_robot"))
  toy.write_toy_robot_data(d, num_episodes=4, image_size=SIZE, episode_len=EP_LEN,
                           num_shards=1)
  return d, str(tmp_path_factory.mktemp("toy_cache"))


def test_toy_robot_datasets_round_trip(toy_data):
  from vlax.data import rlds, robot
  d, cache = toy_data
  text = load_toy_tokenizer()
  tok = BinTokenizer()
  cfg = SequenceConfig(max_len=48, cameras=("primary", "wrist"), image_size=(SIZE, SIZE))
  b = SequenceBuilder(cfg, text, tok, default_action_vocab(text.vocab_size, 256))
  for index, name in enumerate(["toy_reach_a", "toy_reach_b"]):
    frames, stats = robot.make_robot_dataset(
        [(name, 1.0)], d, image_size=SIZE, cameras=("primary", "wrist"), chunk_len=K,
        train=False, split="train", stats_cache_dir=cache, process_index=0,
        process_count=1, progress=False)
    exs = list(b.robot_dataset(frames).take(EP_LEN).as_numpy_iterator())
    raw = next(rlds.read_trajectories(name, d, split="train", process_index=0,
                                      process_count=1).as_numpy_iterator())["action"]
    s = stats[name]["action"]
    a = raw.shape[1]
    lo, hi = np.asarray(s["q01"]), np.asarray(s["q99"])
    half = np.maximum((hi - lo) / 2, 1e-6)
    tol = np.where(s["mask"], half, 1.0) / 256 + 1e-4
    for t, ex in enumerate(exs):
      assert int(ex["dataset_index"]) == 0 and int(ex["source"]) == 0
      norm = b.actions_from_tokens(target_action_ids(ex, b.eos_id), a, K)
      got = normalization.unnormalize(norm, s)
      n_valid = min(K, EP_LEN - t)
      want = raw[t:t + n_valid]
      want = np.where(s["mask"], np.clip(want, lo, hi), want)  # "bounds" clips outliers
      assert (np.abs(got[:n_valid] - want) <= tol).all(), (name, t)
      n_act = int(ex["action_token_mask"].sum())
      assert n_act == n_valid * a  # steps past the episode end are not targets


def test_toy_robot_mixture_with_web_batches(toy_data):
  from vlax.data import robot
  d, cache = toy_data
  text = load_toy_tokenizer()
  frames, stats = robot.make_robot_dataset(
      [("toy_reach_a", 1.0), ("toy_reach_b", 1.0)], d, image_size=SIZE,
      cameras=("primary", "wrist"), chunk_len=K, train=True, shuffle_buffer=20,
      stats_cache_dir=cache, process_index=0, process_count=1, progress=False)
  fast = FASTTokenizer(vocab_size=256, scale=10.0).fit(collect_action_chunks(frames, 64))
  cfg = SequenceConfig(max_len=48, cameras=("primary", "wrist"), image_size=(SIZE, SIZE))
  b = SequenceBuilder(cfg, text, fast, default_action_vocab(text.vocab_size, 256))
  it = cotrain.make_train_iterator(
      builder=b, global_batch_size=16, robot_frames=frames, num_robot_datasets=2,
      web_sources=[web.WebSource("toy", num_examples=16)], web_weight=0.25, seed=0,
      process_index=0, process_count=1, shuffle_buffer=8)
  batches = list(itertools.islice(it, 3))
  di = np.concatenate([x["dataset_index"] for x in batches])
  src = np.concatenate([x["source"] for x in batches])
  assert set(di[src == 0]) == {0, 1} and set(di[src == 1]) == {2}
  for x in batches:
    assert x["tokens"].shape == (16, 48) and x["images"].shape == (16, 2, SIZE, SIZE, 3)
    for j in np.nonzero(x["source"] == 0)[0]:
      a = 3 if x["dataset_index"][j] == 0 else 4
      ex = {k: v[j] for k, v in x.items()}
      assert b.actions_from_tokens(target_action_ids(ex, b.eos_id), a, K).shape == (K, a)
      assert x["image_mask"][j].tolist() == [True, a == 4]
  assert set(stats) == {"toy_reach_a", "toy_reach_b"}


@pytest.mark.parametrize("kind", ["fast", "quantile"])
def test_make_data_iterator_from_config(tmp_path, kind):
  import ml_collections
  config = ml_collections.ConfigDict({"seed": 0, "batch_size": 8})
  config.data = ml_collections.ConfigDict({
      "toy_episodes": 3, "toy_episode_len": 5, "image_size": 16, "chunk_len": 2,
      "shuffle_buffer": 10, "action_tokenizer": kind, "fast_vocab_size": 128,
      "num_bins": 16, "fit_chunks": 30, "max_len": 40,
      "web_sources": ({"kind": "toy", "num_examples": 8},), "web_shuffle_buffer": 4})
  it, meta = cotrain.make_data_iterator(config, process_index=0, process_count=1,
                                        workdir=str(tmp_path))
  batch = next(it)
  assert batch["tokens"].shape == (8, 40) and batch["images"].shape == (8, 2, 16, 16, 3)
  assert meta["dataset_names"] == ["toy_reach_a", "toy_reach_b", "toy"]
  assert meta["action_tokenizer"]["action_dims"] == {"toy_reach_a": 3, "toy_reach_b": 4}
  assert meta["vocab_size"] == 1000 + meta["action_tokenizer"]["vocab"]["size"]
  assert set(meta["statistics"]) == {"toy_reach_a", "toy_reach_b"}
  # Resuming with the checkpoint's tokenizer gives the same tokenizer.
  it2, meta2 = cotrain.make_data_iterator(config, process_index=0, process_count=1,
                                          workdir=str(tmp_path), start_step=3,
                                          action_tokenizer_settings=meta["action_tokenizer"])
  assert meta2["action_tokenizer"] == meta["action_tokenizer"]
  assert next(it2)["tokens"].shape == (8, 40)
  config.data.bogus = 1
  with pytest.raises(VlaxError, match="bogus"):
    cotrain.make_data_iterator(config, process_index=0, process_count=1,
                               workdir=str(tmp_path))


@pytest.mark.parametrize("web,match", [
    (({"kind": "toy", "name": "robot"},), "web source name 'robot' clashes with the source"),
    (({"kind": "toy"}, {"kind": "toy", "num_examples": 4}),
     "web source name 'toy' clashes with the web source"),
    (({"kind": "toy", "name": "toy_reach_a"},),
     "web source name 'toy_reach_a' clashes with the robot dataset"),
])
def test_metric_name_clash_is_an_error(tmp_path, web, match):
  import ml_collections
  config = ml_collections.ConfigDict({"seed": 0, "batch_size": 8})
  config.data = ml_collections.ConfigDict({"web_sources": web})
  with pytest.raises(VlaxError, match=match):
    cotrain.make_data_iterator(config, process_index=0, process_count=1,
                               workdir=str(tmp_path))
  assert not os.listdir(tmp_path)  # refused before any toy data is written
