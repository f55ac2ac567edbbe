"""The held-out robot stream of an offline eval (`vlax eval` without --env).

The checkpoint is self-contained: its metadata rebuilds the prompt format and tokenizers
(`text_tokenizer`, `action_tokenizer`), the normalization statistics and the training
config, whose `data` section names the datasets. The held-out stream is the robot part of
that data (each dataset's val split, in order, no augmentation), normalized with the
checkpoint's own statistics. Web examples carry no actions and are skipped.

`EvalData` checks the checkpoint against the datasets (registry, statistics, action dims,
chunk length) before any data or params are read, and yields padded numpy batches.
"""

from __future__ import annotations

import os
from typing import Any, Iterator, Mapping, Sequence

import ml_collections
import numpy as np

from vlax.config import apply_overrides, load_config
from vlax.data.cotrain import resolve_data_config, robot_entries
from vlax.data.oxe import registry
from vlax.data.oxe import toy
from vlax.data.sequence import SequenceBuilder, filter_flagged, numpy_iterator
from vlax.errors import VlaxError
from vlax.evaluation.metrics import ActionMetrics

# Metadata entries that define the eval data (vs. "model", which defines the network).
DATA_KEYS = ("text_tokenizer", "action_tokenizer", "statistics", "dataset_names", "config")


def eval_config(metadata: Mapping[str, Any], config: str | None = None,
                overrides: Sequence[str] = ()):
  """The data config of the eval: the checkpoint's training config, or `config`."""
  if config:
    return load_config(config, overrides)
  stored = metadata.get("config") or {}
  if not stored:
    raise VlaxError("checkpoint metadata has no training 'config'; pass --config")
  cfg = ml_collections.ConfigDict(dict(stored))
  # Fill missing data keys with their defaults so that any of them can be overridden.
  cfg.data = resolve_data_config(cfg)
  return apply_overrides(cfg, overrides)


def _normalization_mode(name: str, stats: Mapping[str, Any]) -> str:
  return stats.get("normalization_type") or registry.get_spec(name).normalization_type


