"""Per-dataset normalization of actions and proprio (numpy and TensorFlow twins).

One definition is shared by the data pipeline (TensorFlow, in-graph), the action
tokenizers and the inference `Policy` (numpy, to turn predictions back into robot units).

A key's statistics are a dict `{"mean", "std", "min", "max", "q01", "q99": list[float],
"mask": list[bool]}` (see `vlax.data.statistics`). `mask[i]` True means dimension i is
normalized; False keeps it raw (grippers, flags), in both directions.

Modes:
  * "bounds": the [q01, q99] range maps to [-1, 1], then clipped to [-1, 1]:
      y = clip((x - c) / h, -1, 1),  c = (q99 + q01) / 2,  h = max((q99 - q01) / 2, EPS)
    `unnormalize` is its inverse inside the range (values clipped away are lost).
  * "normal": y = (x - mean) / max(std, EPS).
  * "quantile": openpi's quantile normalization, y = (x - q01) / (q99 - q01 + EPS) * 2 - 1,
    *not* clipped (imported openpi checkpoints were trained with it: a state outside
    [q01, q99] becomes the state digit -1 or 255, as in openpi).

Zero-variance (constant) dimensions: the half-range / std is clamped to `EPS`, so a
constant dimension normalizes to 0 ("bounds") or 0 ("normal") instead of NaN/Inf, and
unnormalize gives the constant back.

Importing this module does not import TensorFlow; only the `*_tf` functions do.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from vlax.errors import VlaxError

EPS = 1e-6
MODES = ("bounds", "normal", "quantile")
KeyStats = Mapping[str, Any]


def _check_mode(mode: str) -> None:
  if mode not in MODES:
    raise VlaxError(f"unknown normalization mode {mode!r}; use one of {MODES}")


def _params(stats: KeyStats, mode: str, mask: Any | None, dim: int):
  """(center, scale, mask) as float64/bool numpy arrays of length `dim`."""
  _check_mode(mode)
  if mode == "bounds":
    lo = np.asarray(stats["q01"], np.float64)
    hi = np.asarray(stats["q99"], np.float64)
    center, scale = (hi + lo) / 2.0, np.maximum((hi - lo) / 2.0, EPS)
  elif mode == "quantile":  # (x - c) / s == (x - q01) / (q99 - q01 + EPS) * 2 - 1
    lo = np.asarray(stats["q01"], np.float64)
    scale = (np.asarray(stats["q99"], np.float64) - lo + EPS) / 2.0
    center = lo + scale
  else:
    center = np.asarray(stats["mean"], np.float64)
    scale = np.maximum(np.asarray(stats["std"], np.float64), EPS)
  if mask is None:
    mask = stats.get("mask", [True] * len(center))
  mask = np.asarray(mask, bool)
  if not (len(center) == len(scale) == len(mask) == dim):
    raise VlaxError(f"normalization statistics have {len(center)} dims (mask {len(mask)}), "
                    f"data has {dim}")
  return center, scale, mask


def normalize(x: np.ndarray, stats: KeyStats, mode: str = "bounds",
              mask: Any | None = None) -> np.ndarray:
  """Normalizes `x` [..., D] with one key's statistics (numpy); masked-off dims stay raw."""
  x = np.asarray(x)
  center, scale, mask = _params(stats, mode, mask, x.shape[-1])
  y = (x - center) / scale
  if mode == "bounds":
    y = np.clip(y, -1.0, 1.0)
  return np.where(mask, y, x).astype(np.result_type(x.dtype, np.float32))


def unnormalize(y: np.ndarray, stats: KeyStats, mode: str = "bounds",
                mask: Any | None = None) -> np.ndarray:
  """Inverse of `normalize` (numpy): model units -> robot units; masked dims pass through."""
  y = np.asarray(y)
  center, scale, mask = _params(stats, mode, mask, y.shape[-1])
  yy = np.clip(y, -1.0, 1.0) if mode == "bounds" else y
  x = yy * scale + center
  return np.where(mask, x, y).astype(np.result_type(y.dtype, np.float32))


def normalize_tf(x, stats: KeyStats, mode: str = "bounds", mask: Any | None = None):
  """`normalize` for a float tf.Tensor [..., D] (in-graph, float32)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  dim = x.shape[-1]
  if dim is None:
    raise VlaxError("normalize_tf needs a static last dimension")
  center, scale, mask = _params(stats, mode, mask, dim)
  x = tf.cast(x, tf.float32)
  y = (x - tf.constant(center, tf.float32)) / tf.constant(scale, tf.float32)
  if mode == "bounds":
    y = tf.clip_by_value(y, -1.0, 1.0)
  return tf.where(tf.constant(mask), y, x)


def unnormalize_tf(y, stats: KeyStats, mode: str = "bounds", mask: Any | None = None):
  """`unnormalize` for a tf.Tensor [..., D]."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  dim = y.shape[-1]
  center, scale, mask = _params(stats, mode, mask, dim)
  y = tf.cast(y, tf.float32)
  yy = tf.clip_by_value(y, -1.0, 1.0) if mode == "bounds" else y
  x = yy * tf.constant(scale, tf.float32) + tf.constant(center, tf.float32)
  return tf.where(tf.constant(mask), x, y)
