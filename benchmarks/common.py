"""Shared helpers of the benchmarks: timing with warm-up, percentiles, machine info, output.

Timing rule used everywhere: run `warmup` untimed calls (compilation, caches, allocator),
then `repeats` timed calls, each ended by a blocking wait on its result, and report the
median (p50) plus p99 / min / max, because this machine's cores are shared and noisy.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from typing import Any, Callable, Sequence

# Let `python benchmarks/x.py` import both `vlax` and sibling benchmark modules.
_HERE = os.path.dirname(os.path.abspath(__file__))
for _p in (_HERE, os.path.dirname(_HERE)):
  if _p not in sys.path:
    sys.path.insert(0, _p)


def num_cores() -> int:
  """CPU cores this process may run on (what XLA's CPU thread pool sizes itself to)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def percentile(values: Sequence[float], q: float) -> float:
  """Linear-interpolated percentile q in [0, 100] (numpy's default method)."""
  xs = sorted(values)
  if not xs:
    return float("nan")
  pos = (len(xs) - 1) * q / 100.0
  lo, hi = math.floor(pos), math.ceil(pos)
  return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(times: Sequence[float]) -> dict[str, Any]:
  """Seconds -> {'median', 'p50', 'p99', 'mean', 'min', 'max', 'n', 'all'}."""
  times = [float(t) for t in times]
  return {"median": statistics.median(times), "p50": percentile(times, 50),
          "p99": percentile(times, 99), "mean": statistics.fmean(times),
          "min": min(times), "max": max(times), "n": len(times), "all": times}


def _block(x):
  """Waits for a JAX/torch result (or a pytree of them); plain values pass through."""
  try:
    import jax  # pylint: disable=g-import-not-at-top
    jax.block_until_ready(x)
  except ImportError:
    pass
  return x


def time_fn(fn: Callable[[], Any], warmup: int = 1, repeats: int = 5,
            block: Callable[[Any], Any] = _block, min_time: float = 0.0) -> dict[str, Any]:
  """Times fn() after `warmup` calls; at least `repeats` calls and at least `min_time` s."""
  for _ in range(warmup):
    block(fn())
  times = []
  start = time.perf_counter()
  while len(times) < repeats or time.perf_counter() - start < min_time:
    t = time.perf_counter()
    block(fn())
    times.append(time.perf_counter() - t)
  return summarize(times)


def time_interleaved(fns: dict[str, Callable[[], Any]], warmup: int = 1, repeats: int = 5,
                     block: Callable[[Any], Any] = _block) -> dict[str, dict[str, Any]]:
  """Times several functions round-robin (a, b, a, b, ...) so load drift hits all alike."""
  for _ in range(warmup):
    for fn in fns.values():
      block(fn())
  times = {k: [] for k in fns}
  cpu = {k: [] for k in fns}
  for _ in range(repeats):
    for k, fn in fns.items():
      c, t = process_cpu_s(), time.perf_counter()
      block(fn())
      times[k].append(time.perf_counter() - t)
      cpu[k].append(process_cpu_s() - c)
  out = {k: summarize(v) for k, v in times.items()}
  for k in fns:  # CPU seconds of this process: less sensitive to other processes' load
    out[k]["cpu_median"] = statistics.median(cpu[k])
  return out


def process_cpu_s() -> float:
  """User + system CPU seconds of this process, all threads."""
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def load_average() -> list[float]:
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:
    return []


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
  """Where and when the numbers were taken (load average: the cores are shared)."""
  info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "host": platform.node(), "cpu_model": cpu_model(), "cores": num_cores(),
          "load_average": load_average(), "python": platform.python_version()}
  try:
    import jax  # pylint: disable=g-import-not-at-top
    info.update(jax=jax.__version__, backend=jax.default_backend(),
                devices=[d.device_kind for d in jax.devices()])
  except ImportError:
    pass
  return info


def set_torch_threads(n: int | None = None) -> int:
  """Gives torch the same core count as XLA's CPU backend (default: all usable cores)."""
  import torch  # pylint: disable=g-import-not-at-top
  n = n or num_cores()
  torch.set_num_threads(n)
  return n


def write_json(path: str | None, obj: dict[str, Any]) -> None:
  if not path:
    return
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(obj, f, indent=2, default=str)
    f.write("\n")


def fmt(x: Any) -> str:
  if isinstance(x, bool) or x is None:
    return str(x)
  if isinstance(x, int):
    return f"{x:,}"
  if isinstance(x, float):
    if x != x:  # nan
      return "nan"
    a = abs(x)
    if a != 0 and (a >= 1e6 or a < 1e-3):
      return f"{x:.3e}"
    return f"{x:.4g}"
  return str(x)


