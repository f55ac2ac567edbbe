"""Trajectory-level transforms: chunking, history windows, padding, masks, subsampling.

Every function takes and returns a trajectory: a (nested) dict of tensors that all share a
leading time axis T. They are pure tf functions meant for `vlax.data.traj.traj_map`.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import tensorflow as tf

from vlax.data import normalization

Trajectory = dict[str, Any]


def traj_len(traj: Mapping[str, Any]) -> tf.Tensor:
  """T of a trajectory (from its `action`, else its first leaf)."""
  if "action" in traj:
    return tf.shape(traj["action"])[0]
  return tf.shape(tf.nest.flatten(traj)[0])[0]


def chunk_indices(length: tf.Tensor, chunk_len: int) -> tuple[tf.Tensor, tf.Tensor]:
  """Indices [T, K] of the next K steps (t..t+K-1), clamped, and their validity mask."""
  idx = tf.range(length)[:, None] + tf.range(chunk_len)[None, :]
  valid = idx < length
  return tf.minimum(idx, length - 1), valid


def window_indices(length: tf.Tensor, window: int) -> tuple[tf.Tensor, tf.Tensor]:
  """Indices [T, W] of the past W steps (t-W+1..t), clamped at 0, and their validity mask."""
  idx = tf.range(length)[:, None] + tf.range(-window + 1, 1)[None, :]
  valid = idx >= 0
  return tf.maximum(idx, 0), valid


def chunk_actions(action: tf.Tensor, chunk_len: int) -> tuple[tf.Tensor, tf.Tensor]:
  """[T, A] -> ([T, K, A] future actions, bool [T, K] mask, False past the episode end).

  Steps past the end are zeros (and masked), never a repeated last action, so a loss that
  forgets the mask is visibly wrong rather than silently trained on invented targets.
  """
  idx, valid = chunk_indices(tf.shape(action)[0], chunk_len)
  chunk = tf.gather(action, idx)
  chunk = tf.where(valid[:, :, None], chunk, tf.zeros_like(chunk))
  return chunk, valid


def history_window(x: tf.Tensor, window: int) -> tuple[tf.Tensor, tf.Tensor]:
  """[T, ...] -> ([T, W, ...] past window, bool [T, W] timestep mask).

  Steps before the episode start repeat step 0's value but are masked False.
  """
  idx, valid = window_indices(tf.shape(x)[0], window)
  return tf.gather(x, idx), valid


def pad_last_dim(x: tf.Tensor, size: int) -> tuple[tf.Tensor, tf.Tensor]:
  """Zero-pads the last dim of `x` to `size`; returns (padded, bool mask of real dims)."""
  dim = x.shape[-1]
  if dim is None:
    raise ValueError("pad_last_dim needs a static last dimension")
  if dim > size:
    raise ValueError(f"dimension {dim} is larger than the padded size {size}")
  pad = [[0, 0]] * (x.shape.rank - 1) + [[0, size - dim]]
  padded = tf.pad(x, pad)
  mask = tf.concat([tf.ones([dim], tf.bool), tf.zeros([size - dim], tf.bool)], 0)
  mask = tf.broadcast_to(mask, tf.shape(padded))
  return padded, mask


def normalize(x: tf.Tensor, key_stats: Mapping[str, Any], mode: str) -> tf.Tensor:
  """In-graph normalization of [..., D] with one key's statistics (mask inside stats)."""
  if x.shape[-1] == 0:
    return tf.cast(x, tf.float32)
  return normalization.normalize_tf(x, key_stats, mode)


def subsample(traj: Trajectory, max_len: int, seed: tf.Tensor | None = None) -> Trajectory:
  """Keeps at most `max_len` random steps of a trajectory (in time order).

  Use *after* chunking/windowing (which need the full-rate neighbours) to limit how many
  frames one long trajectory contributes. `seed` is a stateless seed [2] (int).
  """
  length = traj_len(traj)
  if seed is None:
    keys = tf.random.uniform([length])
  else:
    keys = tf.random.stateless_uniform([length], seed=seed)
  keep = tf.sort(tf.math.top_k(keys, k=tf.minimum(length, max_len)).indices)
  return tf.nest.map_structure(lambda v: tf.gather(v, keep), traj)


def relabel_goal(traj: Trajectory, keys: Sequence[str], seed: tf.Tensor | None = None,
                 goal_key: str = "goal") -> Trajectory:
  """Hindsight goal relabeling: for each t, picks a uniform future step g in [t, T-1] and
  copies `traj[k][g]` for each (top-level) key `k` into `traj[goal_key][k]`."""
  length = traj_len(traj)
  shape = [length]
  u = (tf.random.uniform(shape) if seed is None else
       tf.random.stateless_uniform(shape, seed=seed))
  t = tf.range(length)
  span = tf.cast(length - t, tf.float32)
  goal = t + tf.cast(tf.floor(u * span), tf.int32)
  goal = tf.minimum(goal, length - 1)
  out = dict(traj)
  out[goal_key] = {k: tf.nest.map_structure(lambda v: tf.gather(v, goal), traj[k])
                   for k in keys}
  return out


def broadcast_scalar(value: Any, length: tf.Tensor, dtype=None) -> tf.Tensor:
  """A constant (string/int/bool) repeated along T."""
  v = tf.constant(value, dtype=dtype) if not isinstance(value, tf.Tensor) else value
  return tf.fill([length], v)
