"""Temporal ensembling of overlapping action chunks (ACT's "temporal aggregation").

With ensembling on, the policy re-plans at every step; the action executed at step t is
a weighted average of every stored chunk's prediction for step t (a chunk of length K
predicted at step s covers steps s .. s+K-1). Weights are exp(-m * i) with i = 0 for the
oldest prediction, so m > 0 favours older plans (smooth, committed motion) and m = 0 is a
plain mean; ACT uses m = 0.01. Averaging removes the jumps between independently sampled
chunks that open-loop execution shows at every re-plan.
"""

from __future__ import annotations

import collections

import numpy as np

from vlax.errors import VlaxError

DEFAULT_M = 0.01  # ACT's weighting coefficient


def ensemble_weights(count: int, m: float = DEFAULT_M) -> np.ndarray:
  """float [count] summing to 1: exp(-m * i), i = 0 for the oldest prediction."""
  if int(count) < 1:
    raise VlaxError(f"temporal ensemble: need at least one prediction, got {count}")
  if not np.isfinite(m) or m < 0:
    raise VlaxError(f"temporal ensemble coefficient must be >= 0, got {m}")
  w = np.exp(-float(m) * np.arange(int(count), dtype=np.float64))
  return (w / w.sum()).astype(np.float32)


class TemporalEnsemble:
  """Feed one batch of chunks float [B, K, A] per step; get the ensembled action [B, A].

  Chunks older than K steps no longer cover the current step and are dropped. All B
  episodes of the batch are assumed to start together (one shared clock).
  """

  def __init__(self, m: float = DEFAULT_M):
    ensemble_weights(1, m)  # validates m
    self.m = float(m)
    self.reset()

  def reset(self) -> None:
    self._chunks: collections.deque[tuple[int, np.ndarray]] = collections.deque()
    self._t = 0

  def __call__(self, chunks: np.ndarray) -> np.ndarray:
    chunks = np.asarray(chunks, np.float32)
    if chunks.ndim != 3:
      raise VlaxError(f"temporal ensemble: chunks must be [B, K, A], got {chunks.shape}")
    if self._chunks and chunks.shape[::2] != self._chunks[-1][1].shape[::2]:
      raise VlaxError(f"temporal ensemble: chunks of shape {chunks.shape} after "
                      f"{self._chunks[-1][1].shape} (batch and action dims must not change)")
    self._chunks.append((self._t, chunks))
    while self._t - self._chunks[0][0] >= self._chunks[0][1].shape[1]:
      self._chunks.popleft()  # oldest first; it no longer reaches step t
    rows = np.stack([c[:, self._t - s] for s, c in self._chunks if self._t - s < c.shape[1]])
    w = ensemble_weights(len(rows), self.m)
    self._t += 1
    return np.tensordot(w, rows, axes=1).astype(np.float32)  # [B, A]

  @property
  def num_stored(self) -> int:
    return len(self._chunks)
