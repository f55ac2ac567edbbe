"""SIGTERM -> checkpoint at the next step boundary, clean exit (code 0), exact resume
(model state, metrics.jsonl steps, and the data iterator's saved position)."""

import os
import signal
import subprocess
import sys
import time

import pytest

import _train_utils as U
from test_multiprocess import WORKER, child_env


@pytest.mark.slow
def test_sigterm_saves_at_step_boundary_and_resumes(tmp_path):
  cmd = [sys.executable, WORKER, "--workdir", str(tmp_path), "--devices", "2",
         "--num_steps", "1000", "--checkpoint_every", "1000", "--step_sleep", "0.2",
         "--stateful"]
  proc = subprocess.Popen(cmd, env=child_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  metrics = tmp_path / "metrics.jsonl"
  try:
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
      if metrics.exists() and len(U.read_jsonl(metrics)) >= 3:
        break
      time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[0][-3000:]
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 0, out[-3000:]
  assert "preemption: saved checkpoint at step" in out
  result = U.read_jsonl(tmp_path / "result0.json")[0]
  stop = result["step"]
  assert result["preempted"] and 3 <= stop < 1000
  assert sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()) == [stop]
  assert [r["step"] for r in U.read_jsonl(metrics)] == list(range(1, stop + 1))

  # Resume: continues from `stop`, metrics.jsonl steps continue without duplicates.
  cmd = [sys.executable, WORKER, "--workdir", str(tmp_path), "--devices", "2",
         "--num_steps", str(stop + 3), "--checkpoint_every", "1000", "--stateful"]
  done = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=180)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  result = U.read_jsonl(tmp_path / "result0.json")[0]
  assert result["resumed_from"] == stop and result["step"] == stop + 3
  assert [r["step"] for r in U.read_jsonl(metrics)] == list(range(1, stop + 4))
  proc_log = [r["step"] for r in U.read_jsonl(tmp_path / "proc0.jsonl")]
  assert proc_log[-3:] == [stop + 1, stop + 2, stop + 3]
  # The iterator's saved state was restored: batches continue exactly, none replayed.
  served = [int(x) for x in (tmp_path / "served_p0.txt").read_text().split()]
  assert served == list(range(stop + 3))
  assert sorted(os.listdir(tmp_path / "data_state")) == sorted(
      d for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())


@pytest.mark.slow
def test_sigterm_to_one_of_two_processes_stops_both_at_one_step(tmp_path):
  """jax.distributed's preemption notifier + reached_preemption_sync_point: a SIGTERM to
  one host makes every host save the same step and exit cleanly."""
  from test_multiprocess import free_port  # pylint: disable=g-import-not-at-top
  port = free_port()
  procs = []
  for i in range(2):
    cmd = [sys.executable, WORKER, "--workdir", str(tmp_path), "--num_processes", "2",
           "--process_id", str(i), "--port", str(port), "--devices", "2",
           "--num_steps", "1000", "--checkpoint_every", "1000", "--step_sleep", "0.2"]
    procs.append(subprocess.Popen(cmd, env=child_env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True))
  try:
    deadline = time.time() + 180
    log1 = tmp_path / "proc1.jsonl"
    while time.time() < deadline and all(p.poll() is None for p in procs):
      if log1.exists() and len(U.read_jsonl(log1)) >= 2:
        break
      time.sleep(0.2)
    procs[1].send_signal(signal.SIGTERM)
    outs = [p.communicate(timeout=120)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  results = [U.read_jsonl(tmp_path / f"result{i}.json")[0] for i in range(2)]
  assert results[0]["preempted"] and results[1]["preempted"]
  assert results[0]["step"] == results[1]["step"] >= 2
  steps = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
  assert steps == [results[0]["step"]]