class EvalData:
  """What the eval needs to know about the robot datasets of a config + checkpoint."""

  def __init__(self, config, metadata: Mapping[str, Any],
               datasets: Sequence[str] | None = None):
    self.config = config
    self.data = resolve_data_config(config)
    entries = robot_entries(self.data.robot_datasets)
    if datasets:
      known = [n for n, _ in entries]
      unknown = [n for n in datasets if n not in known]
      if unknown:
        raise VlaxError(f"dataset(s) {unknown} not in the eval config's robot datasets "
                        f"{known}")
      entries = [(n, w) for n, w in entries if n in datasets]
    if not entries:
      raise VlaxError("the eval config has no robot datasets (config.data.robot_datasets "
                      "is empty): nothing to evaluate")
    self.entries = entries
    self.names = [n for n, _ in entries]
    statistics = dict(metadata.get("statistics") or {})
    act = dict(metadata.get("action_tokenizer") or {})
    ckpt_dims = dict(act.get("action_dims") or {})
    self.statistics, self.action_dims, self.modes, self.gripper_dims = {}, {}, {}, {}
    for name in self.names:
      spec = registry.get_spec(name)  # VlaxError for an unregistered dataset
      if name not in statistics:
        raise VlaxError(f"dataset {name!r} has no normalization statistics in the "
                        f"checkpoint (it has: {sorted(statistics)})")
      st = statistics[name]
      dim = int(spec.action_dim)
      if name in ckpt_dims and int(ckpt_dims[name]) != dim:
        raise VlaxError(f"dataset {name!r}: action dim {dim} in the registry but "
                        f"{ckpt_dims[name]} in the checkpoint")
      if len(st["action"]["mean"]) != dim:
        raise VlaxError(f"dataset {name!r}: checkpoint statistics have "
                        f"{len(st['action']['mean'])} action dims, the dataset has {dim}")
      self.statistics[name] = st
      self.action_dims[name] = dim
      self.modes[name] = _normalization_mode(name, st)
      mask = st["action"].get("mask") or [True] * dim
      # Dims kept raw (not normalized) are the binary ones: grippers / flags.
      self.gripper_dims[name] = [i for i, m in enumerate(mask) if not m]
    self.builder = SequenceBuilder.from_metadata(metadata)
    self.chunk_len = int(self.data.chunk_len)
    ckpt_chunk = act.get("chunk_len")
    if ckpt_chunk is not None and int(ckpt_chunk) != self.chunk_len:
      raise VlaxError(f"config.data.chunk_len={self.chunk_len} but the checkpoint was "
                      f"trained with chunk_len={ckpt_chunk}")
    self.max_action_dim = max(self.action_dims.values())
    self.decode_steps = self.builder.max_decode_steps(self.chunk_len, self.max_action_dim)

  def make_metrics(self, max_plot_episodes: int = 3):
    return ActionMetrics(self.names, self.action_dims, self.chunk_len,
                         gripper_dims=self.gripper_dims,
                         max_plot_episodes=max_plot_episodes)

  def data_dir(self, workdir: str) -> tuple[str, str | None]:
    """(data_dir, stats cache); toy datasets are (re)generated under workdir/toy_data."""
    d = self.data
    if d.data_dir:
      return d.data_dir, d.stats_cache_dir or None
    if not all(n in toy.TOY_DATASETS for n in self.names):
      raise VlaxError(f"config.data.data_dir is empty but the robot datasets {self.names} "
                      f"are not the built-in toy ones")
    data_dir = os.path.join(workdir, "toy_data")
    # Same generator arguments as training -> the same (deterministic) episodes.
    toy.write_for_data_config(data_dir, d, self.names)
    return data_dir, d.stats_cache_dir or os.path.join(workdir, "cache")

  def batches(self, workdir: str, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Held-out robot batches: the `Batch` keys + action, action_pad_mask, episode, timestep.

    The last batch is padded to `batch_size` (one compiled shape); `valid` marks real
    rows. `episode` / `timestep` are recovered from the in-order stream (an episode
    ends at the frame whose chunk has a single valid step).
    """
    # TensorFlow only once the stream is read: the closed-loop evals (Meta-World:
    # MuJoCo's EGL rendering crashes under TF) import this module and never read it.
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from vlax.data import robot as robot_lib  # pylint: disable=g-import-not-at-top
    d = self.data
    data_dir, stats_cache = self.data_dir(workdir)
    frames, _ = robot_lib.make_robot_dataset(
        self.entries, data_dir, image_size=int(d.image_size), cameras=tuple(d.cameras),
        chunk_len=self.chunk_len, history=int(d.history), train=False, augment=False,
        seed=0, stats_cache_dir=stats_cache, statistics=self.statistics,
        process_index=0, process_count=1, max_action_dim=self.max_action_dim,
        progress=False)
    builder = self.builder

    def example(frame):
      out, keep = builder.robot_example(frame)
      out.update(action=tf.cast(frame["action"], tf.float32),
                 action_pad_mask=tf.cast(frame["action_pad_mask"], tf.bool))
      return out, keep

    ds = filter_flagged(frames.map(example, num_parallel_calls=tf.data.AUTOTUNE,
                                   deterministic=True))
    ds = ds.batch(batch_size).prefetch(2)
    episode = np.zeros(len(self.names), np.int64)
    step = np.zeros(len(self.names), np.int64)
    for batch in numpy_iterator(ds):
      n = len(batch["tokens"])
      ep_ids, ts = np.zeros(n, np.int64), np.zeros(n, np.int64)
      valid_steps = batch["action_pad_mask"].any(-1).sum(-1)  # [B]
      for j, di in enumerate(batch["dataset_index"]):
        ep_ids[j] = episode[di] * len(self.names) + di
        ts[j] = step[di]
        step[di] += 1
        if (self.chunk_len > 1 and valid_steps[j] <= 1) or step[di] >= 1000:
          episode[di] += 1
          step[di] = 0
      batch = dict(batch, episode=ep_ids, timestep=ts, valid=np.ones(n, bool))
      if n < batch_size:
        pad = batch_size - n
        batch = {k: np.concatenate([v, np.repeat(v[-1:], pad, 0)]) for k, v in
                 batch.items()}
        batch["valid"][n:] = False
      yield batch
