"""Runs every vlax benchmark and writes one JSON object with the headline ratios.

  python benchmarks/run_all.py --quick --json OUT      # small sizes, a few minutes on CPU
  python benchmarks/run_all.py --tiny --json OUT       # smallest sizes (the smoke test)
  python benchmarks/run_all.py --only hf_reference,inference_latency --preset medium

Each benchmark runs as its own subprocess (`python benchmarks/<name>.py ... --json F`), so
that a crash, a missing script or a hung run costs only that entry: its error string is
recorded under `results[name]["error"]` and the others go on. The exit status is non-zero
only when no benchmark ran. Virtual-device flags inherited from a test environment
(XLA_FLAGS=--xla_force_host_platform_device_count) are dropped: benchmarks own the host.

Output keys: `ratios` (higher is better):
  data_vs_decode_ceiling  data pipeline frames/s / JPEG decode+resize frames/s (data)
  train_step_vs_hf        HF train step s / vlax train step s, same config (hf_reference)
  decode_vs_hf            HF generate s / vlax greedy_decode s, same config (hf_reference)
  train_flops_vs_matmul   achieved train FLOP/s / large-matmul FLOP/s (train_step)
  kv_cache_speedup        recompute decode s / KV-cache decode s (inference_latency)
`figures` (raw numbers behind them), `results` (each benchmark's full JSON), `machine`.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position

HERE = os.path.dirname(os.path.abspath(__file__))

# name -> script and its arguments per size. "{preset}" is replaced by --preset.
BENCHMARKS: dict[str, dict[str, Any]] = {
    "data": {"script": "data_throughput.py",
             "tiny": ["--quick", "--episodes", "4", "--frames", "64"],
             "quick": ["--quick"], "full": []},
    "tokenizer": {"script": "tokenizer_throughput.py",
                  "tiny": ["--quick"], "quick": ["--quick"], "full": []},
    "train_step": {"script": "train_step.py",
                   "tiny": ["--preset", "tiny", "--quick", "--matmul_n", "256"],
                   "quick": ["--preset", "{preset}", "--quick"],
                   "full": ["--preset", "{preset}"]},
    "hf_reference": {"script": "hf_reference.py",
                     "tiny": ["--tiny", "--hf_attn", "sdpa", "--decode_tokens", "4"],
                     "quick": ["--preset", "{preset}", "--quick"],
                     "full": ["--preset", "{preset}"]},
    "inference_latency": {"script": "inference_latency.py",
                          "tiny": ["--tiny"],
                          "quick": ["--preset", "{preset}", "--quick"],
                          "full": ["--preset", "{preset}"]},
}

# ratio name -> (benchmark, key in its JSON); figure name -> (benchmark, key path).
RATIOS = {
    "data_vs_decode_ceiling": ("data", "data_vs_decode_ceiling"),
    "train_step_vs_hf": ("hf_reference", "train_step_vs_hf"),
    "decode_vs_hf": ("hf_reference", "decode_vs_hf"),
    "train_flops_vs_matmul": ("train_step", "train_flops_vs_matmul"),
    "kv_cache_speedup": ("inference_latency", "kv_cache_speedup"),
}
FIGURES = {
    "data_pipeline_frames_per_s": ("data", "pipeline_frames_per_s"),
    "data_decode_ceiling_frames_per_s": ("data", "decode_ceiling_frames_per_s"),
    "train_step_seconds": ("train_step", "step_seconds"),
    "train_examples_per_s": ("train_step", "examples_per_s"),
    "train_sequence_tokens_per_s": ("train_step", "sequence_tokens_per_s"),
    "train_achieved_flops_per_s": ("train_step", "achieved_flops_per_s"),
    "matmul_flops_per_s": ("train_step", "matmul_flops_per_s"),
    "vlax_train_step_s": ("hf_reference", "vlax_step_s"),
    "hf_train_step_s": ("hf_reference", "hf_step_s"),
    "vlax_decode_s": ("hf_reference", "vlax_decode_s"),
    "hf_decode_s": ("hf_reference", "hf_decode_s"),
    "decode_tokens_match_hf": ("hf_reference", "decode_tokens_match_hf"),
    "greedy_decode_p50_s": ("inference_latency", "cached_p50_s"),
    "greedy_decode_p99_s": ("inference_latency", "cached_p99_s"),
    "recompute_decode_p50_s": ("inference_latency", "recompute_p50_s"),
    "recompute_decode_p99_s": ("inference_latency", "recompute_p99_s"),
    "policy_predict_action_p50_s": ("inference_latency", "policy_predict_action_p50_s"),
    "policy_predict_action_p99_s": ("inference_latency", "policy_predict_action_p99_s"),
    "fast_encode_chunks_per_s": ("tokenizer", "action_tokenizers.fast_encode_chunks_per_s"),
}


def child_env() -> dict[str, str]:
  """The environment for a benchmark: no virtual CPU devices, quiet TensorFlow."""
  env = dict(os.environ)
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                 env.get("XLA_FLAGS", "")).strip()
  if flags:
    env["XLA_FLAGS"] = flags
  else:
    env.pop("XLA_FLAGS", None)
  env.pop("JAX_NUM_CPU_DEVICES", None)
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  root = os.path.dirname(HERE)
  env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
  return env


def _tail(text: str, n: int = 1500) -> str:
  text = (text or "").strip()
  return text[-n:]


def run_one(name: str, size: str, preset: str, timeout: float, workdir: str) -> dict[str, Any]:
  """Runs one benchmark script; its JSON, or {'error': ...} (never raises)."""
  spec = BENCHMARKS[name]
  script = os.path.join(HERE, spec["script"])
  if not os.path.exists(script):
    return {"error": f"benchmark script missing: benchmarks/{spec['script']}"}
  out_json = os.path.join(workdir, f"{name}.json")
  args = [a.replace("{preset}", preset) for a in spec[size]]
  cmd = [sys.executable, script, *args, "--json", out_json]
  t0 = time.perf_counter()
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env=child_env(), cwd=os.path.dirname(HERE), check=False)
  except subprocess.TimeoutExpired as e:
    return {"error": f"timed out after {timeout:.0f} s: {' '.join(cmd[1:])}",
            "stderr_tail": _tail(e.stderr if isinstance(e.stderr, str) else ""),
            "wall_s": time.perf_counter() - t0}
  wall = time.perf_counter() - t0
  if proc.returncode != 0 or not os.path.exists(out_json):
    err = _tail(proc.stderr) or _tail(proc.stdout)
    last = err.strip().splitlines()[-1] if err.strip() else ""
    return {"error": f"exit {proc.returncode}: {last}", "stderr_tail": err,
            "command": " ".join(cmd[1:]), "wall_s": wall}
  with open(out_json) as f:
    result = json.load(f)
  result["wall_s"] = wall
  result["command"] = "python " + " ".join(
      os.path.relpath(c, os.path.dirname(HERE)) if c == script else c
      for c in cmd[1:] if c != out_json).replace(" --json", "")
  result["stdout"] = _tail(proc.stdout, 3000)
  return result


def _get(d: dict[str, Any], path: str):
  for k in path.split("."):
    if not isinstance(d, dict) or k not in d:
      return None
    d = d[k]
  return d


def collect(results: dict[str, dict[str, Any]]) -> tuple[dict, dict]:
  ratios = {k: _get(results.get(b, {}), key) for k, (b, key) in RATIOS.items()}
  figures = {k: _get(results.get(b, {}), key) for k, (b, key) in FIGURES.items()}
  return ratios, figures


def report_table(out: dict[str, Any]) -> str:
  rows = [[k, v, RATIOS[k][0]] for k, v in out["ratios"].items()]
  lines = [common.table(rows, ["ratio (higher is better)", "value", "from"]), ""]
  rows = [[k, v] for k, v in out["figures"].items() if v is not None]
  lines.append(common.table(rows, ["figure", "value"]))
  rows = [[name, "ok" if "error" not in r else "ERROR", r.get("wall_s"),
           r.get("error", "")[:90]] for name, r in out["results"].items()]
  lines += ["", common.table(rows, ["benchmark", "status", "wall s", "error"])]
  return "\n".join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  size = p.add_mutually_exclusive_group()
  size.add_argument("--quick", action="store_true", help="small sizes (a few minutes)")
  size.add_argument("--tiny", action="store_true", help="smallest sizes (smoke test)")
  p.add_argument("--only", default="", help=f"comma-separated subset of {list(BENCHMARKS)}")
  p.add_argument("--preset", default="debug", help="model preset for the model benchmarks")
  p.add_argument("--timeout", type=float, default=None, help="seconds per benchmark")
  p.add_argument("--jobs", type=int, default=1,
                 help="benchmarks run at once (>1 only for smoke runs: they share cores, "
                 "so their timings are not comparable)")
  p.add_argument("--json", default=None, help="write the combined JSON object here")
  a = p.parse_args(argv)
  size_name = "tiny" if a.tiny else "quick" if a.quick else "full"
  names = [n.strip() for n in a.only.split(",") if n.strip()] or list(BENCHMARKS)
  unknown = [n for n in names if n not in BENCHMARKS]
  if unknown:
    p.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
  timeout = a.timeout or {"tiny": 300, "quick": 900, "full": 7200}[size_name]
  out: dict[str, Any] = {"size": size_name, "preset": "tiny" if a.tiny else a.preset,
                         "machine": common.machine_info(), "results": {}}
  t0 = time.perf_counter()
  out["jobs"] = a.jobs

  def one(name):
    print(f"[run_all] {name} ({size_name}) ...", file=sys.stderr, flush=True)
    r = run_one(name, size_name, a.preset, timeout, work)
    status = r.get("error") or f"ok in {r['wall_s']:.1f} s"
    print(f"[run_all] {name}: {status}", file=sys.stderr, flush=True)
    return r

  with tempfile.TemporaryDirectory(prefix="vlax_bench_") as work:
    if a.jobs > 1:
      with concurrent.futures.ThreadPoolExecutor(a.jobs) as pool:
        done = dict(zip(names, pool.map(one, names)))
    else:
      done = {name: one(name) for name in names}
  out["results"] = {name: done[name] for name in names}
  out["total_s"] = time.perf_counter() - t0
  out["ratios"], out["figures"] = collect(out["results"])
  out["errors"] = {k: r["error"] for k, r in out["results"].items() if "error" in r}
  out["load_average_end"] = common.load_average()
  print(report_table(out))
  common.write_json(a.json, out)
  ran = [k for k, r in out["results"].items() if "error" not in r]
  return 0 if ran else 1


if __name__ == "__main__":
  sys.exit(main())
