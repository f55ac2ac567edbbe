"""Shared pieces of the per-dataset standardizers (TensorFlow ops, graph- and eager-safe).

Every function takes and returns whole-trajectory tensors with a leading time axis T, so
they run inside `tf.data` maps over trajectories. Gripper helpers all produce vlax's
convention: 1.0 = open, 0.0 = closed.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import tensorflow as tf

from vlax.errors import VlaxError


class MissingKey(KeyError):
  """A raw trajectory lacks a key; carries the full path for the error message."""

  def __init__(self, path: Sequence[str]):
    super().__init__("/".join(path))
    self.path = tuple(path)


def lookup(traj: Mapping[str, Any], *path: str) -> Any:
  """traj[path[0]][path[1]]...; keys may themselves contain '/' (kuka, bc_z)."""
  node = traj
  for i, key in enumerate(path):
    if not isinstance(node, Mapping) or key not in node:
      raise MissingKey(path[:i + 1])
    node = node[key]
  return node


def as_2d_f32(x: tf.Tensor) -> tf.Tensor:
  """Casts to float32 and gives [T] inputs a trailing unit axis."""
  x = tf.cast(x, tf.float32)
  if x.shape.rank == 1:
    x = x[:, None]
  return x


def concat(*parts: tf.Tensor) -> tf.Tensor:
  """float32 [T, sum(dims)] from [T] / [T, d] pieces of any numeric dtype."""
  return tf.concat([as_2d_f32(p) for p in parts], axis=-1)


def empty(like: tf.Tensor) -> tf.Tensor:
  """float32 [T, 0]: the proprio of datasets that record none."""
  return tf.zeros([tf.shape(like)[0], 0], tf.float32)


def text(x: tf.Tensor) -> tf.Tensor:
  """tf.string [T] from a [T] (or [T, 1]) string tensor."""
  return tf.reshape(x, [-1])


# --- Grippers (output: 1 = open, 0 = closed) -------------------------------------------

def invert(x: tf.Tensor) -> tf.Tensor:
  """For raw 1 = closed, 0 = open."""
  return 1.0 - as_2d_f32(x)


def clip_invert(x: tf.Tensor) -> tf.Tensor:
  """For raw +1 = close, -1 (or 0) = open commands: clip to [0, 1], then invert."""
  return 1.0 - tf.clip_by_value(as_2d_f32(x), 0.0, 1.0)


def clip01(x: tf.Tensor) -> tf.Tensor:
  """For raw +1 = open, -1 (or 0) = closed commands."""
  return tf.clip_by_value(as_2d_f32(x), 0.0, 1.0)


def binarize(x: tf.Tensor, threshold: float = 0.5, open_above: bool = True) -> tf.Tensor:
  """Continuous (absolute) gripper opening -> {0, 1}."""
  x = as_2d_f32(x)
  is_open = x > threshold if open_above else x < threshold
  return tf.cast(is_open, tf.float32)


def relative_to_absolute(cmd: tf.Tensor, threshold: float = 0.1) -> tf.Tensor:
  """Relative gripper commands (+1 close, -1 open, ~0 keep) -> absolute state [T, 1].

  The state holds the last non-zero command; before the first command it is the opposite
  of that command (you only close an open gripper), and open if there is no command.
  """
  c = tf.reshape(tf.cast(cmd, tf.float32), [-1])
  state_cmd = tf.where(c > threshold, 0.0, tf.where(c < -threshold, 1.0, -1.0))
  has_cmd = state_cmd >= 0.0
  first = tf.gather(state_cmd, tf.argmax(tf.cast(has_cmd, tf.int32)))
  init = tf.where(tf.reduce_any(has_cmd), 1.0 - first, 1.0)
  state = tf.scan(lambda prev, x: tf.where(x >= 0.0, x, prev), state_cmd, initializer=init)
  return state[:, None]


# --- Awkward encodings ------------------------------------------------------------------

def inflate_float32(x: tf.Tensor, dim: int) -> tf.Tensor:
  """kuka: zlib-compressed raw float32 bytes [T] -> float32 [T, dim].

  Accepts already-decoded float tensors too (a reader that lets tfds inflate them).
  """
  if x.dtype == tf.string:
    raw = tf.io.decode_raw(tf.io.decode_compressed(x, compression_type="ZLIB"), tf.float32)
    return tf.reshape(raw, [-1, dim])
  return tf.reshape(tf.cast(x, tf.float32), [-1, dim])


def decode_utf8_codes(codes: tf.Tensor) -> tf.Tensor:
  """language_table: int [T, L] UTF-8 byte values, zero padded -> tf.string [T]."""
  table = tf.constant([b""] + [bytes([i]) for i in range(1, 256)])
  chars = tf.gather(table, tf.clip_by_value(tf.cast(codes, tf.int32), 0, 255))
  return tf.strings.reduce_join(chars, axis=-1)


def quat_to_euler(q: tf.Tensor) -> tf.Tensor:
  """Quaternion (x, y, z, w) [T, 4] -> roll, pitch, yaw [T, 3] (extrinsic XYZ)."""
  q = tf.cast(q, tf.float32)
  x, y, z, w = tf.unstack(q, axis=-1)
  roll = tf.atan2(2.0 * (w * x + y * z), 1.0 - 2.0 * (x * x + y * y))
  pitch = tf.asin(tf.clip_by_value(2.0 * (w * y - z * x), -1.0, 1.0))
  yaw = tf.atan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))
  return tf.stack([roll, pitch, yaw], axis=-1)


def guard(dataset: str, fn, action_dim: int, proprio_dim: int):
  """Wraps a standardizer: missing keys -> VlaxError naming dataset and key; fixes shapes."""

  def standardize(traj):
    try:
      out = fn(traj)
    except MissingKey as e:
      raise VlaxError(
          f"dataset {dataset!r}: raw trajectory has no key {'/'.join(e.path)!r} "
          "(is the data the registered version/schema?)") from None
    except KeyError as e:
      raise VlaxError(f"dataset {dataset!r}: raw trajectory has no key {e.args[0]!r}") from None
    action = tf.ensure_shape(tf.cast(out["action"], tf.float32), [None, action_dim])
    proprio = tf.ensure_shape(tf.cast(out["proprio"], tf.float32), [None, proprio_dim])
    language = tf.ensure_shape(text(out["language_instruction"]), [None])
    return {"action": action, "proprio": proprio, "language_instruction": language}

  standardize.__name__ = f"standardize_{dataset}"
  standardize.__doc__ = fn.__doc__
  # inspect.getsource() (statistics cache keys) then sees the dataset's own function.
  standardize.__wrapped__ = fn
  return standardize
