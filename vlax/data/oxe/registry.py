"""The dataset registry: one declarative `DatasetSpec` per robot dataset.

A spec says how a raw RLDS trajectory of that dataset becomes vlax's standardized
trajectory: which observation keys are which cameras, how the action and proprio vectors
are assembled from raw fields (including gripper convention fixes), where the language
instruction lives, and which dimensions are normalized.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import importlib
import importlib.util
import os
from typing import Any, Callable, Mapping

from vlax.errors import VlaxError

# A raw trajectory: every RLDS step field stacked along a leading time axis T, nested like
# the dataset's features (e.g. traj["observation"]["state"], traj["action"]["world_vector"]),
# episode metadata broadcast to [T, ...] under traj["episode_metadata"]; images stay encoded
# bytes (tf.string [T]). A standardizer returns
#   {"action": float32 [T, A], "proprio": float32 [T, P] (P may be 0),
#    "language_instruction": tf.string [T]}
Trajectory = dict[str, Any]
Standardizer = Callable[[Trajectory], Trajectory]


class ActionEncoding(str, enum.Enum):
  """What the action vector means (OXE's encodings plus a few more)."""

  EEF_DELTA_7 = "eef_delta_7"  # xyz delta, roll-pitch-yaw delta, gripper (1 = open)
  EEF_POS_7 = "eef_pos_7"  # absolute xyz, rpy, gripper
  EEF_DELTA_6 = "eef_delta_6"  # xyz delta, rpy delta, no gripper (e.g. cable routing)
  EEF_DELTA_XYZ_4 = "eef_delta_xyz_4"  # xyz delta + gripper, no rotation (e.g. jaco_play)
  JOINT_POS = "joint_pos"  # joint angles (+ gripper)
  JOINT_POS_BIMANUAL_14 = "joint_pos_bimanual_14"  # 2 x (6 joints + gripper)
  EEF_DELTA_BIMANUAL_14 = "eef_delta_bimanual_14"
  EEF_POS_BIMANUAL_14 = "eef_pos_bimanual_14"  # 2 x (absolute xyz, rpy, gripper)
  PLANAR_2 = "planar_2"  # 2-D end-effector delta (e.g. language_table)
  BASE_AND_EEF = "base_and_eef"  # mobile base velocity + arm
  OTHER = "other"


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """How to read and standardize one RLDS dataset."""

  name: str  # registry name == TFDS builder name
  version: str  # TFDS version to read, e.g. "0.1.0"
  image_keys: Mapping[str, str | None]  # camera (primary/secondary/wrist) -> raw obs key
  standardize: Standardizer
  action_dim: int
  proprio_dim: int
  action_encoding: ActionEncoding
  action_normalization_mask: tuple[bool, ...]  # False = keep raw (gripper, flags)
  proprio_normalization_mask: tuple[bool, ...] = ()
  language_key: str | None = None  # where the instruction is read from (documentation)
  gripper: str = "open=1 closed=0"  # raw convention and what standardize does about it
  normalization_type: str = "bounds"  # "bounds" (q01/q99 -> [-1, 1]), "normal", "quantile"
  train_split: str = "train[:95%]"
  val_split: str = "train[95%:]"
  control_hz: float | None = None
  description: str = ""
  # Other vectors config.data.proprio_source may select as the proprio: ((source, raw
  # observation key, dim), ...), e.g. Meta-World's ("full_state", "full_state", 39).
  proprio_sources: tuple[tuple[str, str, int], ...] = ()
  proprio_source: str = "proprio"  # which one this spec reads (`with_proprio_source`)

  def __post_init__(self):
    if len(self.action_normalization_mask) != self.action_dim:
      raise VlaxError(
          f"dataset {self.name!r}: action_normalization_mask has "
          f"{len(self.action_normalization_mask)} entries, action_dim is {self.action_dim}")
    if self.proprio_normalization_mask and len(self.proprio_normalization_mask) != self.proprio_dim:
      raise VlaxError(
          f"dataset {self.name!r}: proprio_normalization_mask has "
          f"{len(self.proprio_normalization_mask)} entries, proprio_dim is {self.proprio_dim}")
    if self.normalization_type not in ("bounds", "normal", "quantile"):
      raise VlaxError(f"dataset {self.name!r}: unknown normalization_type "
                      f"{self.normalization_type!r} (use 'bounds', 'normal' or 'quantile')")


_REGISTRY: dict[str, DatasetSpec] = {}
# Modules whose import registers specs; loaded on first lookup.
_CATALOG_MODULES = ("vlax.data.oxe.datasets", "vlax.data.oxe.toy", "vlax.data.oxe.metaworld")
_catalog_loaded = False


def register(spec: DatasetSpec, *, overwrite: bool = False) -> DatasetSpec:
  """Adds `spec` to the registry (e.g. a user's own robot); returns it."""
  if spec.name in _REGISTRY and not overwrite:
    raise VlaxError(f"dataset {spec.name!r} is already registered")
  _REGISTRY[spec.name] = spec
  return spec


def _load_user_module(entry: str) -> None:
  """Imports a module name or executes a .py file that calls `register(...)`."""
  if entry.endswith(".py"):
    if not os.path.isfile(entry):
      raise VlaxError(f"VLAX_DATASETS: dataset registration file not found: {entry}")
    spec = importlib.util.spec_from_file_location(
        f"vlax_user_datasets_{abs(hash(entry))}", entry)
    module = importlib.util.module_from_spec(spec)
    try:
      spec.loader.exec_module(module)
    except VlaxError:
      raise
    except Exception as e:  # noqa: BLE001 - name the user's file
      raise VlaxError(f"VLAX_DATASETS: {entry} failed to load: {type(e).__name__}: {e}") from e
  else:
    if not all(part.isidentifier() for part in entry.split(".")):
      raise VlaxError(f"VLAX_DATASETS: {entry!r} is neither a module name (a.b.c) nor a "
                      ".py file")
    try:
      importlib.import_module(entry)
    except VlaxError:
      raise
    except ImportError as e:
      raise VlaxError(f"VLAX_DATASETS: cannot import {entry!r}: {e}") from e
    except Exception as e:  # noqa: BLE001 - name the user's module
      raise VlaxError(f"VLAX_DATASETS: module {entry!r} failed to load: "
                      f"{type(e).__name__}: {e}") from e


def _load_catalog() -> None:
  """Registers the built-in datasets, then the user's (env VLAX_DATASETS).

  VLAX_DATASETS is a comma-separated list of module names or .py files that call
  `register(DatasetSpec(...))` (e.g. the template printed by
  data_pipelines/convert_episodes_to_rlds.py), so every command (train, stats,
  inspect-data, eval) sees a new robot's dataset without editing vlax.
  """
  global _catalog_loaded
  if _catalog_loaded:
    return
  _catalog_loaded = True
  for module in _CATALOG_MODULES:
    try:
      importlib.import_module(module)
    except ModuleNotFoundError as e:
      if e.name != module:
        raise
  for entry in filter(None, (s.strip() for s in os.environ.get("VLAX_DATASETS", "").split(","))):
    _load_user_module(entry)


def get_spec(name: str) -> DatasetSpec:
  """The spec registered under `name`; a clear error listing near names otherwise."""
  _load_catalog()
  if name not in _REGISTRY:
    close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise VlaxError(f"unknown dataset {name!r}{hint}; registered: {len(_REGISTRY)} datasets, "
                    "see vlax.data.oxe.registry.list_datasets()")
  return _REGISTRY[name]


PROPRIO_SOURCES = ("proprio", "full_state")


def with_proprio_source(spec: DatasetSpec, source: str) -> DatasetSpec:
  """`spec` whose 'proprio' is the observation vector `source` names (config.data.
  proprio_source); "proprio" is the spec itself. A VlaxError names the dataset when it
  does not store that source."""
  if source == "proprio":
    return spec
  if source not in PROPRIO_SOURCES:
    raise VlaxError(f"config.data.proprio_source must be one of {PROPRIO_SOURCES}, got "
                    f"{source!r}")
  found = {s: (k, d) for s, k, d in spec.proprio_sources}
  if source not in found:
    raise VlaxError(f"dataset {spec.name!r} has no {source!r} to use as proprio "
                    f"(config.data.proprio_source); it stores "
                    f"{['proprio'] + sorted(found)}")
  key, dim = found[source]
  base = spec.standardize

  def standardize(traj):
    out = dict(base(traj))
    out["proprio"] = traj["observation"][key]
    return out

  return dataclasses.replace(spec, standardize=standardize, proprio_dim=int(dim),
                             proprio_normalization_mask=(True,) * int(dim),
                             proprio_source=source)


def list_datasets() -> list[str]:
  _load_catalog()
  return sorted(_REGISTRY)
