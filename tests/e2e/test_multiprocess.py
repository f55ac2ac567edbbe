"""Two real JAX processes on one CPU machine (localhost coordinator, gloo collectives).

Each process has 4 virtual CPU devices and feeds its own half of the global batch; both
must see the same global loss every step, the loss must fall, and the checkpoint they
write must restore in this (8-device, 1-process) pytest process onto another mesh.
"""

import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from vlax.training import checkpointing
from vlax.training import mesh as mesh_lib
from vlax.training import trainer
from vlax.training.optimizer import path_str

import _train_utils as U

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(os.path.dirname(HERE), "_train_worker.py")  # tests/_train_worker.py


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def child_env():
  env = dict(os.environ)
  env["JAX_PLATFORMS"] = "cpu"
  # Not the 8 devices of conftest: the worker asks for its own count.
  env.pop("XLA_FLAGS", None)
  env.pop("JAX_NUM_CPU_DEVICES", None)
  # No shared XLA compilation cache (tests/conftest.py) across the processes of one run: a
  # process that loads a step its peer just compiled and cached, instead of compiling it
  # too, hung in its first CPU (gloo) collective in CI (2026-12-01, both two-process tests).
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(HERE), env.get("PYTHONPATH", "")])
  return env


def run_workers(workdir, n, extra=(), timeout=240):
  port = free_port()
  procs = []
  for i in range(n):
    cmd = [sys.executable, WORKER, "--workdir", str(workdir), "--num_processes", str(n),
           "--process_id", str(i), "--port", str(port), "--devices", "4", *extra]
    procs.append(subprocess.Popen(cmd, env=child_env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True))
  return wait_all(procs, timeout)


def wait_all(procs, timeout: float) -> list[str]:
  """The outputs of processes that must all exit 0 (any still running is killed)."""
  outs = []
  try:
    for p in procs:
      outs.append(p.communicate(timeout=timeout)[0])
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-4000:]
  return outs


@pytest.mark.slow
def test_two_processes_agree_converge_and_restore_on_another_mesh(tmp_path):
  run_workers(tmp_path, 2, ["--num_steps", "6", "--checkpoint_every", "3", "--fixed"])
  logs = [U.read_jsonl(tmp_path / f"proc{i}.jsonl") for i in range(2)]
  assert [r["step"] for r in logs[0]] == list(range(1, 7))
  for a, b in zip(*logs):
    assert a["step"] == b["step"] and a["loss"] == b["loss"]
  losses = [r["loss"] for r in logs[0]]
  assert losses[-1] < 0.8 * losses[0], losses
  results = [U.read_jsonl(tmp_path / f"result{i}.json")[0] for i in range(2)]
  assert all(r["processes"] == 2 and r["devices"] == 8 for r in results)
  # metrics.jsonl (process 0 only) has each step once.
  assert [r["step"] for r in U.read_jsonl(tmp_path / "metrics.jsonl")] == list(range(1, 7))

  # Restore in one process, 8 devices, a different mesh (data=2, fsdp=2, tensor=2).
  config = U.tiny_config(**{"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2})
  mesh = mesh_lib.mesh_from_config(dict(config.mesh))
  setup = trainer.ModelSetup(config, trainer.build_model_config(config, U.metadata()), mesh,
                             U.make_batch(8), len(U.DATASET_NAMES))
  ckpt = checkpointing.Checkpointer(str(tmp_path / "checkpoints"))
  assert ckpt.latest_step() == 6
  state, meta = ckpt.restore(6, setup.abstract_state, setup.state_sharding)
  ckpt.close()
  assert int(state.step) == 6 and meta["step"] == 6
  assert meta["statistics"] == U.metadata()["statistics"]
  want = np.load(tmp_path / "final_params.npz")
  flat = jax.tree_util.tree_flatten_with_path(state.params)[0]
  assert len(flat) == len(want.files)
  for p, x in flat:
    assert x.sharding.mesh.shape == mesh.shape
    np.testing.assert_array_equal(np.asarray(x), want[path_str(p)])


@pytest.mark.slow
def test_a_lost_process_stops_the_survivor_with_one_line(tmp_path):
  """Process 1 is killed mid-run: process 0 exits with PEER_LOST_EXIT and one vlax line
  naming process 1 and the checkpoint a restart resumes from, within the heartbeat
  timeout (a few seconds here, config distributed.heartbeat_timeout_s)."""
  from vlax.training import distributed  # pylint: disable=g-import-not-at-top
  # 30 s: on a loaded 2-core CI (two xdist workers) a 4 s and a 15 s heartbeat (a 7.5 s
  # watchdog) each once took a live process for lost during the first steps
  heartbeat, port, procs = 30, free_port(), []
  for i in range(2):
    cmd = [sys.executable, WORKER, "--workdir", str(tmp_path), "--num_processes", "2",
           "--process_id", str(i), "--port", str(port), "--devices", "2",
           "--num_steps", "1000", "--checkpoint_every", "2", "--step_sleep", "0.2",
           "--heartbeat", str(heartbeat)]
    procs.append(subprocess.Popen(cmd, env=child_env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True))
  try:
    saved = tmp_path / "checkpoints" / "2" / "train_state"
    for _ in range(600):  # training, with a checkpoint (step 2), before the kill
      if procs[0].poll() is not None or saved.is_dir():
        break
      time.sleep(0.5)
    assert procs[0].poll() is None, procs[0].communicate()[0][-3000:]
    procs[1].kill()
    out = procs[0].communicate(timeout=heartbeat + 30)[0]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  assert procs[0].returncode == distributed.PEER_LOST_EXIT, out[-3000:]
  lines = [l for l in out.splitlines() if l.startswith("vlax:")]
  assert len(lines) == 1 and lines[0] == out.strip().splitlines()[-1], out[-3000:]
  assert lines[0].startswith("vlax: lost process 1 of 2"), lines
  resume = lines[0].rsplit(" resume from ", 1)[1]
  assert os.path.isdir(os.path.join(resume, "train_state")), lines
  assert os.path.dirname(resume) == str(tmp_path / "checkpoints")
