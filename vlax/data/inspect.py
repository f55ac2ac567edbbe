"""Library side of `vlax inspect-data` and `vlax stats`."""

from __future__ import annotations

import json
import sys
from typing import Any, Mapping, Sequence

import numpy as np

from vlax.errors import VlaxError


def summarize_batch(batch: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """Every key ('/'-joined) -> shape, dtype; masks also their sum; actions min/max;
  strings their first values."""
  out: dict[str, Any] = {}
  for k, v in batch.items():
    key = f"{prefix}{k}"
    if isinstance(v, Mapping):
      out.update(summarize_batch(v, f"{key}/"))
      continue
    v = np.asarray(v)
    info: dict[str, Any] = {"shape": list(v.shape),
                            "dtype": "string" if v.dtype.kind in "SO" else str(v.dtype)}
    if v.dtype == bool:
      info["sum"] = int(v.sum())
    elif v.dtype.kind in "SO":
      info["values"] = sorted({x.decode() if isinstance(x, bytes) else str(x)
                               for x in v.reshape(-1)})[:8]
    elif k in ("dataset_index", "action_dim"):
      info["values"] = sorted(int(x) for x in set(v.reshape(-1).tolist()))
    elif k in ("action", "proprio"):
      if v.size:
        info["min"] = float(v.min())
        info["max"] = float(v.max())
    out[key] = info
  return out


def inspect_data(datasets: Sequence[str], data_dir: str, batch_size: int = 8, *,
                 image_size: int = 224, chunk_len: int = 4, train: bool = False,
                 stats_cache_dir: str | None = None, split: str | None = None,
                 **kwargs) -> dict[str, Any]:
  """Reads datasets through the registry and the whole robot pipeline; summarizes one batch.

  datasets: registry names (optionally "name:weight"). Uses the eval stream by default
  (finite, in order, no augmentation) over each dataset's *train* split (validation
  splits of small datasets can be empty), so the output is reproducible.
  """
  if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
    raise VlaxError(f"--batch-size must be a positive integer, got {batch_size!r}")
  from vlax.data import rlds, robot  # pylint: disable=g-import-not-at-top
  from vlax.data.oxe import registry  # pylint: disable=g-import-not-at-top
  names = [n for n, _ in robot.mixture_lib.parse_datasets(list(datasets))]
  splits = split or {n: registry.get_spec(n).train_split for n in names}
  ds, stats = robot.make_robot_dataset(
      list(datasets), data_dir, image_size=image_size, chunk_len=chunk_len, train=train,
      stats_cache_dir=stats_cache_dir, process_index=0, process_count=1, split=splits,
      shuffle_buffer=kwargs.pop("shuffle_buffer", 1000), **kwargs)
  dirs = [rlds.dataset_dir(n, data_dir, registry.get_spec(n).version) for n in names]
  batch = next(iter(rlds.iterate(ds.batch(batch_size),
                                 context=f"datasets {','.join(names)}: ",
                                 version_dirs=dirs)), None)
  if batch is None:
    raise VlaxError(f"datasets {list(datasets)} gave no frames (empty split?)")
  return {
      "datasets": list(datasets),
      "batch_size": int(batch_size),
      "keys": summarize_batch(batch),
      "statistics": {n: {"num_transitions": s["num_transitions"],
                         "num_trajectories": s["num_trajectories"]}
                     for n, s in stats.items()},
  }


def compute_and_print_stats(dataset: str, data_dir: str, out: str | None = None, *,
                            cache_dir: str | None = None, recompute: bool = False,
                            split: str | None = None) -> dict[str, Any]:
  """Computes (or loads from cache) one dataset's statistics; prints JSON or writes `out`."""
  from vlax.data import statistics  # pylint: disable=g-import-not-at-top
  stats = statistics.get_dataset_statistics(dataset, data_dir, cache_dir=cache_dir,
                                            recompute=recompute, split=split)
  text = json.dumps(stats, indent=1)
  if out:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    with tf.io.gfile.GFile(out, "w") as f:
      f.write(text + "\n")
  else:
    sys.stdout.write(text + "\n")
  return stats
