"""Training checkpoints: orbax CheckpointManager over the vlax checkpoint layout.

ROOT/<step>/{params, metadata} is the model checkpoint of vlax.checkpoints.format (any
training checkpoint is also a loadable model checkpoint); training adds
ROOT/<step>/opt_state (the optax state, flattened to numbered leaves) and
ROOT/<step>/train_state ({'step', 'rng'}) and, with `ema_decay` > 0,
ROOT/<step>/ema_params (the params' moving average, the params' tree; a run with EMA
resuming from a checkpoint without it starts the average at the restored params).

- Saves are async (the train loop continues while arrays are written) and atomic: orbax
  writes into `<step>.orbax-checkpoint-tmp-*` and renames it when every item (and every
  process) is done, so an interrupted save is never seen as a step; leftovers are deleted
  on start-up (`cleanup_tmp_directories`).
- Retention: the last `keep` steps plus the best `keep_best` steps by `best_metric`
  (lower is better; steps saved without the metric do not count as best), counting only
  steps known good (see `Checkpointer`); evictions wait until the newer save is on disk.
- Failure: a save that does not land (disk full, permission) raises CheckpointSaveError
  with its partial files removed; `restore_latest` walks back past unreadable steps.
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

import logging
import os
import sys
from typing import Any, Callable, Mapping

import jax
import numpy as np
from etils import epath  # local or gs:// paths
from jax.experimental import multihost_utils

from vlax.checkpoints import format as ckpt_format
from vlax.errors import VlaxError
from vlax.training.state import TrainState

PARAMS = ckpt_format.PARAMS_ITEM
METADATA = ckpt_format.METADATA_ITEM
OPT_STATE = ckpt_format.OPT_STATE_ITEM
TRAIN_STATE = ckpt_format.TRAIN_STATE_ITEM
EMA = ckpt_format.EMA_PARAMS_ITEM
ITEMS = (PARAMS, METADATA, OPT_STATE, TRAIN_STATE, EMA)


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
    raise OptimizerMismatchError(
        f"checkpoint opt_state has {int(np.asarray(flat.get('num_leaves', -1)))} leaves, "
        f"the configured optimizer has {n}: the optimizer config changed; set "
        "reset_optimizer=True to start a fresh optimizer state from these params")
  return jax.tree.unflatten(treedef, [flat[f"leaf_{i:05d}"] for i in range(n)])


def _abstract(tree: Any, shardings: Any) -> Any:
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def read_opt_state(directory: str, abstract_opt_state: Any, opt_state_sharding: Any,
                   replicated: Any) -> Any:
  """The optimizer state saved in `directory` (a step's OPT_STATE item) onto
  `opt_state_sharding`: what `init_from` reads to keep a checkpoint's optimizer state.
  Raises OptimizerMismatchError (or orbax's error) when it does not fit."""
  ocp = _ocp()
  opt_abs = _flat_opt_state(_abstract(abstract_opt_state, opt_state_sharding))
  opt_abs["num_leaves"] = jax.ShapeDtypeStruct((), np.int32, sharding=replicated)
  flat = ocp.PyTreeCheckpointer().restore(directory, args=ocp.args.PyTreeRestore(
      item=opt_abs, restore_args=ocp.checkpoint_utils.construct_restore_args(opt_abs)))
  return _unflat_opt_state(flat, abstract_opt_state)


class OptimizerMismatchError(VlaxError):
  """The checkpoint's optimizer state does not fit the configured optimizer."""


class NoReadableCheckpointError(VlaxError):
  """ROOT holds steps and none restores: the run stops (nothing moved) unless the user
  chose to start over (`restart_over_unreadable`)."""


class CheckpointSaveError(VlaxError):
  """A save failed (disk full, permission, ...): training stops; earlier steps are intact."""


class _KeepAll:
  """Orbax preservation policy that deletes nothing: retention is ours (`_prune`), so a
  step is evicted only after a newer one is confirmed good and finished on disk."""

  def should_preserve(self, checkpoints, *, context):  # pylint: disable=unused-argument
    return [True] * len(checkpoints)


class _OrbaxErrorFilter(logging.Filter):
  """Keeps orbax's background-thread tracebacks (its own ERROR logs, and asyncio's "Task
  exception was never retrieved" for its write tasks, hundreds of lines for one full
  disk) off the terminal: the Checkpointer reports a failed save itself, in one line.
  The exception is kept for that line. VLAX_DEBUG=1 shows everything."""

  def __init__(self):
    super().__init__()
    self.last_error: BaseException | None = None

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno < logging.ERROR or os.environ.get("VLAX_DEBUG") == "1":
      return True
    exc = record.exc_info[1] if record.exc_info else None
    if record.name == "asyncio":
      tb = exc.__traceback__ if exc is not None else None
      files = []
      while tb is not None:
        files.append(tb.tb_frame.f_code.co_filename)
        tb = tb.tb_next
      if not any("orbax" in f for f in files):
        return True
    elif "orbax" not in (record.pathname or ""):
      return True
    if exc is not None:
      self.last_error = exc
    return False


_FILTER = _OrbaxErrorFilter()


def _from_orbax(exc: BaseException | None, obj: Any = None) -> bool:
  """Whether an exception (or its cause chain) or a coroutine comes from orbax."""
  code = getattr(obj, "cr_code", None)
  if code is not None and "orbax" in code.co_filename:
    return True
  seen = 0
  while exc is not None and seen < 8:
    tb = exc.__traceback__
    while tb is not None:
      if "orbax" in tb.tb_frame.f_code.co_filename:
        return True
      tb = tb.tb_next
    exc, seen = exc.__cause__ or exc.__context__, seen + 1
  return False


def _quiet_unraisable(unraisable) -> None:
  """sys.unraisablehook: drops what a failed orbax read or write leaves to the garbage
  collector (coroutines holding a TensorStore error: ~80 lines each; callbacks into its
  closed event loop); the Checkpointer has reported the failure in one line."""
  exc = unraisable.exc_value
  benign = isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"
  if os.environ.get("VLAX_DEBUG") == "1" or not (
      benign or _from_orbax(exc, unraisable.object)):
    _PREVIOUS_UNRAISABLE_HOOK(unraisable)


_PREVIOUS_UNRAISABLE_HOOK = sys.unraisablehook


def _install_filter() -> None:
  """Once per process, for good: asyncio logs unretrieved task errors (and Python reports
  unraisable ones) when they are garbage-collected, maybe after the Checkpointer closed."""
  global _PREVIOUS_UNRAISABLE_HOOK
  for name in ("absl", "asyncio"):
    if _FILTER not in logging.getLogger(name).filters:
      logging.getLogger(name).addFilter(_FILTER)
  if sys.unraisablehook is not _quiet_unraisable:
    _PREVIOUS_UNRAISABLE_HOOK = sys.unraisablehook
    sys.unraisablehook = _quiet_unraisable


class Checkpointer:
  """Save / restore TrainStates under ROOT (every process calls every method).

  Retention (the last `keep` steps plus the best `keep_best`) only ever counts *good*
  steps: steps found on disk at start-up, and saves made with `confirmed=True` or later
  `confirm()`ed. An unconfirmed step is never evicted and never evicts, so a save that
  turns out to hold a diverged state cannot cost the older good ones. Evictions happen
  once the newer save has finished on disk (at the next save, `wait()` or `close()`);
  a save that failed raises CheckpointSaveError there, with its partial files removed.
  """

  def __init__(self, root: str, *, keep: int = 3, keep_best: int = 0,
               best_metric: str = "loss", async_save: bool = True,
               warn: Callable[[str], None] | None = None):
    ocp = _ocp()
    self.root = os.path.abspath(root) if "://" not in root else root
    self.best_metric = best_metric
    self.keep = max(1, int(keep))
    self.keep_best = max(0, int(keep_best))
    self._warn = warn or (lambda msg: print(msg, file=sys.stderr, flush=True))
    self._filter = _FILTER
    _install_filter()
    options = ocp.CheckpointManagerOptions(
        create=True, cleanup_tmp_directories=True,
        enable_async_checkpointing=async_save, preservation_policy=_KeepAll())
    handlers = {PARAMS: ocp.PyTreeCheckpointHandler(),
                OPT_STATE: ocp.PyTreeCheckpointHandler(),
                TRAIN_STATE: ocp.PyTreeCheckpointHandler(),
                EMA: ocp.PyTreeCheckpointHandler(),
                METADATA: ocp.JsonCheckpointHandler()}
    try:
      self.manager = ocp.CheckpointManager(self.root, item_names=ITEMS,
                                           item_handlers=handlers, options=options)
    except OSError as e:
      raise VlaxError(f"cannot use checkpoint directory {self.root}: "
                      f"{e.strerror or ckpt_format.short_error(e)}") from None
    self._good = {s for s in self.manager.all_steps() if self._is_complete(s)}
    self._metrics: dict[int, float] = {}
    self._saving: int | None = None  # a save not yet seen finished on disk
    self._skipped: set[int] = set()  # steps restore walked past (replaced when re-saved)

  def _step_path(self, step: int):
    return epath.Path(self.root) / str(step)

  def _is_complete(self, step: int) -> bool:
    d = self._step_path(step)
    return all((d / it).is_dir() for it in (PARAMS, TRAIN_STATE))

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def good_steps(self) -> list[int]:
    """Steps known good (see the class docstring), oldest first."""
    return [s for s in self.all_steps() if s in self._good]

  def latest_step(self) -> int | None:
    """Newest finalized step that has every training item (else None)."""
    for step in reversed(self.all_steps()):
      if self._is_complete(step):
        return step
    return None

  def confirm(self, step: int) -> None:
    """Marks `step` good (e.g. the step after it had a finite loss); it may now evict."""
    self._good.add(int(step))

  def set_aside(self, step: int, why: str) -> str:
    """Renames ROOT/<step> to ROOT/<step>.<why> (kept for inspection, no longer a step:
    never restored, never in the way of a new save of that step). Returns the new path."""
    self.wait(prune=False)
    src = self._step_path(step)
    dst = src.parent / f"{step}.{why}"
    if jax.process_index() == 0 and src.exists():
      if dst.exists():
        dst.rmtree()
      src.rename(dst)
    _sync(f"vlax_set_aside_{step}")
    self._good.discard(int(step))
    self.manager.reload()
    return os.fspath(dst)

  def save(self, step: int, state: TrainState, metadata: Mapping[str, Any],
           metrics: Mapping[str, float] | None = None, *, confirmed: bool = True) -> bool:
    """Starts an async save of `state` as `step` (returns once arrays are copied).

    `confirmed=False`: the state is not yet known good (call `confirm(step)` once it
    is); until then it evicts nothing. Raises CheckpointSaveError when this save (or the
    previous one, finishing now) fails."""
    ocp = _ocp()
    step = int(step)
    self._finish()
    if self._step_path(step).exists():
      if step not in self._skipped and self._is_complete(step):
        raise CheckpointSaveError(  # never set aside a step this run did not judge
            f"checkpoint {self._step_path(step)} appeared while this run was training "
            "(another run writing to this workdir?); it was not touched")
      self.set_aside(step, "unreadable")  # a step skipped on restore (unreadable)
    meta = {"text_tokenizer": {}, "action_tokenizer": {}, "statistics": {}, "config": {},
            **dict(metadata), "format": ckpt_format.FORMAT, "step": step}
    ckpt_format._check_json(meta)  # pylint: disable=protected-access
    items = {
        PARAMS: ocp.args.PyTreeSave(state.params),
        OPT_STATE: ocp.args.PyTreeSave(_flat_opt_state(state.opt_state)),
        TRAIN_STATE: ocp.args.PyTreeSave({"step": state.step, "rng": state.rng}),
        METADATA: ocp.args.JsonSave(meta),
    }
    if state.ema_params is not None:
      items[EMA] = ocp.args.PyTreeSave(state.ema_params)
    args = ocp.args.Composite(**items)
    if metrics and self.best_metric in metrics and np.isfinite(metrics[self.best_metric]):
      self._metrics[step] = float(metrics[self.best_metric])
    self._filter.last_error = None
    self._saving = step
    try:
      started = self.manager.save(step, args=args, force=True)
    except Exception as e:  # pylint: disable=broad-except  (disk full, permission, ...)
      self._saving = None
      self._failed(step, e)
    if confirmed:
      self._good.add(step)
    return started

  def _finish(self, prune: bool = True) -> None:
    """Waits for the save in flight; raises CheckpointSaveError if it did not land on
    disk; then evicts what retention no longer keeps (unless `prune` is False)."""
    step, self._saving = self._saving, None
    err = None
    try:
      self.manager.wait_until_finished()
      self.manager.check_for_errors()
    except Exception as e:  # pylint: disable=broad-except
      err = e
    if step is not None and not (self._step_path(step) / TRAIN_STATE).is_dir():
      self._failed(step, err or self._filter.last_error)
    if prune:
      self._prune()

  def poll(self) -> None:
    """Cheap check, every step: raises CheckpointSaveError once the save in flight has
    ended without landing on disk (the host never waits for it here)."""
    step = self._saving
    if (step is None or jax.process_count() > 1  # (multi-host: at the next save only)
        or self.manager.is_saving_in_progress()):
      return
    self._saving = None  # ended: checked once here (a file-system stat), not every step
    if not (self._step_path(step) / TRAIN_STATE).is_dir():
      self._failed(step, self._filter.last_error)

  def _failed(self, step: int, err: BaseException | None) -> None:
    """Removes the failed save's partial files and raises CheckpointSaveError."""
    try:
      self.manager.wait_until_finished()
    except Exception:  # pylint: disable=broad-except
      pass
    if jax.process_index() == 0:
      root = self._step_path(step).parent
      for d in list(root.iterdir()) if root.is_dir() else []:
        if d.name == str(step) or d.name.startswith(f"{step}.orbax-checkpoint-tmp"):
          d.rmtree(missing_ok=True) if d.is_dir() else d.unlink(missing_ok=True)
    self._good.discard(step)
    self._metrics.pop(step, None)
    self.manager.reload()
    good = self.good_steps()
    last = f"{self.root}/{good[-1]}" if good else "none"
    why = ckpt_format.short_error(err) if err is not None else "the step never appeared on disk"
    raise CheckpointSaveError(f"saving checkpoint {self.root}/{step} failed ({why}); "
                              f"partial files removed; last good checkpoint: {last}")

  def _prune(self) -> None:
    """Keeps the last `keep` good steps, the best `keep_best` good ones, and every step
    not (yet) known good; deletes the rest."""
    steps = self.all_steps()
    good = [s for s in steps if s in self._good]
    keep = set(good[-self.keep:]) | {s for s in steps if s not in self._good}
    if self.keep_best:
      ranked = sorted((self._metrics[s], s) for s in good if s in self._metrics)
      keep |= {s for _, s in ranked[:self.keep_best]}
    for s in steps:
      if s not in keep:
        self.manager.delete(s)

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
    want_ema = abstract_state.ema_params is not None
    has_ema = want_ema and (self._step_path(step) / EMA).is_dir()
    if has_ema:
      items[EMA] = tree_args(_abstract(abstract_state.ema_params, state_sharding.ema_params))
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
                      f"{ckpt_format.short_error(e)}") from None
    opt_state = None
    if restore_opt_state:
      opt_state = _unflat_opt_state(out[OPT_STATE], abstract_state.opt_state)
    ts = out[TRAIN_STATE]
    ema = out[EMA] if has_ema else None
    if want_ema and not has_ema:  # EMA switched on for a run saved without it
      self._warn(f"checkpoint {where} has no {EMA}: the EMA starts at its params")
      ema = jax.tree.map(lambda x: x.copy(), out[PARAMS])
    state = TrainState(step=ts["step"], params=out[PARAMS], opt_state=opt_state,
                       rng=ts["rng"], ema_params=ema)
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
      raise OptimizerMismatchError(
          f"checkpoint {self.root}/{step}: its optimizer state has {have} arrays, the "
          f"configured optimizer has {want}: the optimizer config (name, frozen params) "
          "changed. Set reset_optimizer=True to keep the params and step and start a "
          "fresh optimizer state.")

  def restore_latest(self, abstract_state: TrainState, state_sharding: TrainState, *,
                     restore_opt_state: bool = True) -> tuple[int | None, TrainState | None]:
    """Restores the newest readable step, walking back past unreadable ones.

    Each step skipped (incomplete, corrupt, or holding another step) gets one warning
    line and stops counting as good; it stays on disk until a new save of that step sets
    it aside (ROOT/<step>.unreadable). (None, None) when ROOT has no step; a one-line
    NoReadableCheckpointError when steps exist but none is readable (nothing is moved then: a config
    that does not fit any step is a config error, not corruption). An optimizer config
    change is raised at once."""
    tried = []
    for step in reversed(self.all_steps()):
      why = None
      if not self._is_complete(step):
        why = f"incomplete: no {PARAMS}/ or {TRAIN_STATE}/"
      else:
        try:
          state, _ = self.restore(step, abstract_state, state_sharding,
                                  restore_opt_state=restore_opt_state)
          held = int(jax.device_get(state.step))
          if held == step:
            return step, state
          why = f"it holds step {held}"
        except OptimizerMismatchError:
          raise
        except VlaxError as e:
          why = str(e).split(": ", 1)[-1]
      self._good.discard(step)
      self._skipped.add(step)
      tried.append(f"{step}: {why}")
      self._warn(f"warning: checkpoint {self.root}/{step} is unreadable ({why}); "
                 "trying the previous step")
    if tried:
      raise self._none_readable(tried)
    return None, None

  def check_restorable(self) -> None:
    """Cheap check before any set-up: steps on disk and not one has every item ->
    NoReadableCheckpointError listing each (a silent fresh start would overwrite them and
    the metrics history)."""
    steps = self.all_steps()
    if steps and not any(self._is_complete(s) for s in steps):
      raise self._none_readable(
          [f"{s}: incomplete: no {PARAMS}/ or {TRAIN_STATE}/" for s in reversed(steps)])

  def _none_readable(self, tried: list[str]) -> NoReadableCheckpointError:
    return NoReadableCheckpointError(
        f"no readable checkpoint in {self.root} (" + "; ".join(tried)[:600] + "); nothing "
        "was moved. Repair or delete these steps, or pass "
        "--config.restart_over_unreadable=True to set them aside and start from step 0")

  def set_aside_all(self, why: str = "unreadable") -> list[str]:
    """Every step -> ROOT/<step>.<why> (an explicit fresh start over unreadable steps)."""
    return [self.set_aside(s, why) for s in self.all_steps()]

  def wait(self, prune: bool = True) -> None:
    """Blocks until the save in flight is on disk (CheckpointSaveError if it failed).
    prune=False: evict nothing (error paths delete nothing)."""
    self._finish(prune)

  def close(self, prune: bool = True) -> None:
    try:
      self._finish(prune)
    finally:
      self.manager.close()


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
