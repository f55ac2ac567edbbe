"""Smoke test of benchmarks/run_all.py: every benchmark runs at the tiny size and reports.

No timing assertions: only that each entry ran and that the headline ratios and raw
figures exist and are positive numbers (timings on a shared CPU are noise).
"""

import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RATIOS = ("data_vs_decode_ceiling", "train_step_vs_hf", "decode_vs_hf",
          "train_flops_vs_matmul", "kv_cache_speedup")
FIGURES = ("data_pipeline_frames_per_s", "train_step_seconds", "matmul_flops_per_s",
           "vlax_train_step_s", "hf_train_step_s", "vlax_decode_s", "hf_decode_s",
           "greedy_decode_p50_s", "greedy_decode_p99_s", "recompute_decode_p50_s",
           "policy_predict_action_p50_s")


def _positive(x):
  return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


@pytest.mark.slow
def test_run_all_tiny_writes_every_ratio(tmp_path):
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  out = tmp_path / "bench.json"
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, "benchmarks", "run_all.py"), "--tiny",
       "--jobs", "3", "--json", str(out)],
      capture_output=True, text=True, cwd=ROOT, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  res = json.loads(out.read_text())
  assert res["errors"] == {}, res["errors"]
  for k in RATIOS:
    assert _positive(res["ratios"][k]), (k, res["ratios"][k])
  for k in FIGURES:
    assert _positive(res["figures"][k]), (k, res["figures"][k])
  # Same weights on both sides: vlax's greedy tokens are HF's tokens.
  assert res["figures"]["decode_tokens_match_hf"] is True
  hf = res["results"]["hf_reference"]
  assert hf["first_loss_rel_diff"] < 1e-3
  assert res["results"]["inference_latency"]["cached_equals_recompute"] is True
  assert "cpu_model" in res["machine"] and res["machine"]["cores"] >= 1
  assert "ratio (higher is better)" in proc.stdout


def test_run_all_records_missing_benchmark(tmp_path, monkeypatch):
  """A missing script is an error entry, not a crash; nothing ran -> non-zero exit."""
  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
  import run_all  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  monkeypatch.setitem(run_all.BENCHMARKS, "data",
                      dict(run_all.BENCHMARKS["data"], script="no_such_script.py"))
  out = tmp_path / "bench.json"
  code = run_all.main(["--tiny", "--only", "data", "--json", str(out)])
  res = json.loads(out.read_text())
  assert code == 1
  assert "no_such_script.py" in res["results"]["data"]["error"]
  assert res["ratios"]["data_vs_decode_ceiling"] is None


def test_toy_vision_probe_writes_curves(tmp_path):
  """The learning-speed probe behind the README's toy closed-loop note runs and reports
  one accuracy curve per (model, block size), plus its plot."""
  out = tmp_path / "probe.json"
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, "benchmarks", "toy_vision_probe.py"),
       "--steps", "20", "--every", "10", "--block-sizes", "0.2", "--json", str(out)],
      capture_output=True, text=True, cwd=ROOT, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  res = json.loads(out.read_text())
  assert [(r["model"], r["block_size"]) for r in res["runs"]] == [("cnn", 0.2), ("vla", 0.2)]
  for r in res["runs"]:
    assert [s for s, _ in r["curve"]] == [10, 20]
    assert all(0.0 <= a <= 1.0 for _, a in r["curve"])
  assert set(res["steps_to_90"]) == {"cnn@0.2", "vla@0.2"}
  assert (tmp_path / "probe.png").stat().st_size > 0
