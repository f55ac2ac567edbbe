"""Step performance and goodput: `perf/*` metrics per log window and the end-of-run summary.

The FLOPs are the analytic model count `vlax plan` and benchmarks/train_step.py use
(3 x `vlax.models.presets.forward_flops`: forward + backward, the MFU convention).
The peak a step is measured against is, per device:
  TPU  the chip table of `vlax.training.tpu_chips` (bf16 peak);
  GPU  `GPU_BF16_FLOPS` (dense bf16 peak of the named GPU);
  CPU  a measured matmul ceiling: one n x n matmul per local device timed once (the same
       measurement as benchmarks/train_step.py's `train_flops_vs_matmul`, so `perf/mfu`
       on CPU is that ratio), cached in $VLAX_CACHE_DIR (default ~/.cache/vlax)
       per machine, device count and dtype; delete the file to measure again.

Everything here is host-side timing (time.perf_counter around what the host does):
the loop never waits on the device for it. A window is the steps between two log steps,
which end with the trainer's host sync, so window wall time / steps is the step time.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import time
from typing import Any, Iterator

import jax
import jax.numpy as jnp

from vlax.models import presets
from vlax.training import tpu_chips

# Dense bf16 peak FLOP/s per GPU (vendor data sheets, SXM parts; PCIe H100: 756e12).
GPU_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12}

# device_kind substrings of TPU generations -> tpu_chips.CHIPS keys.
_TPU_KINDS = (("v6 lite", "v6e"), ("v6e", "v6e"), ("v5 lite", "v5e"), ("v5e", "v5e"),
              ("v5p", "v5p"), ("v5", "v5p"), ("v4", "v4"))

CPU_MATMUL_N = 1024  # benchmarks/train_step.py's default size on CPU


def train_flops_per_step(model_config, example_batch, global_batch: int) -> float:
  """Model FLOPs of one train step on the global batch (3 x the forward count)."""
  inputs = example_batch.inputs
  return 3.0 * presets.forward_flops(
      model_config, num_images=int(inputs.images.shape[1]),
      text_len=int(inputs.tokens.shape[1]), batch=int(global_batch))["total"]


def matmul_flops_per_s(n: int, dtype: str = "float32", reps: int = 5) -> dict[str, float]:
  """FLOP/s of one n x n matmul per local device, all devices at once (median of reps)."""
  devices = jax.local_devices()
  mesh = jax.make_mesh((len(devices),), ("x",), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices)
  sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("x"))
  a = jax.device_put(jnp.ones((len(devices), n, n), dtype), sh)
  b = jax.device_put(jnp.ones((len(devices), n, n), dtype) * 0.5, sh)
  f = jax.jit(lambda x, y: jnp.einsum("bij,bjk->bik", x, y), out_shardings=sh)
  f(a, b).block_until_ready()
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    f(a, b).block_until_ready()
    times.append(time.perf_counter() - t)
  dt = statistics.median(times)
  return {"matmul_n": n, "matmul_seconds": dt,
          "matmul_flops_per_s": 2.0 * n ** 3 * len(devices) / dt}


def _cache_path(dtype: str) -> str:
  root = os.environ.get("VLAX_CACHE_DIR") or os.path.join(
      os.path.expanduser("~"), ".cache", "vlax")
  key = (f"{platform.node()}_{jax.local_devices()[0].device_kind}_"
         f"{jax.local_device_count()}dev_{os.cpu_count()}cpu_{dtype}_{CPU_MATMUL_N}")
  key = "".join(c if c.isalnum() or c in "._-" else "_" for c in key)
  return os.path.join(root, "matmul_peak", key + ".json")


_MEASURED: dict[str, float] = {}


def cpu_peak_flops_per_device(dtype: str = "float32") -> float:
  """The measured matmul ceiling per local device (measured once, then cached)."""
  path = _cache_path(dtype)
  if path in _MEASURED:
    return _MEASURED[path]
  try:
    with open(path) as f:
      total = float(json.load(f)["matmul_flops_per_s"])
  except (OSError, ValueError, KeyError, TypeError):
    result = matmul_flops_per_s(CPU_MATMUL_N, dtype)
    total = result["matmul_flops_per_s"]
    try:
      os.makedirs(os.path.dirname(path), exist_ok=True)
      tmp = f"{path}.{os.getpid()}.tmp"
      with open(tmp, "w") as f:
        json.dump(result, f)
      os.replace(tmp, path)
    except OSError:
      pass  # unwritable cache: measured again next run
  _MEASURED[path] = total / jax.local_device_count()
  return _MEASURED[path]


def device_peak_flops(device: Any = None, dtype: str = "float32") -> tuple[float | None, str]:
  """(peak FLOP/s of one device, where it comes from); (None, why) when unknown."""
  device = device or jax.devices()[0]
  kind = str(device.device_kind)
  if device.platform == "tpu":
    low = kind.lower()
    for sub, gen in _TPU_KINDS:
      if sub in low:
        return tpu_chips.CHIPS[gen].bf16_flops, f"TPU {gen} bf16 peak (tpu_chips)"
    return None, f"unknown TPU kind {kind!r}"
  if device.platform == "gpu":
    for name, flops in GPU_BF16_FLOPS.items():
      if name in kind.upper():
        return flops, f"{name} bf16 dense peak"
    return None, f"unknown GPU kind {kind!r}"
  if device.platform == "cpu":
    return cpu_peak_flops_per_device(dtype), f"measured {CPU_MATMUL_N}^2 {dtype} matmul"
  return None, f"no peak for platform {device.platform!r}"


class PerfMeter:
  """Host-side timers of a run: per-window `perf/*` metrics and the goodput summary.

  The loop wraps what the host does in `timed(kind)` (kind: 'data', 'compile',
  'checkpoint', 'eval', 'profile'); `window(step)` at each log step (after the sync)
  turns the window's wall time, less compile / checkpoint / eval time, into the step
  time. `summary()` at the end: fractions of the run's wall time.
  """

  EXCLUDED = ("compile", "checkpoint", "eval", "profile")

  def __init__(self, flops_per_step: float | None, peak_per_device: float | None,
               num_devices: int, start_step: int, t_start: float | None = None):
    self.flops = flops_per_step
    self.peak = peak_per_device
    self.num_devices = max(1, int(num_devices))
    self.t_start = time.perf_counter() if t_start is None else t_start
    self.totals = {k: 0.0 for k in ("data", "step") + self.EXCLUDED}
    self._window = {k: 0.0 for k in self.totals}
    self._t0 = time.perf_counter()
    self._step0 = start_step
    self.steps = 0

  def start_window(self, step: int) -> None:
    """Starts the timing window at `step` (the loop's start; after set-up)."""
    self._window = {k: 0.0 for k in self.totals}
    self._t0, self._step0 = time.perf_counter(), step

  @contextlib.contextmanager
  def timed(self, kind: str | None) -> Iterator[None]:
    """Adds the block's wall time to `kind` (None: not timed)."""
    if kind is None:
      yield
      return
    t = time.perf_counter()
    try:
      yield
    finally:
      self.add(kind, time.perf_counter() - t)

  def add(self, kind: str, seconds: float) -> None:
    """Adds `seconds` measured elsewhere to `kind`."""
    self._window[kind] += seconds
    self.totals[kind] += seconds

  def window(self, step: int) -> dict[str, float]:
    """perf/* of the steps since the last call (call right after the log-step sync)."""
    now = time.perf_counter()
    n = step - self._step0
    wall = now - self._t0
    busy = max(wall - sum(self._window[k] for k in self.EXCLUDED), 1e-9)
    out: dict[str, float] = {}
    if n > 0:
      step_s = busy / n
      self.totals["step"] += busy
      self.steps += n
      out["perf/step_time_s"] = step_s
      out["perf/data_wait_fraction"] = min(self._window["data"] / busy, 1.0)
      if self.flops:
        per_dev = self.flops / step_s / self.num_devices
        out["perf/tflops_per_device"] = per_dev / 1e12
        if self.peak:
          out["perf/mfu"] = per_dev / self.peak
    self.start_window(step)
    return out

  def summary(self) -> dict[str, float]:
    """Goodput: wall time and the fractions of it spent per kind (step time is the
    steps' wall time less their data wait; 'other' is set-up, logging, the rest)."""
    wall = max(time.perf_counter() - self.t_start, 1e-9)
    t = self.totals
    step = max(t["step"] - t["data"], 0.0)
    parts = {"step": step, "compile": t["compile"], "data_wait": t["data"],
             "checkpoint_save": t["checkpoint"], "eval": t["eval"]}
    out = {"wall_s": wall, "steps": self.steps}
    out.update({f"{k}_s": v for k, v in parts.items()})
    out.update({f"{k}_fraction": v / wall for k, v in parts.items()})
    out["other_fraction"] = max(0.0, 1.0 - sum(parts.values()) / wall)
    return out


def format_summary(s: dict[str, float]) -> str:
  """The goodput block printed at the end of a run (three short lines)."""
  pct = lambda k: f"{100 * s[k + '_fraction']:.1f}%"  # noqa: E731
  return (f"goodput: {s['steps']} steps in {s['wall_s']:.1f} s wall\n"
          f"  step {pct('step')}  compile {pct('compile')}  data wait {pct('data_wait')}"
          f"  checkpoint save {pct('checkpoint_save')}  eval {pct('eval')}"
          f"  other {100 * s['other_fraction']:.1f}%")
