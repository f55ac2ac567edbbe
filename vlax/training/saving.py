"""A run's saves: data state + model checkpoint together, the divergence verdict, and
clean-up when a save fails.

A periodic checkpoint is saved unconfirmed and confirmed (it may then evict older ones)
once the next step's loss is finite: the train loop probes that step. A NaN/Inf there
sets the checkpoint aside as ROOT/<step>.diverged (never resumed from).
"""

from __future__ import annotations

from typing import Any, Mapping

from vlax.checkpoints import format as ckpt_format
from vlax.errors import VlaxError
from vlax.training import checkpointing
from vlax.training import data_state


class TrainingDivergedError(VlaxError):
  """The loss or gradient norm became NaN/Inf; the last good checkpoint is intact."""


def save(ckpt: checkpointing.Checkpointer, data_it, workdir: str, step: int, state,
         metadata: Mapping[str, Any], metrics: Mapping[str, float], pid: int, nproc: int,
         *, save_data_state: bool, confirmed: bool = True) -> None:
  """Data state first (a finalized checkpoint always has its data state), then the
  async model save. Any write failure -> CheckpointSaveError with its files removed."""
  if save_data_state and hasattr(data_it, "save_state"):
    try:
      data_state.save(data_it, workdir, step, pid, nproc, set(ckpt.all_steps()))
    except Exception as e:  # pylint: disable=broad-except  (disk full, permission, ...)
      d = data_state.state_dir(workdir, step, pid)
      if d.exists():
        d.rmtree()
      # Settle the save still in flight first (on a full disk it fails too, and then that
      # is the error raised): the message must name a checkpoint that is really on disk.
      ckpt.wait(prune=False)
      good = ckpt.good_steps()
      raise checkpointing.CheckpointSaveError(
          f"saving the data state of step {step} to {d} failed "
          f"({ckpt_format.short_error(e)}); partial files removed; last good checkpoint: "
          f"{f'{ckpt.root}/{good[-1]}' if good else 'none'}") from None
  ckpt.save(step, state, metadata, metrics=metrics, confirmed=confirmed)


def raise_diverged(ckpt: checkpointing.Checkpointer, sums: Mapping[str, Any], step: int,
                   probed: int | None, resume_step: int | None) -> None:
  """Raises TrainingDivergedError naming the newest good checkpoint.

  `probed`: the checkpoint saved one step before `step`, whose state the loss of `step`
  just tested. A NaN/Inf loss there makes it suspect: set aside as ROOT/<step>.diverged
  (never resumed from); a finite loss with overflowing new params confirms it."""
  bad_loss = float(sums["nonfinite_loss"]) > 0
  note = ""
  ckpt.wait(prune=False)
  if probed is not None and bad_loss and probed == resume_step:
    note = (f"The first step after resuming from {ckpt.root}/{probed} already has a "
            "NaN/Inf loss: that checkpoint (or the data) is bad. ")
  elif probed is not None and bad_loss:
    moved = ckpt.set_aside(probed, "diverged")
    note = (f"Checkpoint {probed}, saved one step before, gives a NaN/Inf loss: moved "
            f"to {moved}. ")
  elif probed is not None:
    ckpt.confirm(probed)
  good = [s for s in ckpt.good_steps() if not (bad_loss and s == probed)]
  what = ("the loss or gradient norm" if bad_loss else
          "the parameter norm (an update blew the weights up)")
  raise TrainingDivergedError(
      f"training diverged: {what} is NaN/Inf at a step in "
      f"({step - int(sums['steps'])}, {step}]; nothing was saved for it. {note}"
      f"Last good checkpoint: {f'{ckpt.root}/{good[-1]}' if good else 'none'}. "
      "Try a lower optimizer.lr, more warmup or optimizer.clip_norm.")


def kept_steps(ckpt: checkpointing.Checkpointer) -> set[int]:
  try:
    return set(ckpt.all_steps())
  except Exception:  # pylint: disable=broad-except  (a closed manager)
    return set(ckpt_format.all_steps(ckpt.root))


def close_after_error(ckpt: checkpointing.Checkpointer, error: BaseException,
                      workdir: str, pid: int) -> None:
  """The run stops on `error`: drop data states of saves that failed, close the manager
  without raising (the error in flight is the one to report)."""
  if isinstance(error, checkpointing.CheckpointSaveError):
    data_state.prune(workdir, kept_steps(ckpt), pid)
  try:
    ckpt.close(prune=False)
  except Exception:  # pylint: disable=broad-except
    pass


def close(ckpt: checkpointing.Checkpointer, data_it, workdir: str, pid: int) -> None:
  """The run ended: wait for the last save (it may still fail here: CheckpointSaveError)
  and delete the data states of steps no longer kept."""
  try:
    ckpt.close()
  except checkpointing.CheckpointSaveError:
    data_state.prune(workdir, kept_steps(ckpt), pid)
    raise
  if hasattr(data_it, "save_state"):
    data_state.prune(workdir, kept_steps(ckpt), pid)
