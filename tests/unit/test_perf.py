"""perf/* metrics, the goodput summary and profiler traces (vlax.training.perf, profiling)."""

import glob
import json
import math
import types

import jax
import pytest

from vlax.errors import VlaxError
from vlax.models.batch import Batch
from vlax.training import perf
from vlax.training import trainer

import _train_utils as U

PERF_KEYS = ("perf/step_time_s", "perf/tflops_per_device", "perf/mfu",
             "perf/data_wait_fraction")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """4 tiny steps, logged every 2, step 3 traced."""
  workdir = tmp_path_factory.mktemp("perf_run")
  config = U.tiny_config(num_steps=4, log_every=2, checkpoint_every=4,
                         **{"profile.start_step": 3, "profile.num_steps": 1})
  out = trainer.train(config, str(workdir), data_iterator_fn=U.synthetic_data_fn())
  return workdir, config, out


def test_perf_metrics_every_log_step_and_consistent(run):
  workdir, config, _ = run
  rows = U.read_jsonl(workdir / "metrics.jsonl")
  assert [r["step"] for r in rows] == [2, 4]
  model_config = trainer.build_model_config(config, U.metadata())
  example = Batch.from_dict(U.make_batch(8))
  flops = perf.train_flops_per_step(model_config, example, 8)
  peak = perf.cpu_peak_flops_per_device("float32")  # cached by the run
  for r in rows:
    assert all(k in r and math.isfinite(r[k]) and r[k] >= 0 for k in PERF_KEYS), r
    per_dev = flops / r["perf/step_time_s"] / jax.device_count()
    assert r["perf/tflops_per_device"] == pytest.approx(per_dev / 1e12)
    assert r["perf/mfu"] == pytest.approx(per_dev / peak)
    assert r["perf/data_wait_fraction"] <= 1


def test_goodput_summary_written_and_printed(run):
  workdir, _, _ = run
  s = json.loads((workdir / "goodput.json").read_text())
  parts = ("step", "compile", "data_wait", "checkpoint_save", "eval", "other")
  assert s["steps"] == 4 and s["wall_s"] > 0
  assert s["compile_s"] > 0 and s["checkpoint_save_s"] > 0  # one compile, one save
  assert sum(s[f"{k}_fraction"] for k in parts) == pytest.approx(1.0)
  assert "goodput: 4 steps" in perf.format_summary(s)


def test_profile_trace_of_the_chosen_steps(run):
  workdir, _, _ = run
  traces = glob.glob(str(workdir / "profile" / "plugins" / "profile" / "*" / "*.xplane.pb"))
  assert len(traces) == 1, traces


def test_window_excludes_compile_checkpoint_and_eval(monkeypatch):
  clock = [0.0]
  monkeypatch.setattr(perf.time, "perf_counter", lambda: clock[0])
  meter = perf.PerfMeter(flops_per_step=4e12, peak_per_device=1e12, num_devices=2,
                         start_step=0)

  def spend(kind, seconds):
    with meter.timed(kind):
      clock[0] += seconds

  spend("compile", 10.0)
  spend("data", 1.0)
  clock[0] += 3.0  # steps
  spend("checkpoint", 5.0)
  spend("eval", 2.0)
  m = meter.window(4)  # 4 steps: 4 s of step + data time
  assert m["perf/step_time_s"] == pytest.approx(1.0)
  assert m["perf/data_wait_fraction"] == pytest.approx(0.25)
  assert m["perf/tflops_per_device"] == pytest.approx(2.0)
  assert m["perf/mfu"] == pytest.approx(2.0)
  s = meter.summary()
  assert s["wall_s"] == pytest.approx(21.0)
  assert s["step_s"] == pytest.approx(3.0) and s["data_wait_s"] == pytest.approx(1.0)
  assert s["compile_fraction"] == pytest.approx(10 / 21)


def test_device_peaks_from_the_tables():
  dev = lambda platform, kind: types.SimpleNamespace(platform=platform, device_kind=kind)  # noqa: E731
  assert perf.device_peak_flops(dev("tpu", "TPU v5 lite"))[0] == 197e12
  assert perf.device_peak_flops(dev("tpu", "TPU v5p"))[0] == 459e12
  assert perf.device_peak_flops(dev("tpu", "TPU v4"))[0] == 275e12
  assert perf.device_peak_flops(dev("gpu", "NVIDIA H200"))[0] == 989e12
  assert perf.device_peak_flops(dev("gpu", "NVIDIA A100-SXM4-80GB"))[0] == 312e12
  assert perf.device_peak_flops(dev("gpu", "Tesla T4"))[0] is None


def test_profile_and_ema_keys_are_range_checked(tmp_path):
  for key, value in (("profile.start_step", 0), ("profile.num_steps", -1),
                     ("ema_decay", 1.0)):
    with pytest.raises(VlaxError, match=key.replace(".", r"\.")):
      trainer.train(U.tiny_config(**{key: value}), str(tmp_path),
                    data_iterator_fn=U.synthetic_data_fn())
