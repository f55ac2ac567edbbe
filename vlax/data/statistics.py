"""Per-dataset action/proprio statistics: one streaming pass, cached by a content hash.

`compute_statistics` streams standardized trajectories once (tqdm progress bar) and keeps:
  * count, mean and std: exact, merged per trajectory with Chan's parallel update (float64);
  * min and max: exact;
  * q01 and q99: from a uniform *reservoir sample* of at most `reservoir_size` rows
    (Algorithm R, fixed seed). Exact when the dataset has <= reservoir_size transitions,
    otherwise an unbiased estimate with O(reservoir_size * D) memory.
NaN/Inf anywhere raises a VlaxError naming the dataset, key ('action'/'proprio'), the
dimension and the episode. Zero-variance dimensions are fine: std is 0 here and
normalization clamps it with an epsilon (see `vlax.data.normalization`).

`get_dataset_statistics` wraps this with a JSON cache at
`<cache_dir>/stats/<name>-<hash>.json`; the hash covers the dataset name, version, split,
the registry spec's fields, the source of its standardize function and the names and sizes
of the data files, so editing any of these recomputes the statistics.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import os
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from vlax.data.oxe import registry
from vlax.errors import VlaxError

STATS_FORMAT = 1
KEYS = ("action", "proprio")


def default_cache_dir() -> str:
  return os.environ.get("VLAX_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache",
                                                       "vlax"))


class _Accumulator:
  """Streaming moments, extrema and a row reservoir for one [N, D] key."""

  def __init__(self, dim: int, reservoir_size: int, rng: np.random.Generator):
    self.dim, self.cap, self.rng = dim, reservoir_size, rng
    self.n = 0
    self.mean = np.zeros(dim, np.float64)
    self.m2 = np.zeros(dim, np.float64)
    self.min = np.full(dim, np.inf)
    self.max = np.full(dim, -np.inf)
    self.reservoir = np.zeros((min(reservoir_size, 1 << 16), dim), np.float64)
    self.filled = 0

  def add(self, x: np.ndarray) -> None:
    b = x.shape[0]
    if b == 0:
      return
    x = x.astype(np.float64)
    bmean = x.mean(0)
    bm2 = ((x - bmean) ** 2).sum(0)
    total = self.n + b
    delta = bmean - self.mean
    self.mean = self.mean + delta * (b / total)
    self.m2 = self.m2 + bm2 + delta**2 * (self.n * b / total)
    self.min = np.minimum(self.min, x.min(0))
    self.max = np.maximum(self.max, x.max(0))
    # Reservoir (Algorithm R, vectorized; later rows win ties like the sequential version).
    idx = self.n + np.arange(b)
    direct = idx < self.cap
    if direct.any():
      need = int(idx[direct][-1]) + 1
      if need > self.reservoir.shape[0]:
        grown = np.zeros((min(self.cap, max(need, 2 * self.reservoir.shape[0])), self.dim))
        grown[:self.filled] = self.reservoir[:self.filled]
        self.reservoir = grown
      self.reservoir[idx[direct]] = x[direct]
      self.filled = need
    rest = ~direct
    if rest.any():
      r = (self.rng.random(int(rest.sum())) * (idx[rest] + 1)).astype(np.int64)
      keep = r < self.cap
      self.reservoir[r[keep]] = x[rest][keep]
    self.n = total

  def result(self, mask: Sequence[bool]) -> dict[str, list]:
    if self.n == 0:
      z = [0.0] * self.dim
      return {"mean": z, "std": z, "min": z, "max": z, "q01": z, "q99": z,
              "mask": [bool(m) for m in mask]}
    sample = self.reservoir[:self.filled]
    q01, q99 = np.quantile(sample, [0.01, 0.99], axis=0) if self.dim else (
        np.zeros(0), np.zeros(0))
    std = np.sqrt(np.maximum(self.m2 / self.n, 0.0))
    f = lambda a: [float(v) for v in a]
    return {"mean": f(self.mean), "std": f(std), "min": f(self.min), "max": f(self.max),
            "q01": f(q01), "q99": f(q99), "mask": [bool(m) for m in mask]}


def _check_finite(x: np.ndarray, dataset: str, key: str, episode: Any) -> None:
  finite = np.isfinite(x)
  if not finite.all():
    bad = np.argwhere(~finite)[0]
    dim = int(bad[-1]) if x.ndim > 1 else 0
    step = int(bad[0])
    where = f" in episode {episode}" if episode is not None else ""
    raise VlaxError(f"dataset {dataset!r}: NaN/Inf in key {key!r} dimension {dim} "
                    f"(step {step}){where}")


def _as_2d(x: Any) -> np.ndarray:
  x = np.asarray(x)
  if x.ndim == 1:  # 1-D actions stored as [T]
    x = x[:, None]
  return x.reshape(x.shape[0], -1)


def compute_statistics(trajectories: Iterable[Mapping[str, Any]], *, dataset_name: str,
                       action_mask: Sequence[bool] | None = None,
                       proprio_mask: Sequence[bool] | None = None,
                       normalization_type: str = "bounds", total: int | None = None,
                       progress: bool = True, reservoir_size: int = 200_000,
                       seed: int = 0) -> dict[str, Any]:
  """Statistics of standardized trajectories (numpy dicts with 'action' [T, A] and
  optionally 'proprio' [T, P]; '_episode_id' [T] names the episode in errors)."""
  rng = np.random.default_rng(seed)
  acc: dict[str, _Accumulator] = {}
  num_traj = 0
  bar = tqdm(trajectories, total=total, desc=f"stats {dataset_name}", unit="episode",
             disable=not progress, leave=False)
  for traj in bar:
    episode = None
    if "_episode_id" in traj and len(traj["_episode_id"]):
      episode = traj["_episode_id"][0]
      episode = episode.decode() if isinstance(episode, bytes) else str(episode)
    for key in KEYS:
      if key not in traj:
        continue
      x = _as_2d(traj[key])
      _check_finite(x, dataset_name, key, episode)
      if key not in acc:
        acc[key] = _Accumulator(x.shape[1], reservoir_size, rng)
      elif acc[key].dim != x.shape[1]:
        raise VlaxError(f"dataset {dataset_name!r}: key {key!r} has {x.shape[1]} dims in "
                        f"episode {episode}, {acc[key].dim} before")
      acc[key].add(x)
    num_traj += 1
  if "action" not in acc:
    raise VlaxError(f"dataset {dataset_name!r}: no trajectories to compute statistics from")
  out: dict[str, Any] = {}
  for key, mask in (("action", action_mask), ("proprio", proprio_mask)):
    a = acc.get(key) or _Accumulator(0, 1, rng)
    if mask is None or len(mask) == 0:
      mask = [True] * a.dim
    if len(mask) != a.dim:
      raise VlaxError(f"dataset {dataset_name!r}: {key} normalization mask has {len(mask)} "
                      f"entries, data has {a.dim} dims")
    out[key] = a.result(mask)
  out["num_transitions"] = int(acc["action"].n)
  out["num_trajectories"] = int(num_traj)
  out["normalization_type"] = normalization_type
  out["quantiles"] = (f"exact" if acc["action"].n <= reservoir_size else
                      f"reservoir of {reservoir_size} rows")
  return out


# ---------------------------------------------------------------------------------------
# Registry datasets + cache.


def _function_source(fn: Any) -> str:
  try:
    return inspect.getsource(fn)
  except (OSError, TypeError):
    return f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', repr(fn))}"


# DatasetSpec fields added after statistics were first cached: hashed only when set.
_NEW_SPEC_FIELDS = {"proprio_sources": (), "proprio_source": "proprio"}


def cache_key(spec: Any, data_dir: str, split: str) -> tuple[str, dict[str, Any]]:
  """(hash, the JSON-safe description it hashes) for a registry spec's statistics."""
  from vlax.data import rlds  # pylint: disable=g-import-not-at-top
  path = rlds.dataset_dir(spec.name, data_dir, spec.version)
  fields = {}
  for f in dataclasses.fields(spec):
    if f.name == "standardize":
      continue
    if f.name in _NEW_SPEC_FIELDS and getattr(spec, f.name) == _NEW_SPEC_FIELDS[f.name]:
      continue  # at its default: the cache key of a spec that predates the field
    v = getattr(spec, f.name)
    fields[f.name] = v.value if hasattr(v, "value") else repr(v)
  desc = {
      "format": STATS_FORMAT,
      "name": spec.name,
      "version": spec.version,
      "split": split,
      "spec": fields,
      "standardize": _function_source(spec.standardize),
      "files": rlds.data_files(spec.name, data_dir, spec.version),
  }
  del path
  blob = json.dumps(desc, sort_keys=True, default=str).encode()
  return hashlib.sha256(blob).hexdigest()[:16], desc