def table(rows: Sequence[Sequence[Any]], header: Sequence[str] | None = None) -> str:
  """Plain aligned text table."""
  cells = [[fmt(c) for c in r] for r in rows]
  if header:
    cells.insert(0, list(header))
  if not cells:
    return ""
  widths = [max(len(r[i]) for r in cells if i < len(r)) for i in range(max(map(len, cells)))]
  lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
  if header:
    lines.insert(1, "  ".join("-" * w for w in widths))
  return "\n".join(lines)


def flat_numbers(d: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
  """(dotted key, value) for every scalar in a nested dict (lists are skipped)."""
  out = []
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out += flat_numbers(v, key + ".")
    elif isinstance(v, (int, float, str, bool)) or v is None:
      out.append((key, v))
  return out


# ---------------------------------------------------------------------------------------
# Profiling: per-XLA-op time from a jax.profiler trace (no TensorBoard needed).

_WRAPPERS = ("ThunkExecutor", "while", "PjitFunction", "$", "Execute", "conditional",
             "call")


def profile_ops(fn: Callable[[], Any], trace_dir: str, calls: int = 3,
                compiled_text: str | None = None, top: int = 20) -> dict[str, Any]:
  """Runs fn() `calls` times under jax.profiler and sums each XLA op's time on the host.

  Reads the trace's XPlane (the protobuf TensorFlow ships) and adds up, per op name,
  the durations on the XLA worker threads; wrappers (thunk executor, while loops) are
  left out so the table shows leaf ops. With `compiled_text` (Compiled.as_text()), each
  op gets its HLO line (fusion kind, shape) to say what it is. Profiling slows things
  down: use it for where the time goes, not for how much.
  """
  import collections  # pylint: disable=g-import-not-at-top
  import glob  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  _block(fn())
  jax.profiler.start_trace(trace_dir)
  try:
    for _ in range(calls):
      _block(fn())
  finally:
    jax.profiler.stop_trace()
  files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True),
                 key=os.path.getmtime)
  if not files:
    return {"error": f"no xplane.pb under {trace_dir}"}
  try:
    from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    return {"error": f"cannot read the trace (needs tensorflow's xplane_pb2): {e}",
            "trace": files[-1]}
  space = xplane_pb2.XSpace()
  with open(files[-1], "rb") as f:
    space.ParseFromString(f.read())
  total = collections.Counter()
  count = collections.Counter()
  for plane in space.planes:
    if not plane.name.startswith("/host:CPU"):
      continue
    md = plane.event_metadata
    for line in plane.lines:
      if line.name == "python":
        continue
      for ev in line.events:
        name = md[ev.metadata_id].name
        if name.startswith(_WRAPPERS):
          continue
        total[name] += ev.duration_ps
        count[name] += 1
  hlo = {}
  if compiled_text:
    for line in compiled_text.splitlines():
      s = line.strip()
      if " = " in s and not s.startswith(("ROOT", "//")):
        lhs = s.split(" = ", 1)[0].split()[-1].lstrip("%")
        hlo.setdefault(lhs, s[:220])
  all_ps = sum(total.values()) or 1
  cats = collections.Counter()
  for name, ps in total.items():
    cats[op_category(name, hlo.get(name, ""))] += ps
  rows = [{"op": n, "ms_per_call": ps / 1e9 / calls, "share": ps / all_ps,
           "count_per_call": count[n] / calls, "hlo": hlo.get(n, "")}
          for n, ps in total.most_common(top)]
  return {"trace": files[-1], "calls": calls, "op_ms_per_call": all_ps / 1e9 / calls,
          "categories": {k: v / all_ps for k, v in cats.most_common()}, "top_ops": rows}


def op_category(name: str, hlo_line: str = "") -> str:
  """Coarse bucket of an XLA CPU op: matmul / copy-transpose / elementwise / ..."""
  s = (name + " " + hlo_line).lower()
  if "ynn" in s or "dot" in s or "convolution" in s or "xnn" in s or "onednn" in s:
    return "matmul/conv (dot, YNNPACK fusions)"
  if "copy" in s or "transpose" in s or "bitcast" in s:
    return "copy/transpose/layout"
  if "broadcast" in s:
    return "broadcast"
  if "reduce" in s:
    return "reduce"
  if "dynamic-update-slice" in s or "dynamic_update_slice" in s or "dynamic-slice" in s:
    return "dynamic (update-)slice"
  return "other elementwise / fusion"


def profile_table(p: dict[str, Any], top: int = 15) -> str:
  if "error" in p:
    return f"profile: {p['error']}"
  lines = [f"XLA op time per call (profiled): {p['op_ms_per_call']:.1f} ms"]
  lines += [f"  {v * 100:5.1f}%  {k}" for k, v in p["categories"].items()]
  rows = [[r["op"], r["ms_per_call"], f"{r['share'] * 100:.1f}%", r["count_per_call"],
           r["hlo"][:110]] for r in p["top_ops"][:top]]
  lines.append(table(rows, ["op", "ms/call", "share", "n/call", "HLO"]))
  return "\n".join(lines)
