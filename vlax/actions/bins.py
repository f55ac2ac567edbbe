"""Per-dimension bin tokenizer for normalized action chunks (RT-2 / OpenVLA style).

Every scalar of a chunk [K, A] becomes one token, time-major (step 0 dims 0..A-1, step 1,
...), so the token budget is exactly K * A. Edges are either uniform over [low, high]
(the normalized range) or learned quantiles (`strategy='quantile'` + `.fit`), which makes
every bin roughly equally used on skewed data.

`decode_at="lower"` decodes uniform bin k to its lower edge, low + k / num_bins *
(high - low) (= openpi's `k / 256 * 2 - 1` for its PaliGemma-binning model); the default
decodes to the bin centre. `decode_errors` counts decodes whose id string was not exactly
K * A valid ids (padded or cut, never silently).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from vlax.errors import VlaxError

_STRATEGIES = ("uniform", "quantile")
_DECODE_AT = ("center", "lower")


class BinTokenizer:
  """Discretizes each action scalar into one of `num_bins` bins (ids 0..num_bins-1)."""

  def __init__(self, num_bins: int = 256, low: float = -1.0, high: float = 1.0,
               strategy: str = "uniform", edges: Sequence[Sequence[float]] | None = None,
               bin_values: Sequence[Sequence[float]] | None = None,
               decode_at: str = "center"):
    if num_bins < 2:
      raise VlaxError(f"BinTokenizer: num_bins must be >= 2, got {num_bins}")
    if not high > low:
      raise VlaxError(f"BinTokenizer: need high > low, got low={low} high={high}")
    if strategy not in _STRATEGIES:
      raise VlaxError(f"BinTokenizer: strategy must be one of {_STRATEGIES}, got {strategy!r}")
    if decode_at not in _DECODE_AT or (decode_at == "lower" and strategy != "uniform"):
      raise VlaxError(f"BinTokenizer: decode_at must be one of {_DECODE_AT} ('lower' only "
                      f"for uniform bins), got {decode_at!r}")
    self.decode_at = decode_at
    self.decode_errors = 0
    self.num_bins = int(num_bins)
    self.low = float(low)
    self.high = float(high)
    self.strategy = strategy
    # Quantile edges: [A, num_bins + 1] (one row per action dimension), or None = uniform;
    # bin_values [A, num_bins]: decoded value per bin (the data's median inside the bin).
    self.edges = None if edges is None else np.asarray(edges, np.float64)
    self.bin_values = None if bin_values is None else np.asarray(bin_values, np.float64)
    if self.bin_values is not None and self.bin_values.ndim == 1:
      self.bin_values = self.bin_values[None]
    if self.edges is not None:
      if self.edges.ndim == 1:
        self.edges = self.edges[None]
      if self.edges.shape[-1] != self.num_bins + 1:
        raise VlaxError(f"BinTokenizer: edges need {self.num_bins + 1} entries per "
                        f"dimension, got shape {self.edges.shape}")

  # --- properties -------------------------------------------------------------------

  @property
  def vocab_size(self) -> int:
    """Number of distinct token ids (the size of the reserved vocabulary range)."""
    return self.num_bins

  @property
  def fitted(self) -> bool:
    return self.strategy == "uniform" or self.edges is not None

  def max_tokens(self, chunk_len: int, action_dim: int) -> int:
    """Fixed token budget of one chunk: one token per scalar."""
    return int(chunk_len) * int(action_dim)

  def _edges_for(self, action_dim: int) -> np.ndarray:
    """Bin edges [action_dim, num_bins + 1] (float64)."""
    if self.edges is None:
      if self.strategy == "quantile":
        raise VlaxError("BinTokenizer(strategy='quantile') must be .fit(chunks) before use")
      row = np.linspace(self.low, self.high, self.num_bins + 1)
      return np.broadcast_to(row, (action_dim, self.num_bins + 1))
    if self.edges.shape[0] == 1:
      return np.broadcast_to(self.edges[0], (action_dim, self.num_bins + 1))
    if action_dim > self.edges.shape[0]:
      raise VlaxError(f"BinTokenizer: quantile edges fitted for {self.edges.shape[0]} "
                      f"action dims, asked for {action_dim}")
    return self.edges[:action_dim]

  # --- fitting ----------------------------------------------------------------------

  def fit(self, chunks: Any, mask: Any = None) -> "BinTokenizer":
    """Learns per-dimension quantile edges (no-op for `strategy='uniform'`).

    chunks: array [N, K, A] (or [N, A]); mask: optional bool of the same shape, False
    entries (padding) are ignored. Edges span [low, high] at the ends so values in the
    normalized range stay encodable.
    """
    if self.strategy == "uniform":
      return self
    x = np.asarray(chunks, np.float64)
    x = x.reshape(-1, x.shape[-1])
    m = np.ones_like(x, bool) if mask is None else np.asarray(mask, bool).reshape(x.shape)
    qs = np.linspace(0.0, 1.0, 2 * self.num_bins + 1)  # edges at even, medians at odd
    edges, values = [], []
    for d in range(x.shape[1]):
      v = np.clip(x[m[:, d], d], self.low, self.high)
      if v.size == 0:
        e = np.linspace(self.low, self.high, 2 * self.num_bins + 1)
      else:
        e = np.quantile(v, qs)
        e[0], e[-1] = self.low, self.high
        # Strictly increasing edges (ties in the data would otherwise make empty bins
        # ambiguous): nudge duplicates by a tiny epsilon.
        e = np.maximum.accumulate(e)
        eps = (self.high - self.low) * 1e-9
        for i in range(1, e.size):
          if e[i] <= e[i - 1]:
            e[i] = e[i - 1] + eps
      edges.append(e[0::2])
      values.append(e[1::2])
    self.edges = np.stack(edges)
    self.bin_values = np.stack(values)
    return self

  # --- numpy encode / decode --------------------------------------------------------

  def encode(self, chunk: Any) -> list[int]:
    """chunk float [K, A] (normalized) -> K*A ids in [0, num_bins), time-major."""
    x = np.asarray(chunk, np.float64)
    if x.ndim == 1:
      x = x[None]
    k, a = x.shape
    x = np.nan_to_num(x, nan=0.0)
    if self.strategy == "uniform" and self.edges is None:
      scaled = (np.clip(x, self.low, self.high) - self.low) / (self.high - self.low)
      ids = np.floor(scaled * self.num_bins).astype(np.int64)
    else:
      edges = self._edges_for(a)
      ids = np.stack([np.searchsorted(edges[d, 1:-1], x[:, d], side="right")
                      for d in range(a)], axis=1)
    return np.clip(ids, 0, self.num_bins - 1).reshape(k * a).tolist()

  def centers(self, action_dim: int) -> np.ndarray:
    """Decoded value of every bin per dimension [action_dim, num_bins]."""
    e = self._edges_for(action_dim)
    if self.decode_at == "lower":
      return e[:, :-1]
    if self.bin_values is not None:
      v = self.bin_values
      return np.broadcast_to(v[0], (action_dim, self.num_bins)) if v.shape[0] == 1 \
          else v[:action_dim]
    return 0.5 * (e[:, 1:] + e[:, :-1])

  def decode(self, ids: Any, chunk_len: int, action_dim: int) -> np.ndarray:
    """ids -> float32 [chunk_len, action_dim]; never raises on bad ids.

    Out-of-range ids (e.g. -1 for "not an action token") decode to the bin holding 0 (the
    normalized mean); too few ids are padded the same way, extra ids are dropped.
    """
    n = int(chunk_len) * int(action_dim)
    ids = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids).reshape(-1)
    ids = ids.astype(np.int64) if ids.size else np.zeros([0], np.int64)
    centers = self.centers(action_dim)
    zero_bin = np.argmin(np.abs(centers), axis=1)  # [A]
    out = np.empty([n], np.int64)
    m = min(n, ids.size)
    out[:m] = ids[:m]
    out[m:] = -1
    out = out.reshape(chunk_len, action_dim)
    bad = (out < 0) | (out >= self.num_bins)
    if ids.size != n or bad.any():
      self.decode_errors += 1
    out = np.where(bad, zero_bin[None, :], out)
    vals = centers[np.arange(action_dim)[None, :], out]  # per-column gather
    return vals.astype(np.float32)

  # --- tf graph encode (for parallel tf.data maps) ----------------------------------

  def encode_tf(self, chunk):
    """tf float [K, A] -> tf int32 [K*A] ids; same result as `encode`, inside a graph."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    x = tf.cast(chunk, tf.float32)
    x = tf.where(tf.math.is_nan(x), tf.zeros_like(x), x)
    if self.strategy == "uniform" and self.edges is None:
      # Same float64 arithmetic as the numpy path so both agree exactly on bin edges.
      x64 = tf.cast(x, tf.float64)
      scaled = (tf.clip_by_value(x64, self.low, self.high) - self.low) / (self.high - self.low)
      ids = tf.cast(tf.floor(scaled * self.num_bins), tf.int32)
    else:
      self._edges_for(1)  # raises a clear error when quantile edges were never fitted
      inner = tf.constant(self.edges[:, 1:-1], tf.float64)
      a = tf.shape(x)[1]
      if self.edges.shape[0] == 1:
        inner = tf.tile(inner, [a, 1])
      else:
        inner = inner[:a]
      # searchsorted is row-wise: rows = dims, values = the dim's column.
      ids = tf.searchsorted(inner, tf.transpose(tf.cast(x, tf.float64)), side="right")
      ids = tf.transpose(tf.cast(ids, tf.int32))
    ids = tf.clip_by_value(ids, 0, self.num_bins - 1)
    return tf.reshape(ids, [-1])

  # --- serialization ----------------------------------------------------------------

  def to_dict(self) -> dict[str, Any]:
    return {"type": "bins", "num_bins": self.num_bins, "low": self.low, "high": self.high,
            "strategy": self.strategy,
            "edges": None if self.edges is None else self.edges.tolist(),
            "bin_values": None if self.bin_values is None else self.bin_values.tolist(),
            **({"decode_at": self.decode_at} if self.decode_at != "center" else {})}

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "BinTokenizer":
    return cls(num_bins=d["num_bins"], low=d.get("low", -1.0), high=d.get("high", 1.0),
               strategy=d.get("strategy", "uniform"), edges=d.get("edges"),
               bin_values=d.get("bin_values"), decode_at=d.get("decode_at", "center"))

  def __repr__(self) -> str:
    return (f"BinTokenizer(num_bins={self.num_bins}, low={self.low}, high={self.high}, "
            f"strategy={self.strategy!r})")
