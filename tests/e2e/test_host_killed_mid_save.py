"""A host killed (SIGKILL) while an asynchronous checkpoint is being written.

Orbax writes a step into `<step>.orbax-checkpoint-tmp-<t>` and process 0 renames it once
every process has finished writing; a host that dies before then leaves exactly that
temporary directory. The restarted run must resume from the newest complete step, never
from the half-written one. The real two-process kill runs with VLAX_KILL_TEST=1 (too
costly for CI); tests/e2e/test_reliability.py leaves the same on-disk state by hand.
"""

import os
import signal
import subprocess
import sys
import time

import pytest


import _train_utils as U
from test_multiprocess import WORKER, child_env, free_port, wait_all

TMP = ".orbax-checkpoint-tmp"


def _steps(root):
  return sorted(int(d) for d in os.listdir(root) if d.isdigit())


def _workers(workdir, extra, port=None):
  port = port or free_port()
  return [subprocess.Popen(
      [sys.executable, WORKER, "--workdir", str(workdir), "--num_processes", "2",
       "--process_id", str(i), "--port", str(port), "--devices", "2", *extra],
      env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
          for i in range(2)]


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("VLAX_KILL_TEST") != "1",
                    reason="four JAX processes (~80 CPU-s): VLAX_KILL_TEST=1 runs it; "
                    "test_reliability.py's half-written-step test covers CI")
def test_two_processes_one_killed_mid_async_save_resume_from_the_complete_step(tmp_path):
  """Two processes; process 1 is SIGKILLed right after the async save of step 4 started
  (step 2 is complete); process 0 is then killed too (the pod restarts). The restart
  (two fresh processes) resumes from 2 and trains to 4 again."""
  run = ["--num_steps", "6", "--checkpoint_every", "2"]
  procs = _workers(tmp_path, [*run, "--kill_at_save", "4", "--kill_process", "1"])
  try:
    procs[1].wait(timeout=240)
    assert procs[1].returncode == -signal.SIGKILL, procs[1].communicate()[0][-3000:]
    time.sleep(1)  # process 0 may still be writing its half of step 4
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
      p.communicate()
  ckpt_dir = tmp_path / "checkpoints"
  assert _steps(ckpt_dir) == [2], os.listdir(ckpt_dir)  # 4 never became a step
  assert any(d.startswith(f"4{TMP}") for d in os.listdir(ckpt_dir)), os.listdir(ckpt_dir)

  outs = wait_all(_workers(tmp_path, ["--num_steps", "4", "--checkpoint_every", "2"]), 240)
  results = [U.read_jsonl(tmp_path / f"result{i}.json")[0] for i in range(2)]
  assert [r["resumed_from"] for r in results] == [2, 2], outs[0][-2000:]
  assert [r["step"] for r in results] == [4, 4]
  assert _steps(ckpt_dir) == [2, 4]
  assert not [d for d in os.listdir(ckpt_dir) if TMP in d]  # the leftover was removed
  assert "took over the lock of a run that is gone" in outs[0]  # process 0's kill -9
