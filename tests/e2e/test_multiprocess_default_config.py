"""`vlax train` on the embedded default config (experiments/debug.py) in two real processes.

Validation on (eval every 2 steps over the toy datasets' 5 % validation slices, fewer
files than hosts - the sliced-split case that used to stop multi-host training), a
checkpoint at the end, then the checkpoint is loaded back in this one process.
Only the step counts and the toy data size are shrunk for CI.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import vlax
from test_multiprocess import free_port, wait_all

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _env():
  env = dict(os.environ)
  env["JAX_PLATFORMS"] = "cpu"
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
  env.pop("JAX_NUM_CPU_DEVICES", None)
  env.pop("JAX_COMPILATION_CACHE_DIR", None)  # see test_multiprocess.child_env
  env["PYTHONPATH"] = os.pathsep.join([REPO, env.get("PYTHONPATH", "")])
  return env


@pytest.mark.slow
def test_default_config_two_processes_with_validation(tmp_path):
  workdir, port = tmp_path / "run", free_port()
  procs = []
  for i in range(2):
    cmd = [sys.executable, "-m", "vlax.cli", "train",
           "--config", os.path.join(REPO, "experiments", "debug.py"),
           "--workdir", str(workdir), "--coordinator_address", f"127.0.0.1:{port}",
           "--num_processes", "2", "--process_id", str(i),
           "--config.num_steps=4", "--config.eval_every=2", "--config.eval_steps=1",
           "--config.checkpoint_every=2", "--config.log_every=2",
           "--config.data.toy_episodes=200", "--config.logging.progress=False",
           "--config.logging.tensorboard=False"]
    procs.append(subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, cwd=str(tmp_path)))
  outs = wait_all(procs, timeout=420)
  summaries = [json.loads(o.strip().splitlines()[-1]) for o in outs]
  assert [s["step"] for s in summaries] == [4, 4]

  rows = [json.loads(l) for l in open(workdir / "metrics.jsonl")]
  assert [r["step"] for r in rows] == [2, 4]
  for r in rows:  # validation ran on both robots' sliced splits and the web data
    for k in ("eval/loss", "eval/loss/toy_reach_a", "eval/loss/toy_reach_b"):
      assert np.isfinite(r[k]), (k, r)

  # Restore in this single process.
  model = vlax.load_pretrained(str(workdir / "checkpoints"))
  assert model.metadata["dataset_names"][:2] == ["toy_reach_a", "toy_reach_b"]
  cfg = model.config
  size = cfg.vision.image_size
  images = np.zeros((1, 2, size, size, 3), np.float32)
  tokens = np.ones((1, 8), np.int32)
  logits = np.asarray(model.logits(images, tokens, np.ones((1, 8), bool)))
  assert logits.shape == (1, 8, cfg.llm.vocab_size) and np.isfinite(logits).all()
