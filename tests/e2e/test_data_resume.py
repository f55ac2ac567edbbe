"""Exact input-pipeline resume: CotrainIterator.save_state / restore_state.

The toy robot + toy web pipeline of `make_data_iterator` (shuffle buffers, weighted
interleave, web/robot mixing, tf.numpy_function tokenization) is saved after n batches
and restored into a freshly built iterator, which must yield the very batches the
original one yielded next. The end-to-end test does the same through the trainer with
the `vlax train` data callables.
"""

import json
import os
import shutil

import ml_collections
import numpy as np
import pytest

from vlax.data import cotrain
from vlax.errors import VlaxError

KEYS = ("tokens", "images", "image_mask", "input_mask", "loss_mask", "dataset_index",
        "source")


def data_config(**data) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict({"seed": 3, "batch_size": 4})
  c.data = ml_collections.ConfigDict({
      "toy_episodes": 4, "toy_episode_len": 6, "image_size": 16, "chunk_len": 2,
      "shuffle_buffer": 20, "num_bins": 16, "max_len": 48,
      "web_sources": ({"kind": "toy", "num_examples": 16},), "web_shuffle_buffer": 8,
      **data})
  return c


def build(config, workdir, start_step=0):
  it, _ = cotrain.make_data_iterator(config, process_index=0, process_count=1,
                                     workdir=str(workdir), start_step=start_step)
  return it


def assert_same(a, b):
  assert len(a) == len(b)
  for i, (x, y) in enumerate(zip(a, b)):
    for k in KEYS:
      np.testing.assert_array_equal(x[k], y[k], err_msg=f"batch {i} key {k}")


def test_iterator_resume_is_exact(tmp_path):
  config = data_config()
  it = build(config, tmp_path)
  n, m = 3, 5
  for _ in range(n):
    next(it)
  it.counters.add("web", "marker", "toy")  # a drop counted before the save
  state = str(tmp_path / "state")
  it.save_state(state)
  assert sorted(os.listdir(state)) == ["iterator.data-00000-of-00001", "iterator.index",
                                       "state.json"]
  saved = json.load(open(os.path.join(state, "state.json")))
  assert saved["start_step"] == 0 and saved["batches_read"] == n
  expected = [next(it) for _ in range(m)]
  # Both sources and both robot datasets take part, so mixing state is exercised.
  assert set(np.concatenate([b["dataset_index"] for b in expected]).tolist()) == {0, 1, 2}

  # A resumed run builds its pipeline seeded with its resume step (here n): restoring
  # rebuilds it with the saved run's seeds, then continues the saved stream.
  resumed = build(config, tmp_path, start_step=n)
  resumed.restore_state(state)
  assert resumed.start_step == 0 and resumed.batches_read == n
  assert resumed.counters.get("web/marker/toy") == 1
  assert_same([next(resumed) for _ in range(m)], expected)
  # Saving again after a restore continues the same stream (chained resumes).
  state2 = str(tmp_path / "state2")
  resumed.save_state(state2)
  assert json.load(open(os.path.join(state2, "state.json")))["start_step"] == 0
  more = [next(resumed) for _ in range(2)]
  again = build(config, tmp_path, start_step=n + m)
  again.restore_state(state2)
  assert_same([next(again) for _ in range(2)], more)
  assert [b["tokens"].tolist() for b in more] != [b["tokens"].tolist() for b in expected[:2]]


def test_restore_errors_name_the_directory(tmp_path):
  config = data_config()
  it = build(config, tmp_path)
  next(it)
  good = str(tmp_path / "good")
  it.save_state(good)
  # Seeded with another step, so a restore would rebuild it first.
  target = build(config, tmp_path, start_step=1)

  with pytest.raises(VlaxError, match="nothing_here.*state.json"):
    target.restore_state(str(tmp_path / "nothing_here"))

  # Another data config: refused by the fingerprint, naming the changed key.
  with pytest.raises(VlaxError, match=r"good.*incompatible.*max_len"):
    build(data_config(max_len=56), tmp_path).restore_state(good)

  # Same metadata but a tf.data iterator of another graph (robot-only pipeline).
  robot_only = build(data_config(web_sources=()), tmp_path)
  next(robot_only)
  bad = str(tmp_path / "bad")
  robot_only.save_state(bad)
  shutil.copy(os.path.join(good, "state.json"), os.path.join(bad, "state.json"))
  with pytest.raises(VlaxError, match="bad.*does not fit"):
    target.restore_state(bad)

  # The tf.data part missing.
  os.remove(os.path.join(good, "iterator.index"))
  with pytest.raises(VlaxError, match="good.*iterator.index"):
    target.restore_state(good)

  # Failed restores leave the iterator as built (start_step-seeded), so a caller may
  # fall back to it.
  assert target.start_step == 1 and target.batches_read == 0
  assert next(target)["tokens"].shape == (4, 48)


class _Recorder:
  """Wraps the CLI's iterator, recording the batches the trainer takes."""

  def __init__(self, it, log):
    self.it, self.log = it, log

  def __iter__(self):
    return self

  def __next__(self):
    b = next(self.it)
    self.log.append({k: np.array(b[k]) for k in KEYS})
    return b

  def save_state(self, d):
    self.it.save_state(d)

  def restore_state(self, d):
    self.log.append("restored")
    self.it.restore_state(d)


@pytest.mark.slow
def test_train_resume_continues_the_data_stream(tmp_path):
  """Trainer + `vlax train` data callables: a run resumed from the step-2 checkpoint
  takes the same batches for steps 2 and 3 as the uninterrupted run did."""
  from vlax.cli import _data_fns
  from vlax.config import load_config
  from vlax.training.trainer import train
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  config = load_config(os.path.join(root, "experiments", "debug.py"), [
      "num_steps=4", "batch_size=8", "checkpoint_every=2", "keep_checkpoints=5",
      "eval_every=0", "log_every=2", "model.preset=tiny", "data.image_size=32",
      "data.toy_episodes=4", "data.toy_episode_len=6", "data.shuffle_buffer=20",
      "data.num_bins=16", "data.max_len=48", "data.web_shuffle_buffer=8",
      "logging.tensorboard=False", "logging.progress=False",
      "async_checkpointing=False"])
  config.data.web_sources = ({"kind": "toy", "num_examples": 16},)
  workdir = str(tmp_path / "run")
  train_fn, _ = _data_fns(workdir)
  log = []

  def data_fn(*args):
    it, meta = train_fn(*args)
    return _Recorder(it, log), meta

  first = train(config, workdir, data_iterator_fn=data_fn)
  assert first["step"] == 4 and len(log) == 4
  assert os.path.exists(os.path.join(workdir, "data_state", "2", "process_0",
                                     "state.json"))
  uninterrupted = log[:]
  # Drop the last checkpoint: the next run resumes from step 2.
  shutil.rmtree(os.path.join(workdir, "checkpoints", "4"))
  log.clear()
  second = train(config, workdir, data_iterator_fn=data_fn)
  assert second["resumed_from"] == 2 and second["step"] == 4
  assert log[0] == "restored"
  assert_same(log[1:], uninterrupted[2:])
