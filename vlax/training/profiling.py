"""Profiler traces of chosen train steps (`config.profile`).

`profile.num_steps = K > 0` traces the steps numbered `profile.start_step` ..
`start_step + K - 1` (the step numbers of metrics.jsonl) with `jax.profiler` into
WORKDIR/profile/ (TensorBoard's profile plugin: `tensorboard --logdir WORKDIR/profile`;
the .xplane.pb also opens in Perfetto / XProf). Process 0 only unless
`profile.all_processes`; other processes write under WORKDIR/profile/process_<i>/.

The trace starts before the first traced step is dispatched and stops after the last one
has finished on the device (one host sync, at the trace's end only), so steps outside
the traced ones run exactly as without the profiler.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import jax


class Profiler:
  """Starts and stops one trace around the configured steps (a no-op when off)."""

  def __init__(self, profile_config: Any, workdir: str, process_index: int):
    self.start = int(profile_config.start_step)
    self.num = int(profile_config.num_steps)
    on_this = process_index == 0 or bool(profile_config.all_processes)
    self.enabled = self.num > 0 and on_this
    self.dir = os.path.join(workdir, "profile")
    if process_index != 0:
      self.dir = os.path.join(self.dir, f"process_{process_index}")
    self.active = False
    self.pid = process_index
    self.overhead_s = 0.0  # host time in start/stop_trace (writing the trace) not yet taken

  def take_overhead(self) -> float:
    """Seconds spent starting / stopping the trace since the last call."""
    t, self.overhead_s = self.overhead_s, 0.0
    return t

  def before_step(self, step: int) -> None:
    """Called before dispatching the step that will be numbered `step`."""
    if self.enabled and not self.active and step == self.start:
      t = time.perf_counter()
      os.makedirs(self.dir, exist_ok=True)
      jax.profiler.start_trace(self.dir)
      self.active = True
      self.overhead_s += time.perf_counter() - t

  def after_step(self, step: int, state: Any) -> None:
    """Called after dispatching step `step`: ends the trace after its last step."""
    if self.active and step >= self.start + self.num - 1:
      jax.block_until_ready(state)
      self.close()
      if self.pid == 0:
        print(f"profile: steps {self.start}-{step} traced under {self.dir}",
              file=sys.stderr, flush=True)

  def close(self) -> None:
    """Stops a trace in progress (end of run, error): what was traced is written."""
    if self.active:
      self.active = False
      t = time.perf_counter()
      jax.profiler.stop_trace()
      self.overhead_s += time.perf_counter() - t
