"""The vlax checkpoint format: Orbax step directories plus one JSON of metadata.

A checkpoint ROOT is an Orbax `CheckpointManager` directory; every saved step is a
`ROOT/<step>/` directory holding one Orbax item per name below:

  ROOT/<step>/params/       PyTree of the model parameters (big_vision PaliGemma tree,
                            float32 unless exported in bf16).
  ROOT/<step>/metadata/     JSON (orbax JsonSave) with the keys:
      "format"            "vlax/1" (FORMAT)
      "model"             VLAConfig.to_dict()
      "text_tokenizer"    dict: how prompts are tokenized (may be empty)
      "action_tokenizer"  dict: the action tokenizer's settings (may be empty)
      "statistics"        {dataset_name: normalization-statistics dict}
      "config"            dict: the training config that produced the checkpoint
      "step"              int: the step number (always equal to <step>)
      "source"            optional dict: where imported weights came from
  ROOT/<step>/opt_state/    training only (written by vlax.training)
  ROOT/<step>/train_state/  training only (written by vlax.training)
  ROOT/<step>/ema_params/   training with `ema_decay` > 0: the params' exponential moving
                            average (same tree). Loaders (vlax.checkpoints.weights) take
                            it instead of params/ unless asked for the raw weights.

The training loop runs its own `CheckpointManager` on the same ROOT with the same item
names (PARAMS_ITEM, METADATA_ITEM, OPT_STATE_ITEM, TRAIN_STATE_ITEM), so a training
checkpoint is also a loadable model checkpoint. A checkpoint is self-contained: the
metadata carries everything needed to rebuild the model and unnormalize actions.

Functions take `path` as either the ROOT or one `ROOT/<step>` directory.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import jax
from etils import epath
import numpy as np

from vlax.errors import VlaxError

FORMAT = "vlax/1"
PARAMS_ITEM = "params"
METADATA_ITEM = "metadata"
OPT_STATE_ITEM = "opt_state"
TRAIN_STATE_ITEM = "train_state"
EMA_PARAMS_ITEM = "ema_params"
METADATA_KEYS = ("format", "model", "text_tokenizer", "action_tokenizer",
                 "statistics", "config", "step")

_STEP_DIR = re.compile(r"^\d+$")


def _ocp():
  # Imported lazily: orbax is slow to import and not needed to read the docstring.
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  return ocp


def _manager(root: str, create: bool = False):
  ocp = _ocp()
  return ocp.CheckpointManager(
      _path(root),
      item_names=(PARAMS_ITEM, METADATA_ITEM, EMA_PARAMS_ITEM),
      item_handlers={PARAMS_ITEM: ocp.PyTreeCheckpointHandler(),
                     EMA_PARAMS_ITEM: ocp.PyTreeCheckpointHandler(),
                     METADATA_ITEM: ocp.JsonCheckpointHandler()},
      options=ocp.CheckpointManagerOptions(create=create),
  )


def _path(path: str):
  # etils.epath (used by orbax) handles local paths and gs:// alike.
  path = os.fspath(path)
  if "://" not in path:
    path = os.path.abspath(os.path.normpath(path))
  return epath.Path(path)


def _is_step_dir(path: str) -> bool:
  p = _path(path)
  return bool(_STEP_DIR.match(p.name)) and (
      (p / PARAMS_ITEM).is_dir() or (p / METADATA_ITEM).is_dir())


is_step_dir = _is_step_dir  # public: True for one ROOT/<step> directory


def resolve(path: str, step: int | None = None) -> tuple[str, int]:
  """Returns (root, step) for a ROOT or ROOT/<step> path; step defaults to the latest."""
  path = os.fspath(path)
  p = _path(path)
  if not p.exists():
    raise VlaxError(f"checkpoint path does not exist: {path}")
  if not p.is_dir():
    raise VlaxError(f"checkpoint path is not a directory: {path}")
  if _is_step_dir(path):
    root = str(p.parent)
    dir_step = int(p.name)
    if step is not None and int(step) != dir_step:
      raise VlaxError(f"step {step} requested but {path} is the directory of step "
                      f"{dir_step}")
    return root, dir_step
  steps = all_steps(path)
  if not steps:
    raise VlaxError(f"no checkpoint steps found in {path}")
  if step is None:
    return str(p), steps[-1]
  if int(step) not in steps:
    raise VlaxError(f"step {step} not found in {path} (available: {steps})")
  return str(p), int(step)


def all_steps(root: str) -> list[int]:
  """Sorted steps with a finished checkpoint under ROOT ([] if none)."""
  p = _path(root)
  if not p.is_dir():
    return []
  # Orbax writes into a temporary name and renames on commit, so a digits-only name
  # is a finished step.
  return sorted(int(d.name) for d in p.iterdir()
                if _STEP_DIR.match(d.name) and d.is_dir())


def latest_step(root: str) -> int | None:
  """The newest step under ROOT, or None when ROOT has no checkpoint."""
  if _is_step_dir(root):
    root = str(_path(root).parent)
  steps = all_steps(root)
  return steps[-1] if steps else None


def short_error(e: BaseException, limit: int = 160) -> str:
  """`Type: first line of the message`, capped (orbax/TensorStore errors run to pages)."""
  lines = str(e).strip().splitlines()
  first = lines[0].split(" See full TensorStore details")[0] if lines else ""
  if len(first) > limit:
    first = first[:limit] + "..."
  return f"{type(e).__name__}: {first}" if first else type(e).__name__


def _check_json(metadata: dict[str, Any]) -> dict[str, Any]:
  for key, value in metadata.items():
    try:
      json.dumps(value)
    except (TypeError, ValueError) as e:
      raise VlaxError(f"checkpoint metadata key {key!r} is not JSON-serializable: {e}"
                      ) from None
  return metadata


def save_checkpoint(root: str, step: int, params: Any,
                    metadata: dict[str, Any] | None = None) -> str:
  """Writes `params` and `metadata` as ROOT/<step>; returns that step directory.

  `metadata` keys follow the module docstring; "format" and "step" are filled in.
  Arrays may be numpy or (sharded) jax arrays; every process must call this.
  """
  root = str(_path(root))
  step = int(step)
  if _path(root).exists() and not _path(root).is_dir():
    raise VlaxError(f"checkpoint root is not a directory: {root}")
  if step in all_steps(root):
    raise VlaxError(f"checkpoint step {step} already exists in {root}")
  meta = {"text_tokenizer": {}, "action_tokenizer": {}, "statistics": {},
          "config": {}, **(metadata or {}), "format": FORMAT, "step": step}
  _check_json(meta)
  ocp = _ocp()
  mngr = _manager(root, create=True)
  try:
    mngr.save(step, args=ocp.args.Composite(**{
        PARAMS_ITEM: ocp.args.PyTreeSave(params),
        METADATA_ITEM: ocp.args.JsonSave(meta),
    }))
    mngr.wait_until_finished()
  finally:
    mngr.close()
  return str(_path(root) / str(step))


def read_metadata(path: str, step: int | None = None) -> dict[str, Any]:
  """The metadata JSON of a checkpoint (latest step unless `step` or a step dir)."""
  root, step = resolve(path, step)
  step_dir = _path(root) / str(step)
  if not (step_dir / METADATA_ITEM).is_dir():
    raise VlaxError(f"checkpoint {step_dir} has no {METADATA_ITEM!r} item")
  ocp = _ocp()
  mngr = _manager(root)
  try:
    out = mngr.restore(step, args=ocp.args.Composite(**{
        METADATA_ITEM: ocp.args.JsonRestore()}))[METADATA_ITEM]
  except Exception as e:  # pylint: disable=broad-except
    raise VlaxError(f"cannot read metadata of checkpoint {step_dir}: {short_error(e)}"
                    ) from None
  finally:
    mngr.close()
  if not isinstance(out, dict) or "model" not in out:
    raise VlaxError(f"checkpoint {step_dir} metadata has no 'model' entry")
  return out


def has_ema(path: str, step: int | None = None) -> bool:
  """Whether a checkpoint step holds EMA params (ROOT/<step>/ema_params)."""
  root, step = resolve(path, step)
  return (_path(root) / str(step) / EMA_PARAMS_ITEM).is_dir()


def load_params(path: str, step: int | None = None,
                shardings: Any = None, item: str = PARAMS_ITEM) -> tuple[Any, dict[str, Any]]:
  """Restores (params, metadata) from a checkpoint.

  Args:
    path: ROOT or ROOT/<step>.
    step: which step (default: the step dir's, else the latest).
    shardings: None to restore host numpy arrays; else a `jax.sharding.Sharding` for
      every leaf, or a pytree of shardings matching the params tree, in which case
      arrays are restored directly onto those shardings (multi-host safe).
    item: PARAMS_ITEM, or EMA_PARAMS_ITEM for the EMA weights.
  """
  root, step = resolve(path, step)
  step_dir = _path(root) / str(step)
  if item not in (PARAMS_ITEM, EMA_PARAMS_ITEM):
    raise VlaxError(f"unknown params item {item!r}")
  if not (step_dir / item).is_dir():
    raise VlaxError(f"checkpoint {step_dir} has no {item!r} item")
  metadata = read_metadata(root, step)
  ocp = _ocp()
  # The params item alone, through its own handler: a manager would look at every item
  # of a training step (opt_state, train_state, ...) and warn about each it cannot read.
  handler = ocp.PyTreeCheckpointHandler()
  try:
    tree_meta = tree_metadata(handler.metadata(step_dir / item))
    if shardings is None:
      restore_args = jax.tree.map(
          lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree_meta)
      args = ocp.args.PyTreeRestore(restore_args=restore_args)
    else:
      if isinstance(shardings, jax.sharding.Sharding):
        shardings = jax.tree.map(lambda _: shardings, tree_meta)
      try:
        abstract = jax.tree.map(
            lambda m, s: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=s),
            tree_meta, shardings)
      except ValueError as e:
        raise VlaxError(f"shardings do not match the params tree of {step_dir}: {e}"
                        ) from None
      args = ocp.args.PyTreeRestore(
          item=abstract,
          restore_args=ocp.checkpoint_utils.construct_restore_args(abstract))
    params = handler.restore(step_dir / item, args=args)
  except VlaxError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise VlaxError(f"cannot restore params of checkpoint {step_dir}: {short_error(e)}"
                    ) from None
  finally:
    handler.close()
  return params, metadata


def tree_metadata(meta: Any) -> Any:
  """The pytree of array metadata of a PyTree item: Orbax 0.11 returns it as a dict,
  0.12 wraps it (StepMetadata.item_metadata, TreeMetadata.tree)."""
  for attr in ("item_metadata", "tree"):
    inner = getattr(meta, attr, None)
    if inner is not None and not isinstance(meta, dict):
      return tree_metadata(inner)
  return meta