def cache_path(cache_dir: str, name: str, key: str) -> str:
  return os.path.join(str(cache_dir), "stats", f"{name}-{key}.json")


def get_dataset_statistics(name: str, data_dir: str, *, cache_dir: str | None = None,
                           split: str | None = None, progress: bool = True,
                           recompute: bool = False,
                           proprio_source: str = "proprio") -> dict[str, Any]:
  """Statistics of a registered dataset's standardized action/proprio, cached as JSON.

  split: defaults to the spec's train split. proprio_source: config.data.proprio_source
  (its statistics are cached apart from the dataset's own proprio). The whole split is read on every host (no
  per-host sharding), so every host computes the same numbers.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  # TensorFlow readers: this module computes and caches without loading TF.
  from vlax.data import rlds, standardized  # pylint: disable=g-import-not-at-top
  spec = registry.with_proprio_source(registry.get_spec(name), proprio_source)
  split = split or spec.train_split
  cache_dir = cache_dir or default_cache_dir()
  key, _ = cache_key(spec, data_dir, split)
  path = cache_path(cache_dir, name, key)
  if not recompute and tf.io.gfile.exists(path):
    with tf.io.gfile.GFile(path, "r") as f:
      return json.load(f)
  ds = standardized.standardized_trajectories(spec, data_dir, split=split, process_index=0,
                                              process_count=1, with_images=False)
  builder = rlds.load_builder(name, data_dir, spec.version)
  total = rlds.num_episodes(builder, split.split("[")[0])
  stats = compute_statistics(
      rlds.iterate(ds, context=f"dataset {name!r}: ",
                   version_dirs=[rlds.dataset_dir(name, data_dir, spec.version)]),
      dataset_name=name,
      action_mask=spec.action_normalization_mask,
      proprio_mask=spec.proprio_normalization_mask or None,
      normalization_type=spec.normalization_type, total=total, progress=progress)
  stats["cache_key"] = key
  tf.io.gfile.makedirs(os.path.dirname(path))
  tmp = f"{path}.tmp{os.getpid()}"
  with tf.io.gfile.GFile(tmp, "w") as f:
    json.dump(stats, f, indent=1)
  tf.io.gfile.rename(tmp, path, overwrite=True)
  return stats
