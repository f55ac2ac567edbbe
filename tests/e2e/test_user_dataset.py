"""A new robot's own episodes: convert to RLDS, register from a file, read through the CLI."""

import json
import os
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _write_episodes(folder, num=4, t=6, seed=0):
  rng = np.random.default_rng(seed)
  os.makedirs(folder)
  for i in range(num):
    gripper = (rng.random((t, 1)) > 0.5).astype(np.float32)
    np.savez(os.path.join(folder, f"ep{i}.npz"),
             image_primary=rng.integers(0, 255, (t, 24, 24, 3), dtype=np.uint8),
             state=rng.normal(size=(t, 3)).astype(np.float32),
             action=np.concatenate([rng.normal(size=(t, 4)), gripper], 1).astype(np.float32),
             language=np.array("stack the cups"))


def _run(args, env):
  return subprocess.run([sys.executable, "-m", "vlax.cli", *args], env=env, cwd=REPO,
                        capture_output=True, text=True, timeout=300)


def test_convert_register_stats_and_inspect(tmp_path):
  episodes, data_dir = str(tmp_path / "episodes"), str(tmp_path / "rlds")
  _write_episodes(episodes)
  conv = subprocess.run(
      [sys.executable, os.path.join(REPO, "data_pipelines", "convert_episodes_to_rlds.py"),
       "--input_dir", episodes, "--name", "my_cups_robot", "--data_dir", data_dir],
      capture_output=True, text=True, timeout=300, cwd=REPO)
  assert conv.returncode == 0, conv.stderr
  spec_file = tmp_path / "my_datasets.py"
  spec_file.write_text(conv.stdout)

  env = dict(os.environ, VLAX_DATASETS=str(spec_file), VLAX_CACHE_DIR=str(tmp_path / "cache"),
             JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  stats = _run(["stats", "--dataset", "my_cups_robot", "--data-dir", data_dir,
                "--out", str(tmp_path / "stats.json")], env)
  assert stats.returncode == 0, stats.stderr
  s = json.loads((tmp_path / "stats.json").read_text())
  assert s["num_trajectories"] == 4 and s["num_transitions"] == 24
  assert len(s["action"]["mean"]) == 5 and s["action"]["mask"][-1] is False  # gripper raw

  out = _run(["inspect-data", "--dataset", "my_cups_robot", "--data-dir", data_dir,
              "--batch-size", "2"], env)
  assert out.returncode == 0, out.stderr
  summary = json.dumps(json.loads(out.stdout))
  assert "action_pad_mask" in summary and "my_cups_robot" in summary

  # Without the registration the dataset is unknown: a one-line error naming it.
  env.pop("VLAX_DATASETS")
  bad = _run(["stats", "--dataset", "my_cups_robot", "--data-dir", data_dir], env)
  assert bad.returncode == 2
  assert "my_cups_robot" in bad.stderr and "Traceback" not in bad.stderr
