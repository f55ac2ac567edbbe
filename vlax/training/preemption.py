"""SIGTERM -> stop at the next step boundary, agreed by every process."""

from __future__ import annotations

import signal
import threading

import jax
from jax.experimental import multihost_utils


class Preemption:
  """Single process: our own SIGTERM handler sets a flag. Multi-process:
  jax.distributed's preemption notifier catches SIGTERM and
  `multihost_utils.reached_preemption_sync_point(step)` returns True on every process
  at the same step. Create it first thing, so a SIGTERM during set-up is not fatal;
  `close()` restores the previous handler.
  """

  def __init__(self):
    self.flag = False
    self.multi = jax.process_count() > 1
    self._prev = None
    if not self.multi and threading.current_thread() is threading.main_thread():
      self._prev = signal.signal(signal.SIGTERM, self._handler)

  def _handler(self, signum, frame):  # pylint: disable=unused-argument
    self.flag = True

  def reached(self, step: int) -> bool:
    if self.multi:
      try:
        return bool(multihost_utils.reached_preemption_sync_point(step))
      except RuntimeError:
        return False
    return self.flag

  def close(self):
    if self._prev is not None:
      signal.signal(signal.SIGTERM, self._prev)
