"""Trajectory layer: chunking, windows, padding, flatten, maps, subsample, relabel."""

import numpy as np
import pytest
import tensorflow as tf

from vlax.data import traj as traj_lib
from vlax.data import transforms


def _toy_trajs():
  return [
      {"action": np.arange(5 * 2, dtype=np.float32).reshape(5, 2),
       "obs": {"x": np.arange(5, dtype=np.int32)}},
      {"action": 100 + np.arange(3 * 2, dtype=np.float32).reshape(3, 2),
       "obs": {"x": 10 + np.arange(3, dtype=np.int32)}},
  ]


def test_chunk_actions_pads_and_masks_past_end():
  action = tf.constant(np.arange(4 * 2, dtype=np.float32).reshape(4, 2))
  chunk, valid = transforms.chunk_actions(action, 3)
  chunk, valid = chunk.numpy(), valid.numpy()
  assert chunk.shape == (4, 3, 2) and valid.shape == (4, 3)
  np.testing.assert_array_equal(chunk[0], [[0, 1], [2, 3], [4, 5]])
  np.testing.assert_array_equal(chunk[2], [[4, 5], [6, 7], [0, 0]])
  np.testing.assert_array_equal(valid[2], [True, True, False])
  np.testing.assert_array_equal(valid[3], [True, False, False])
  np.testing.assert_array_equal(chunk[3, 1:], 0)


def test_history_window_masks_before_start():
  x = tf.constant(np.arange(4, dtype=np.float32)[:, None])
  win, valid = transforms.history_window(x, 3)
  np.testing.assert_array_equal(win.numpy()[1, :, 0], [0, 0, 1])
  np.testing.assert_array_equal(valid.numpy()[1], [False, True, True])
  np.testing.assert_array_equal(win.numpy()[3, :, 0], [1, 2, 3])
  assert valid.numpy()[3].all()


def test_pad_last_dim():
  x = tf.ones([2, 3, 2])
  padded, mask = transforms.pad_last_dim(x, 5)
  assert padded.shape == (2, 3, 5)
  np.testing.assert_array_equal(padded.numpy()[0, 0], [1, 1, 0, 0, 0])
  np.testing.assert_array_equal(mask.numpy()[1, 2], [True, True, False, False, False])
  with pytest.raises(ValueError):
    transforms.pad_last_dim(x, 1)


def test_traj_map_flatten_frame_map_filter():
  ds = traj_lib.from_trajectories(_toy_trajs())

  def add_chunk(t):
    chunk, valid = transforms.chunk_actions(t["action"], 2)
    return {**t, "chunk": chunk, "chunk_mask": valid}

  ds = traj_lib.traj_map(ds, add_chunk)
  ds = traj_lib.traj_filter(ds, lambda t: transforms.traj_len(t) > 0)
  frames = traj_lib.flatten(ds)
  frames = traj_lib.frame_map(frames, lambda f: {**f, "y": f["obs"]["x"] * 2})
  frames = traj_lib.with_budget(frames, threads=2, ram_budget_gb=0.5, deterministic=True)
  out = list(frames.as_numpy_iterator())
  assert len(out) == 8
  assert [int(f["obs"]["x"]) for f in out] == [0, 1, 2, 3, 4, 10, 11, 12]
  assert [int(f["y"]) for f in out] == [0, 2, 4, 6, 8, 20, 22, 24]
  # Last frame of the first trajectory: second chunk step is past the end.
  np.testing.assert_array_equal(out[4]["chunk_mask"], [True, False])
  np.testing.assert_array_equal(out[4]["chunk"][1], [0, 0])
  # Chunks never leak across trajectories.
  np.testing.assert_array_equal(out[5]["chunk"][0], [100, 101])


def test_subsample_keeps_order_and_count():
  t = {"a": tf.range(10), "b": tf.range(10) * 2}
  out = transforms.subsample(t, 4, seed=tf.constant([1, 2]))
  a = out["a"].numpy()
  assert len(a) == 4 and (np.diff(a) > 0).all()
  np.testing.assert_array_equal(out["b"].numpy(), a * 2)
  again = transforms.subsample(t, 4, seed=tf.constant([1, 2]))
  np.testing.assert_array_equal(again["a"].numpy(), a)
  short = transforms.subsample(t, 20, seed=tf.constant([1, 2]))
  np.testing.assert_array_equal(short["a"].numpy(), np.arange(10))


def test_relabel_goal_is_in_future():
  t = {"action": tf.zeros([6, 1]), "pos": tf.range(6)}
  out = transforms.relabel_goal(t, ["pos"], seed=tf.constant([3, 4]))
  goal = out["goal"]["pos"].numpy()
  assert (goal >= np.arange(6)).all() and (goal <= 5).all()


def test_element_seed_differs_by_index_and_base():
  s1 = traj_lib.element_seed(0, tf.constant(1, tf.int64)).numpy()
  s2 = traj_lib.element_seed(0, tf.constant(2, tf.int64)).numpy()
  s3 = traj_lib.element_seed(1, tf.constant(1, tf.int64)).numpy()
  assert not np.array_equal(s1, s2) and not np.array_equal(s1, s3)
