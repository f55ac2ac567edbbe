"""The trajectory layer: tf.data datasets of whole trajectories, then of frames.

vlax's small replacement for dlimp. A *trajectory* is a nested dict of tensors that all
share a leading time axis T (one RLDS episode). The pipeline has two levels:

  trajectories --traj_map/filter--> trajectories --flatten--> frames --frame_map--> frames

* Trajectory-level maps see the whole episode, so they can look ahead and back (action
  chunking, observation history, goal relabeling, subsampling: `vlax.data.transforms`).
* `flatten` turns each trajectory into its T frames (`unbatch`), after which the frame
  stream can be mixed and shuffled while images are still encoded bytes (cheap in RAM).
* Frame-level maps do per-frame work: decode, resize, augment (`vlax.data.images`).
* `with_budget` bounds the threads and RAM the whole graph may use (tf.data.Options), so a
  pretraining host does not grow without bound.

Everything here is a plain function over `tf.data.Dataset`; no state, no subclassing.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import numpy as np
import tensorflow as tf

from vlax.data import seeds as seeds_lib

AUTOTUNE = tf.data.AUTOTUNE
Trajectory = dict[str, Any]
Frame = dict[str, Any]


def _no_autograph(fn):
  return tf.autograph.experimental.do_not_convert(fn)


def traj_map(ds: tf.data.Dataset, fn: Callable[[Trajectory], Trajectory],
             num_parallel_calls: int | None = AUTOTUNE,
             deterministic: bool | None = None) -> tf.data.Dataset:
  """Applies `fn` to every whole trajectory (parallel; order kept if deterministic).

  `fn` is traced without autograph: write tf ops (tf.cond, tf.where), not Python control
  flow on tensors; in exchange a VlaxError raised while tracing reaches the caller as is.
  """
  return ds.map(_no_autograph(fn), num_parallel_calls=num_parallel_calls,
                deterministic=deterministic)


def traj_filter(ds: tf.data.Dataset,
                predicate: Callable[[Trajectory], tf.Tensor]) -> tf.data.Dataset:
  """Keeps trajectories where `predicate` (scalar bool tensor) is True."""
  return ds.filter(_no_autograph(predicate))


def flatten(ds: tf.data.Dataset) -> tf.data.Dataset:
  """Trajectories -> frames: each [T, ...] trajectory becomes T frames, in order."""
  return ds.unbatch()


def frame_map(ds: tf.data.Dataset, fn: Callable[[Frame], Frame],
              num_parallel_calls: int | None = AUTOTUNE,
              deterministic: bool | None = None) -> tf.data.Dataset:
  """Applies `fn` to every frame (parallel; order kept if deterministic; no autograph)."""
  return ds.map(_no_autograph(fn), num_parallel_calls=num_parallel_calls,
                deterministic=deterministic)


def frame_filter(ds: tf.data.Dataset,
                 predicate: Callable[[Frame], tf.Tensor]) -> tf.data.Dataset:
  return ds.filter(_no_autograph(predicate))


def with_index(ds: tf.data.Dataset, key: str = "_index") -> tf.data.Dataset:
  """Adds an int64 position in the stream under `key` (used to derive per-element seeds)."""
  return ds.enumerate().map(lambda i, x: {**x, key: i}, num_parallel_calls=None)


def element_seed(base_seed: int, index: tf.Tensor, salt: int = 0) -> tf.Tensor:
  """A stateless seed [2] for element `index` of a stream seeded with `base_seed`."""
  return tf.stack([tf.constant(seeds_lib.fold(base_seed, salt), tf.int64),
                   tf.cast(index, tf.int64)])


def with_budget(ds: tf.data.Dataset, *, threads: int | None = None,
                ram_budget_gb: float | None = None, deterministic: bool = True,
                max_intra_op_parallelism: int = 1) -> tf.data.Dataset:
  """Bounds the pipeline's threads and autotuner RAM; sets determinism.

  threads: size of a private thread pool for this dataset's ops (None: TF's global pool).
  ram_budget_gb: the autotuner's RAM budget for buffers/prefetches (None: TF's default,
    half the host RAM). Shuffle buffers are *not* under this budget: size them yourself
    (they hold encoded image bytes in vlax's robot pipeline).
  deterministic: same order for the same seeds (parallel maps keep their input order).
  """
  options = tf.data.Options()
  options.deterministic = deterministic
  if threads is not None:
    options.threading.private_threadpool_size = int(threads)
  options.threading.max_intra_op_parallelism = max_intra_op_parallelism
  if ram_budget_gb is not None:
    options.autotune.enabled = True
    options.autotune.ram_budget = int(ram_budget_gb * 1024**3)
  return ds.with_options(options)


def from_trajectories(trajs: Iterable[Mapping[str, Any]]) -> tf.data.Dataset:
  """A trajectory dataset from in-memory numpy trajectories (tests, small converters).

  All trajectories must have the same structure and per-step shapes; T may differ.
  """
  trajs = list(trajs)
  if not trajs:
    raise ValueError("from_trajectories needs at least one trajectory")

  def spec(v):
    v = np.asarray(v)
    dtype = tf.string if v.dtype.kind in "SUO" else tf.as_dtype(v.dtype)
    return tf.TensorSpec([None] + list(v.shape[1:]), dtype)

  signature = tf.nest.map_structure(spec, trajs[0])

  def gen():
    for t in trajs:
      yield tf.nest.map_structure(np.asarray, t)

  return tf.data.Dataset.from_generator(gen, output_signature=signature)
