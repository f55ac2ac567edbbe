"""Metric sinks: metrics.jsonl, TensorBoard, optional Weights & Biases, a progress bar.

Only process 0 writes anything; other processes get a MetricsLogger whose methods do
nothing, so the train loop calls it unconditionally.

- metrics.jsonl: one JSON object per logged step ({"step": ..., "loss": ..., ...}).
  On resume from step S, lines with step > S (logged after the checkpoint the run
  resumes from) are dropped so the file has no duplicated steps; a run from step 0 over
  an earlier history (no checkpoint left) moves it to metrics.jsonl.<time>.old.
- TensorBoard: event files under WORKDIR/tensorboard via tf.summary (skipped with a
  warning when TensorFlow is not installed, e.g. on GPU machines).
- W&B: imported only when enabled; `mode="offline"` by default unless WANDB_MODE is
  set, so it never needs the network.
- Progress bar: tqdm with step/s, examples/s and ETA.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Mapping

import jax
from tqdm.auto import tqdm


def _jsonable(v: Any) -> Any:
  try:
    f = float(v)
  except (TypeError, ValueError):
    return v
  if math.isnan(f) or math.isinf(f):
    return str(f)  # JSON has no NaN/Inf; keep the line parseable.
  return int(f) if isinstance(v, int) and not isinstance(v, bool) else f


def truncate_jsonl(path: str, max_step: int) -> None:
  """Drops lines whose step is > max_step (resume without duplicated steps).

  Lines that do not parse (a torn last line from a killed run, bytes that are not UTF-8)
  are moved to PATH.unreadable with one warning line, never silently dropped."""
  if not os.path.exists(path):
    return
  keep, bad = [], []
  with open(path, "rb") as f:
    for raw in f:
      raw = raw.strip()
      if not raw:
        continue
      try:
        line = raw.decode("utf-8")
        if int(json.loads(line).get("step", -1)) > max_step:
          continue
      except (ValueError, AttributeError, TypeError):  # (UnicodeDecodeError: a ValueError)
        bad.append(raw)
        continue
      keep.append(line)
  if bad:
    with open(path + ".unreadable", "ab") as f:
      f.write(b"".join(l + b"\n" for l in bad))
    print(f"warning: {path}: {len(bad)} line(s) that are not JSON metrics (torn or not "
          f"UTF-8) moved to {path}.unreadable", file=sys.stderr, flush=True)
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write("".join(l + "\n" for l in keep))
  os.replace(tmp, path)


def set_aside_history(workdir: str) -> str | None:
  """Renames WORKDIR/metrics.jsonl to metrics.jsonl.<UTC time>.old (a run that starts
  over keeps the old history); returns the new path, or None when there is none."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return None
  dst = f"{path}.{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.old"
  os.replace(path, dst)
  return dst


class MetricsLogger:
  """Writes logged steps to every enabled sink (process 0 only)."""

  def __init__(self, workdir: str, *, total_steps: int, start_step: int = 0,
               batch_size: int = 1, tensorboard: bool = True, wandb: bool = False,
               wandb_project: str = "vlax", wandb_name: str | None = None,
               progress: bool = True, config: Mapping[str, Any] | None = None,
               is_writer: bool | None = None):
    self.enabled = jax.process_index() == 0 if is_writer is None else is_writer
    self.workdir = workdir
    self.batch_size = batch_size
    self.total_steps = total_steps
    self._tb = None
    self._wandb = None
    self._bar = None
    self._last_time = time.time()
    self._last_step = start_step
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
    if start_step == 0 and os.path.exists(self.jsonl_path) and os.path.getsize(
        self.jsonl_path):  # history of a run with no checkpoint left: kept, not emptied
      print(f"warning: {self.jsonl_path} holds an earlier run with no checkpoint to resume "
            f"from; moved to {set_aside_history(workdir)}", file=sys.stderr, flush=True)
    truncate_jsonl(self.jsonl_path, start_step)
    self._jsonl = open(self.jsonl_path, "a", encoding="utf-8")
    if tensorboard:
      try:
        import tensorflow as tf  # pylint: disable=g-import-not-at-top
        from tensorflow.core.framework import summary_pb2  # pylint: disable=g-import-not-at-top
        self._tf = tf
        self._tb = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))
        # Written with the core op + the 'scalars' plugin tag, so the `tensorboard`
        # package is not needed to write (tf.summary.scalar lives there).
        self._tb_meta = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))
      except ImportError:
        print("warning: TensorFlow not installed; no TensorBoard events", file=sys.stderr)
    if wandb:
      import wandb as wandb_lib  # pylint: disable=g-import-not-at-top
      mode = os.environ.get("WANDB_MODE", "offline")
      self._wandb = wandb_lib.init(project=wandb_project, name=wandb_name, dir=workdir,
                                   config=dict(config or {}), mode=mode, resume="allow")
    if progress:
      self._bar = tqdm(total=total_steps, initial=start_step, unit="step",
                       dynamic_ncols=True, file=sys.stderr)

  def step(self, step: int) -> None:
    """Per-step progress tick (host-side only, no device sync)."""
    if self._bar is not None:
      self._bar.update(step - self._bar.n)

  def rates(self, step: int) -> dict[str, float]:
    """steps/s and examples/s since the previous call (call at log steps)."""
    now = time.time()
    dt = max(now - self._last_time, 1e-9)
    n = step - self._last_step
    self._last_time, self._last_step = now, step
    if n <= 0:
      return {}
    return {"perf/steps_per_sec": n / dt, "perf/examples_per_sec": n * self.batch_size / dt}

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    row = {"step": int(step), **{k: _jsonable(v) for k, v in metrics.items()}}
    self._jsonl.write(json.dumps(row) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      with self._tb.as_default(step=int(step)):
        for k, v in metrics.items():
          if isinstance(v, (int, float)) and not isinstance(v, bool):
            self._tf.summary.write(k, self._tf.constant(float(v), self._tf.float32),
                                   metadata=self._tb_meta)
      self._tb.flush()
    if self._wandb is not None:
      self._wandb.log(dict(metrics), step=int(step))
    if self._bar is not None:
      post = {"loss": f"{metrics['loss']:.4f}"} if "loss" in metrics else {}
      if "perf/examples_per_sec" in metrics:
        post["ex/s"] = f"{metrics['perf/examples_per_sec']:.1f}"
      self._bar.set_postfix(post, refresh=False)
      self._bar.update(step - self._bar.n)

  def summary(self, step: int, metrics: Mapping[str, float]) -> None:
    """End-of-run figures (goodput): TensorBoard at `step` and the W&B run summary;
    not metrics.jsonl, whose lines are one per logged step."""
    if not self.enabled:
      return
    if self._tb is not None:
      with self._tb.as_default(step=int(step)):
        for k, v in metrics.items():
          self._tf.summary.write(k, self._tf.constant(float(v), self._tf.float32),
                                 metadata=self._tb_meta)
      self._tb.flush()
    if self._wandb is not None:
      self._wandb.summary.update(dict(metrics))

  def message(self, text: str) -> None:
    if not self.enabled:
      return
    if self._bar is not None:
      self._bar.write(text, file=sys.stderr)
    else:
      print(text, file=sys.stderr, flush=True)

  def close(self) -> None:
    if not self.enabled:
      return
    self._jsonl.close()
    if self._tb is not None:
      self._tb.close()
    if self._wandb is not None:
      self._wandb.finish()
    if self._bar is not None:
      self._bar.close()
