"""A host killed (SIGKILL) while an asynchronous checkpoint is being written.

Orbax writes a step into `<step>.orbax-checkpoint-tmp-<t>` and process 0 renames it once
every process has finished writing; a host that dies before then leaves exactly that
temporary directory. The restarted run must resume from the newest complete step, never
from the half-written one. The real two-process kill is `slow`; the cheap test leaves the
same on-disk state by hand.
"""

import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import pytest

from vlax.training import checkpointing
from vlax.training import mesh as mesh_lib
from vlax.training import trainer

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


def test_half_written_step_is_never_restored(tmp_path):
  """The on-disk state a killed async save leaves (a temporary directory holding some
  items, no commit_success.txt, never renamed), made by hand from a real step: restore
  takes the complete step; the next start removes the leftover."""
  mesh = mesh_lib.mesh_from_config({"data": 1, "fsdp": 1, "tensor": 1},
                                   devices=jax.devices()[:1])
  c = U.tiny_config(num_steps=2, checkpoint_every=2)
  trainer.train(c, str(tmp_path), data_iterator_fn=U.synthetic_data_fn(), mesh=mesh)
  root = tmp_path / "checkpoints"
  half = root / f"4{TMP}-1796400000000000"
  shutil.copytree(root / "2", half)
  os.remove(half / "commit_success.txt")
  shutil.rmtree(half / "train_state")  # its last item was still being written
  setup = trainer.ModelSetup(c, trainer.build_model_config(c, U.metadata()), mesh,
                             U.make_batch(8), len(U.DATASET_NAMES))
  ckpt = checkpointing.Checkpointer(str(root))
  step, _ = ckpt.restore_latest(setup.abstract_state, setup.state_sharding)
  ckpt.close()
  assert step == 2
  assert os.listdir(root) == ["2"]  # cleanup_tmp_directories removed the leftover
