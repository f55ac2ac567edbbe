"""Mixing several frame streams: weights, thread allocation, seeded interleave."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import tensorflow as tf

from vlax.errors import VlaxError


def parse_datasets(datasets: Sequence[Any]) -> list[tuple[str, float]]:
  """Accepts [(name, weight)], [name] or ["name:weight"]; checks weights are positive."""
  out = []
  for d in datasets:
    if isinstance(d, str):
      name, _, w = d.partition(":")
      weight = float(w) if w else 1.0
    else:
      name, weight = d
      weight = float(weight)
    if not math.isfinite(weight) or weight <= 0:
      raise VlaxError(f"dataset {name!r}: mixture weight must be > 0, got {weight}")
    out.append((name, weight))
  if not out:
    raise VlaxError("the dataset mixture is empty")
  names = [n for n, _ in out]
  if len(set(names)) != len(names):
    raise VlaxError(f"dataset listed twice in the mixture: {names}")
  return out


def mixture_weights(weights: Sequence[float], num_transitions: Sequence[int] | None = None,
                    balance: bool = False) -> list[float]:
  """Sampling probabilities; with `balance`, weight_i * num_transitions_i (then normalized),
  so that a weight of 1 everywhere samples every *frame* of every dataset equally often."""
  w = [float(x) for x in weights]
  if balance:
    if num_transitions is None:
      raise VlaxError("balance=True needs num_transitions from the statistics")
    w = [x * max(int(n), 1) for x, n in zip(w, num_transitions)]
  total = sum(w)
  return [x / total for x in w]


def allocate_threads(total: int, weights: Sequence[float]) -> list[int]:
  """Splits `total` threads across datasets in proportion to weight, each getting >= 1."""
  total = max(int(total), len(weights))
  s = sum(weights)
  raw = [total * w / s for w in weights]
  alloc = [max(1, int(math.floor(r))) for r in raw]
  # Hand leftovers to the largest fractional parts.
  left = total - sum(alloc)
  order = sorted(range(len(raw)), key=lambda i: raw[i] - math.floor(raw[i]), reverse=True)
  for i in order[:max(left, 0)]:
    alloc[i] += 1
  return alloc


def interleave(streams: Sequence[tf.data.Dataset], weights: Sequence[float], seed: int,
               stop_on_empty: bool = False) -> tf.data.Dataset:
  """Weighted, seeded interleave of frame streams (`sample_from_datasets`)."""
  if len(streams) == 1:
    return streams[0]
  return tf.data.Dataset.sample_from_datasets(list(streams), weights=list(weights),
                                              seed=seed,
                                              stop_on_empty_dataset=stop_on_empty)


def summarize(names: Sequence[str], probabilities: Sequence[float]) -> Mapping[str, float]:
  return {n: float(p) for n, p in zip(names, probabilities)}
