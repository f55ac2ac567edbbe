"""Training checkpoints: orbax CheckpointManager over the vlax checkpoint layout.

ROOT/<step>/{params, metadata} is the model checkpoint of vlax.checkpoints.format (any
training checkpoint is also a loadable model checkpoint); training adds
ROOT/<step>/opt_state (the optax state, flattened to numbered leaves) and
ROOT/<step>/train_state ({'step', 'rng'}).

- Saves are async (the train loop continues while arrays are written) and atomic: orbax
  writes into `<step>.orbax-checkpoint-tmp-*` and renames it when every item (and every
  process) is done, so an interrupted save is never seen as a step; leftovers are deleted
  on start-up (`cleanup_tmp_directories`).
- Retention: the last `keep` steps plus the best `keep_best` steps by `best_metric`
  (lower is better; steps saved without the metric do not count as best).
- Restore takes target shardings, so a checkpoint written on one mesh / host count is
  read onto another (each process reads only its own shards).

Input pipeline position: on resume the trainer calls
`data_iterator_fn(..., start_step=step)`, and the pipeline seeds its shuffles with
(seed, start_step, process_index), so a resumed run sees a fresh order rather than
replaying the examples of steps [0, step). That alone does not continue the exact same
permutation. When the iterator also has `save_state(dir)` / `restore_state(dir)` (a
tf.data iterator saved with `tf.train.Checkpoint(iterator=...)`), the trainer stores it
per process next to each checkpoint (WORKDIR/data_state/<step>/process_<i>, written
before the model save starts; the trainer reads exactly one batch per step, so the
state sits at the step boundary) and restores it when the process count is unchanged:
then the resumed run continues the same stream exactly.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import numpy as np

from vlax.checkpoints import format as ckpt_format
from vlax.errors import VlaxError
from vlax.training.state import TrainState

PARAMS = ckpt_format.PARAMS_ITEM
METADATA = ckpt_format.METADATA_ITEM
OPT_STATE = ckpt_format.OPT_STATE_ITEM
TRAIN_STATE = ckpt_format.TRAIN_STATE_ITEM
ITEMS = (PARAMS, METADATA, OPT_STATE, TRAIN_STATE)


def _ocp():
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  return ocp


def _flat_opt_state(opt_state: Any) -> dict[str, Any]:
  leaves = jax.tree.leaves(opt_state)
  out = {f"leaf_{i:05d}": x for i, x in enumerate(leaves)}
  out["num_leaves"] = np.asarray(len(leaves), np.int32)
  return out


def _unflat_opt_state(flat: Mapping[str, Any], like: Any) -> Any:
  treedef = jax.tree.structure(like)
  n = treedef.num_leaves
  if int(np.asarray(flat.get("num_leaves", -1))) != n:
    raise VlaxError(
        f"checkpoint opt_state has {int(np.asarray(flat.get('num_leaves', -1)))} leaves, "
        f"the configured optimizer has {n}: the optimizer config changed; set "
        "reset_optimizer=True to start a fresh optimizer state from these params")
  return jax.tree.unflatten(treedef, [flat[f"leaf_{i:05d}"] for i in range(n)])


def _abstract(tree: Any, shardings: Any) -> Any:
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


class Checkpointer:
  """Save / restore TrainStates under ROOT (every process calls every method)."""

  def __init__(self, root: str, *, keep: int = 3, keep_best: int = 0,
               best_metric: str = "loss", async_save: bool = True):
    ocp = _ocp()
    from orbax.checkpoint import checkpoint_managers as cm  # pylint: disable=g-import-not-at-top
    self.root = os.path.abspath(root) if "://" not in root else root
    self.best_metric = best_metric
    policies = [cm.LatestN(n=max(1, int(keep)))]
    if keep_best:
      policies.append(cm.BestN(get_metric_fn=lambda m: -float(m[best_metric]),
                               n=int(keep_best), keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        create=True, cleanup_tmp_directories=True,
        enable_async_checkpointing=async_save,
        preservation_policy=cm.AnyPreservationPolicy(policies))
    handlers = {PARAMS: ocp.PyTreeCheckpointHandler(),
                OPT_STATE: ocp.PyTreeCheckpointHandler(),
                TRAIN_STATE: ocp.PyTreeCheckpointHandler(),
                METADATA: ocp.JsonCheckpointHandler()}
    self.manager = ocp.CheckpointManager(self.root, item_names=ITEMS,
                                         item_handlers=handlers, options=options)

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def latest_step(self) -> int | None:
    """Newest finalized step that has every training item (else None)."""
    for step in reversed(self.all_steps()):
      d = os.path.join(self.root, str(step))
      if "://" in self.root or all(os.path.isdir(os.path.join(d, it))
                                    for it in (PARAMS, TRAIN_STATE)):
        return step
    return None

  def save(self, step: int, state: TrainState, metadata: Mapping[str, Any],
           metrics: Mapping[str, float] | None = None) -> bool:
    """Starts an async save of `state` as `step` (returns once arrays are copied)."""
    ocp = _ocp()
    meta = {"text_tokenizer": {}, "action_tokenizer": {}, "statistics": {}, "config": {},
            **dict(metadata), "format": ckpt_format.FORMAT, "step": int(step)}
    ckpt_format._check_json(meta)  # pylint: disable=protected-access
    args = ocp.args.Composite(**{
        PARAMS: ocp.args.PyTreeSave(state.params),
        OPT_STATE: ocp.args.PyTreeSave(_flat_opt_state(state.opt_state)),
        TRAIN_STATE: ocp.args.PyTreeSave({"step": state.step, "rng": state.rng}),
        METADATA: ocp.args.JsonSave(meta),
    })
    m = None
    if metrics and self.best_metric in metrics and np.isfinite(metrics[self.best_metric]):
      m = {self.best_metric: float(metrics[self.best_metric])}
    return self.manager.save(int(step), args=args, metrics=m, force=True)

  def restore(self, step: int, abstract_state: TrainState, state_sharding: TrainState,
              *, restore_opt_state: bool = True) -> tuple[TrainState, dict]:
    """Reads `step` onto `state_sharding`. With restore_opt_state=False the returned
    opt_state is None (the caller initializes a fresh one)."""
    ocp = _ocp()

    def tree_args(abstract):
      return ocp.args.PyTreeRestore(
          item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract))

    params_abs = _abstract(abstract_state.params, state_sharding.params)
    ts_abs = {"step": jax.ShapeDtypeStruct((), np.int32, sharding=state_sharding.step),
              "rng": jax.ShapeDtypeStruct(abstract_state.rng.shape, abstract_state.rng.dtype,
                                          sharding=state_sharding.rng)}
    items = {PARAMS: tree_args(params_abs), TRAIN_STATE: tree_args(ts_abs),
             METADATA: ocp.args.JsonRestore()}
    if restore_opt_state:
      self._check_opt_state(step, abstract_state.opt_state)
      opt_abs = _flat_opt_state(_abstract(abstract_state.opt_state, state_sharding.opt_state))
      rep = state_sharding.step
      opt_abs["num_leaves"] = jax.ShapeDtypeStruct((), np.int32, sharding=rep)
      items[OPT_STATE] = tree_args(opt_abs)
    where = os.path.join(self.root, str(step))
    try:
      out = self.manager.restore(int(step), args=ocp.args.Composite(**items))
    except Exception as e:  # pylint: disable=broad-except
      raise VlaxError(f"cannot restore training checkpoint {where}: "
                      f"{type(e).__name__}: {e}") from e
    opt_state = None
    if restore_opt_state:
      opt_state = _unflat_opt_state(out[OPT_STATE], abstract_state.opt_state)
    ts = out[TRAIN_STATE]
    state = TrainState(step=ts["step"], params=out[PARAMS], opt_state=opt_state,
                       rng=ts["rng"])
    return state, dict(out[METADATA])

  def _check_opt_state(self, step: int, abstract_opt_state: Any) -> None:
    """Clear error (before orbax's) when the optimizer config changed since the save."""
    try:
      tree = self.manager.item_metadata(int(step))[OPT_STATE]
      tree = dict(getattr(tree, "tree", tree))
    except Exception:  # pylint: disable=broad-except
      return  # no metadata to compare: let restore report what it finds
    have = sum(1 for k in tree if k.startswith("leaf_"))
    want = len(jax.tree.leaves(abstract_opt_state))
    if have != want:
      raise VlaxError(
          f"checkpoint {self.root}/{step}: its optimizer state has {have} arrays, the "
          f"configured optimizer has {want}: the optimizer config (name, frozen params) "
          "changed. Set reset_optimizer=True to keep the params and step and start a "
          "fresh optimizer state.")

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
