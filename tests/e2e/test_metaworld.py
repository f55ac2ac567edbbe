"""Meta-World: task names and errors, env seeding and cameras, demos -> RLDS -> robot
pipeline, the expert through the eval harness, and a tiny train + closed-loop eval.

Needs the `[sim]` extra (CI installs it). MuJoCo's EGL rendering crashes in a process
that has imported TensorFlow (the pytest process has), so everything that renders runs in
a fresh `python` subprocess, as the real commands do.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from vlax.errors import VlaxError

pytest.importorskip("metaworld", reason="needs the [sim] extra: pip install -e '.[sim]'")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EASY = ("reach-v3", "drawer-close-v3")


def _python(code: str, timeout: int = 300, env: dict | None = None) -> str:
  """Runs `code` in a fresh interpreter (no TensorFlow); returns stdout."""
  e = {**os.environ, "PYTHONPATH": REPO, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"),
       "LP_NUM_THREADS": "1", **(env or {})}
  r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                     text=True, timeout=timeout, env=e, cwd=REPO)
  if r.returncode != 0:
    raise AssertionError(f"subprocess failed ({r.returncode}):\n{r.stderr[-3000:]}")
  return r.stdout


def _vlax(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
  e = {**os.environ, "PYTHONPATH": REPO, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"),
       "LP_NUM_THREADS": "1"}
  return subprocess.run([sys.executable, "-m", "vlax.cli", *args], capture_output=True,
                        text=True, timeout=timeout, env=e, cwd=REPO)


# --------------------------------------------------------------------------- names


def test_task_names_and_datasets():
  from vlax.envs import metaworld_env
  from vlax.data.oxe import get_mixture, get_spec, metaworld
  assert metaworld_env.resolve_tasks("mt10") == list(metaworld.MT10)
  assert len(metaworld_env.resolve_tasks("mt50")) == 50
  assert metaworld_env.resolve_tasks("drawer-close,reach-v3") == ["drawer-close-v3",
                                                                  "reach-v3"]
  from metaworld.env_dict import ALL_V3_ENVIRONMENTS
  assert set(metaworld.MT50) == set(ALL_V3_ENVIRONMENTS)
  mix = [n for n, _ in get_mixture("metaworld_mt10")]
  assert mix == [metaworld.dataset_name(t) for t in metaworld.MT10]
  pre = {n for n, _ in get_mixture("metaworld_mt10_pretrain7")}
  held = {n for n, _ in get_mixture("metaworld_mt10_heldout3")}
  assert len(pre) == 7 and len(held) == 3 and not pre & held and pre | held == set(mix)
  spec = get_spec("metaworld_drawer_close")
  assert spec.action_dim == 4 and spec.action_normalization_mask == (True,) * 3 + (False,)
  assert set(spec.image_keys) == {"primary", "wrist"}
  assert metaworld.instruction("drawer-open-v3") == "open the drawer"
  assert metaworld.instruction("hammer-v3") == "hammer"
  # Demo and eval layouts never share a seed.
  assert metaworld_env.eval_seed(0, 0) > metaworld_env.train_seed(9000, 99_999)


def test_unknown_task_lists_valid_names():
  from vlax.envs import metaworld_env
  with pytest.raises(VlaxError, match=r"unknown Meta-World task 'drawer-opne'.*"
                                      r"drawer-open-v3.*window-close-v3"):
    metaworld_env.resolve_tasks("reach,drawer-opne")
  r = _vlax("eval", "--env", "metaworld", "--tasks", "nope", "--checkpoint", REPO,
            "--out", "/tmp/unused")
  assert r.returncode == 2 and "unknown Meta-World task 'nope'" in r.stderr, r.stderr


def test_missing_extra_says_how_to_install():
  out = _python("""
      import sys
      sys.modules["metaworld"] = None  # as if not installed
      from vlax.envs.metaworld_env import MetaWorldEnv
      try:
        MetaWorldEnv("reach")
      except Exception as e:
        print(type(e).__name__, e)
      """)
  assert "VlaxError" in out and "pip install -e '.[sim]'" in out, out


def test_bad_gl_backend_names_mujoco_gl():
  out = _python("""
      from vlax.envs.metaworld_env import MetaWorldEnv
      try:
        MetaWorldEnv("reach").render()
      except Exception as e:
        print(type(e).__name__, e)
      """, env={"MUJOCO_GL": "no-such-backend"})
  assert "VlaxError" in out and "MUJOCO_GL" in out, out


# --------------------------------------------------------------------------- env


def test_env_seeding_and_cameras():
  out = _python("""
      import json
      import numpy as np
      from vlax.envs.metaworld_env import MetaWorldEnv, rollout_expert
      env = MetaWorldEnv("push", image_size=32)
      a = env.reset(5); a2 = env.reset(5); b = env.reset(6)
      same = all(np.array_equal(a[k], a2[k]) for k in ("image_primary", "image_wrist",
                                                       "proprio"))
      differ = not np.array_equal(a["image_primary"], b["image_primary"])
      s1, ok1 = rollout_expert(env, 7); s2, ok2 = rollout_expert(env, 7)
      replay = len(s1) == len(s2) and all(np.array_equal(x["action"], y["action"])
                                          for x, y in zip(s1, s2))
      # DART-style noise: other states are visited, each labelled with the expert's
      # clean action for that state (the env replayed to it gives the same action)
      n1, okn = rollout_expert(env, 7, action_noise=0.1)
      n2, _ = rollout_expert(env, 7, action_noise=0.1)
      noisy = {"ok": okn, "replay": all(np.array_equal(x["full_state"], y["full_state"])
                                         for x, y in zip(n1, n2)),
               "moved": not np.allclose(n1[10]["full_state"], s1[10]["full_state"]),
               "labels_clean": bool(np.abs(np.stack([x["action"] for x in n1])).max() <= 1.0)}
      ups = {}
      for cam in ("primary", "wrist"):
        env.render(cam)
        ups[cam] = [float(v) for v in env._renderer.scene.camera[0].up]
      env._renderer.update_scene(env._env.data, camera="corner")
      ups["corner"] = [float(v) for v in env._renderer.scene.camera[0].up]
      print(json.dumps({"same": same, "differ": differ, "replay": replay, "ok": ok1,
                        "noisy": noisy,
                        "shape": list(a["image_primary"].shape),
                        "proprio": len(a["proprio"]), "ups": ups,
                        "instruction": a["instruction"]}))
      """)
  r = json.loads(out.strip().splitlines()[-1])
  assert r["same"] and r["differ"] and r["replay"] and r["ok"], r
  assert all(r["noisy"].values()), r["noisy"]
  assert r["shape"] == [32, 32, 3] and r["proprio"] == 4
  assert r["instruction"] == "push the puck to the goal"
  # Upright: world up (+z) is image up in the front camera; Meta-World's own `corner`
  # camera (upside down) fails the same check.
  assert r["ups"]["primary"][2] > 0.5 and r["ups"]["corner"][2] < 0
  # The wrist camera looks down with the far side of the table at the top.
  assert r["ups"]["wrist"][1] > 0.5


def test_expert_succeeds_through_eval_harness():
  out = _python("""
      import json
      from vlax.evaluation.metaworld_eval import rollout_task
      print(json.dumps({t: rollout_task("expert", t, episodes=10)["success_rate"]
                        for t in ("reach-v3", "push-v3", "drawer-close-v3")}))
      """)
  rates = json.loads(out.strip().splitlines()[-1])
  assert all(v >= 0.9 for v in rates.values()), rates


# --------------------------------------------------------------------------- data + train


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("mw_demos"))
  r = subprocess.run(
      [sys.executable, os.path.join(REPO, "data_pipelines", "make_metaworld_demos.py"),
       "--tasks", ",".join(EASY), "--episodes", "3", "--image-size", "32", "--data-dir", d],
      capture_output=True, text=True, timeout=300, cwd=REPO,
      env={**os.environ, "PYTHONPATH": REPO, "LP_NUM_THREADS": "1"})
  assert r.returncode == 0, r.stderr[-3000:]
  out = json.loads(r.stdout)
  assert set(out["datasets"]) == {"metaworld_reach", "metaworld_drawer_close"}
  return d


def test_demos_read_back_through_robot_pipeline(demo_dir):
  from vlax.data.inspect import inspect_data
  s = inspect_data(["metaworld_reach", "metaworld_drawer_close"], demo_dir, batch_size=4,
                   image_size=32, chunk_len=4, cameras=("primary", "wrist"))
  keys = s["keys"]
  assert keys["observation/image_primary"]["shape"][1:] == [1, 32, 32, 3] or \
      keys["observation/image_primary"]["shape"][-3:] == [32, 32, 3]
  assert keys["action"]["shape"][-1] == 4
  assert s["statistics"]["metaworld_reach"]["num_trajectories"] == 3
  from vlax.data.inspect import compute_and_print_stats
  del compute_and_print_stats


@pytest.mark.slow
def test_tiny_train_and_closed_loop_eval(demo_dir, tmp_path):
  from vlax import cli
  work = str(tmp_path / "run")
  rc = cli.main(["train", "--config", os.path.join(REPO, "experiments", "metaworld_mt10.py"),
                 "--workdir", work, f"--config.data.data_dir={demo_dir}",
                 "--config.data.robot_datasets=metaworld_reach,metaworld_drawer_close",
                 "--config.model.preset=tiny", "--config.model.overrides=vision.stem=conv",
                 "--config.data.image_size=32", "--config.batch_size=8",
                 "--config.num_steps=3", "--config.checkpoint_every=3",
                 "--config.logging.progress=False", "--config.async_checkpointing=False",
                 "--config.data.shuffle_buffer=50"])
  assert rc == 0
  out = str(tmp_path / "eval")
  r = _vlax("eval", "--env", "metaworld", "--tasks", "reach", "--checkpoint", work,
            "--out", out, "--episodes", "2", "--max-steps", "6")
  assert r.returncode == 0, r.stderr[-3000:]
  report = json.load(open(os.path.join(out, "report.json")))
  t = report["tasks"]["reach-v3"]
  assert set(t["baselines"]) == {"expert", "zero", "random"}
  assert 0.0 <= t["success_rate"] <= 1.0 and "average_success" in report
  assert os.path.exists(os.path.join(out, report["plots"][0]))
  assert report["videos"] and all(os.path.getsize(os.path.join(out, v)) > 0
                                  for v in report["videos"])
  # The checkpoint knows only its own tasks.
  r = _vlax("eval", "--env", "metaworld", "--tasks", "push", "--checkpoint", work,
            "--out", out, "--episodes", "1")
  assert r.returncode == 2 and "was not trained on ['push-v3']" in r.stderr, r.stderr
