"""Robot (and web) data for vlax.

Modules (one concept each):
  traj           trajectory layer on tf.data (traj_map, flatten, frame_map, budget)
  rlds           RLDS/TFDS reader (split slicing, per-host sharding) and small writer
  oxe/           dataset registry, per-dataset standardization, named mixtures, toy specs
  transforms     chunking, history windows, padding/masks, subsampling, goal relabeling
  normalization  normalize/unnormalize (numpy + tf), shared with tokenizers and Policy
  statistics     streaming per-dataset statistics with a content-hashed JSON cache
  images         decode, resize, seeded stateless augmentation
  mixture        weights, thread allocation, seeded interleave
  seeds          stream/element seeds folded mod 2**63 (no overflow at any step or seed)
  robot          make_robot_dataset: the whole robot pipeline from a config
  inspect        library side of `vlax inspect-data` and `vlax stats`
  metaworld_demos  Meta-World expert demos -> RLDS (the experts of vlax.envs)
The environments behind the toy datasets and the demos are in `vlax.envs`.

Importing `vlax.data` does not import TensorFlow; the attributes below load lazily.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "make_robot_dataset": ("vlax.data.robot", "make_robot_dataset"),
    "get_dataset_statistics": ("vlax.data.statistics", "get_dataset_statistics"),
    "compute_statistics": ("vlax.data.statistics", "compute_statistics"),
    "normalize": ("vlax.data.normalization", "normalize"),
    "unnormalize": ("vlax.data.normalization", "unnormalize"),
    "read_trajectories": ("vlax.data.rlds", "read_trajectories"),
    "write_toy_robot_data": ("vlax.data.oxe.toy", "write_toy_robot_data"),
    "AugmentConfig": ("vlax.data.images", "AugmentConfig"),
}


def __getattr__(name: str) -> Any:
  if name in _LAZY:
    module, attr = _LAZY[name]
    return getattr(importlib.import_module(module), attr)
  raise AttributeError(f"module 'vlax.data' has no attribute {name!r}")


__all__ = list(_LAZY)
