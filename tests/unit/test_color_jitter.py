"""Colour augmentation: saturation + hue as one 3x3 matrix (no HSV round trip)."""

import numpy as np
import tensorflow as tf

from vlax.data.images import AugmentConfig, _chroma_matrix, color_jitter


def _apply(img, sat, hue):
  m = _chroma_matrix(tf.constant(sat, tf.float32), tf.constant(hue, tf.float32)).numpy()
  return img.reshape(-1, 3) @ m.T


def test_chroma_matrix_identity_grey_and_hue_direction():
  rng = np.random.default_rng(0)
  img = rng.uniform(0.1, 0.9, (64, 3)).astype(np.float32)
  np.testing.assert_allclose(_apply(img, 1.0, 0.0), img, atol=1e-5)
  grey = _apply(img, 0.0, 0.0)
  np.testing.assert_allclose(grey, np.repeat(grey[:, :1], 3, 1), atol=1e-5)
  luma = img @ np.array([0.299, 0.587, 0.114], np.float32)
  np.testing.assert_allclose(grey[:, 0], luma, atol=1e-5)
  # A small hue shift moves colours the same way TF's HSV adjust_hue does.
  ours = _apply(img, 1.0, 0.03) - img
  ref = tf.image.adjust_hue(img[None], 0.03).numpy()[0] - img
  corr = np.corrcoef(ours.ravel(), ref.ravel())[0, 1]
  assert corr > 0.5, corr  # 0.66: same direction (a flipped sign gives about -0.66)
  # A full turn is the identity again.
  np.testing.assert_allclose(_apply(img, 1.0, 1.0), img, atol=1e-4)


def test_color_jitter_is_seeded_and_bounded():
  img = tf.constant(np.random.default_rng(1).uniform(0, 1, (8, 8, 3)), tf.float32)
  cfg = AugmentConfig()
  a = color_jitter(img, tf.constant([3, 4]), cfg).numpy()
  b = color_jitter(img, tf.constant([3, 4]), cfg).numpy()
  c = color_jitter(img, tf.constant([5, 6]), cfg).numpy()
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  assert a.min() >= 0.0 and a.max() <= 1.0 and a.shape == (8, 8, 3)
  off = AugmentConfig(brightness=0.0, contrast=None, saturation=None, hue=0.0)
  np.testing.assert_allclose(color_jitter(img, tf.constant([3, 4]), off).numpy(),
                             img.numpy(), atol=1e-6)
