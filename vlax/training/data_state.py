"""The input pipeline's position, saved with each checkpoint for an exact resume.

An iterator with `save_state(dir)` / `restore_state(dir)` (e.g. the tf.data pipeline's
`tf.train.Checkpoint(iterator=...)`) is saved per process at every checkpoint, in
WORKDIR/data_state/<step>/process_<i> (with the process count), and restored on resume
when the process count is unchanged; otherwise the pipeline is only re-seeded with the
resume step (a fresh order, not the continuation of the old one). States of steps whose
checkpoint is gone are deleted.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable

from etils import epath  # local or gs:// paths

from vlax.checkpoints import format as ckpt_format
from vlax.errors import VlaxError


def _warn(text: str) -> None:
  print(f"warning: {text}", file=sys.stderr, flush=True)


def state_dir(workdir: str, step: int, pid: int) -> epath.Path:
  return epath.Path(workdir) / "data_state" / str(step) / f"process_{pid}"


def save(data_it, workdir: str, step: int, pid: int, nproc: int, kept_steps: set[int]
         ) -> None:
  """If the iterator supports it (`save_state(dir)`), saves its position for `step`.

  Written before the model checkpoint of the same step, so a finalized checkpoint always
  has its data state; states of steps not in `kept_steps` are deleted.
  """
  if not hasattr(data_it, "save_state"):
    return
  d = state_dir(workdir, step, pid)
  d.mkdir(parents=True, exist_ok=True)
  data_it.save_state(os.fspath(d))
  (d / "process_count").write_text(str(nproc))
  prune(workdir, set(kept_steps) | {step}, pid)


def prune(workdir: str, keep: set[int], pid: int) -> None:
  """Deletes this process's data states of steps whose checkpoint is gone."""
  root = epath.Path(workdir) / "data_state"
  if not root.is_dir():
    return
  for step_dir in root.iterdir():
    if step_dir.name.isdigit() and int(step_dir.name) not in keep:
      mine = step_dir / f"process_{pid}"
      if mine.exists():
        mine.rmtree()
      try:
        if not any(step_dir.iterdir()):  # the last process to leave removes the step
          step_dir.rmdir()
      except OSError:
        pass


def restore(data_it, workdir: str, step: int | None, pid: int, nproc: int) -> bool | None:
  """Restores the iterator position saved with checkpoint `step` (same process count).

  Returns False (the stream is then re-seeded with the resume step) when there is no
  state or the process count changed, None when reading it failed (unreadable, or it
  does not fit the pipeline, e.g. the data config changed: the iterator may be half
  restored, the caller builds a fresh one); the reason is printed, never ignored.
  """
  if step is None or not hasattr(data_it, "restore_state"):
    return False
  d = state_dir(workdir, step, pid)
  try:
    saved_nproc = int((d / "process_count").read_text().strip())
  except (OSError, ValueError):
    return False
  if saved_nproc != nproc:
    _warn(f"data state of step {step} was written by {saved_nproc} processes, this run "
          f"has {nproc}: the input stream is re-seeded with the resume step instead")
    return False
  try:
    data_it.restore_state(os.fspath(d))
  except Exception as e:  # pylint: disable=broad-except  (truncated, garbage, config change)
    why = e if isinstance(e, VlaxError) else ckpt_format.short_error(e)
    _warn(f"data state not restored ({why}); the input stream is re-seeded with the "
          "resume step instead")
    return None
  return True


def open_data(data_iterator_fn: Callable[..., tuple[Any, dict]], config: Any, workdir: str,
              step: int | None, pid: int, nproc: int) -> tuple[Any, dict, bool]:
  """(iterator, metadata, restored): the pipeline for `step`, with its saved position
  when that reads back; a state that fails half-way is dropped with a fresh iterator."""
  it, meta = data_iterator_fn(config, pid, nproc, step or 0)
  restored = restore(it, workdir, step, pid, nproc)
  if restored is None:
    it, meta = data_iterator_fn(config, pid, nproc, step or 0)
  return it, dict(meta or {}), bool(restored)
