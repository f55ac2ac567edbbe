"""ToyReachEnv and the toy RLDS datasets of the debug config."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from vlax.data import rlds
from vlax.data.oxe import registry, toy
from vlax.envs.toy_env import COLORS, ToyReachEnv, rollout_oracle


@pytest.mark.parametrize("emb,adim,pdim,cams", [("a", 3, 2, ("primary",)),
                                                 ("b", 4, 4, ("primary", "wrist"))])
def test_env_shapes_and_oracle_success(emb, adim, pdim, cams):
  env = ToyReachEnv(emb, image_size=32, seed=0)
  obs = env.reset(seed=1)
  for c in cams:
    assert obs[f"image_{c}"].shape == (32, 32, 3) and obs[f"image_{c}"].dtype == np.uint8
  assert obs["proprio"].shape == (pdim,)
  assert obs["instruction"].startswith("move to the ")
  successes = 0
  for ep in range(5):
    env.reset(seed=ep)
    for _ in range(env.max_steps):
      a = env.oracle_action()
      assert a.shape == (adim,)
      _, _, done, info = env.step(a)
      if done:
        break
    successes += info["success"]
  assert successes == 5
  with pytest.raises(ValueError, match="takes"):
    env.step(np.zeros(adim + 1))


def test_env_is_deterministic_and_target_colour_is_visible():
  a = rollout_oracle(ToyReachEnv("a", seed=0), seed=7)
  b = rollout_oracle(ToyReachEnv("a", seed=5), seed=7)
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["observation"]["image_primary"],
                                  y["observation"]["image_primary"])
    np.testing.assert_array_equal(x["action"], y["action"])
  env = ToyReachEnv("a", seed=0)
  env.reset(seed=3)
  colour = env.instruction.split()[3]
  img = env.render()
  assert (img == np.array(COLORS[colour], np.uint8)).all(-1).sum() > 4


def test_oracle_action_depends_on_instruction():
  env = ToyReachEnv("a", seed=0, num_blocks=3)
  env.reset(seed=2)
  actions = []
  for target in range(3):
    env.target = target
    actions.append(env.oracle_action()[:2])
  assert not np.allclose(actions[0], actions[1]) or not np.allclose(actions[0], actions[2])


def test_write_toy_robot_data_is_readable_and_registered(tmp_path):
  paths = toy.write_toy_robot_data(str(tmp_path), num_episodes=4, image_size=16,
                                   episode_len=5)
  assert set(paths) == {"toy_reach_a", "toy_reach_b"}
  for name, path in paths.items():
    assert os.path.exists(os.path.join(path, "dataset_info.json"))
    spec = registry.get_spec(name)
    trajs = list(rlds.read_trajectories(name, str(tmp_path), process_index=0,
                                        process_count=1).as_numpy_iterator())
    assert len(trajs) == 4
    assert trajs[0]["action"].shape == (5, spec.action_dim)
    assert trajs[0]["observation"]["state"].shape == (5, spec.proprio_dim)
    assert trajs[0]["observation"]["image"][0][:2] == b"\xff\xd8"
  # Reuse without overwrite; deterministic with the same seed.
  mtime = os.path.getmtime(os.path.join(paths["toy_reach_a"], "dataset_info.json"))
  toy.write_toy_robot_data(str(tmp_path), num_episodes=4, image_size=16, episode_len=5)
  assert os.path.getmtime(os.path.join(paths["toy_reach_a"], "dataset_info.json")) == mtime


def test_make_toy_robot_data_cli(tmp_path):
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  out = subprocess.run(
      [sys.executable, os.path.join(root, "data_pipelines", "make_toy_robot_data.py"),
       "--data_dir", str(tmp_path), "--num_episodes", "2", "--image_size", "16",
       "--episode_len", "3", "--datasets", "toy_reach_a"],
      capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert os.path.exists(tmp_path / "toy_reach_a" / "1.0.0" / "dataset_info.json")


def test_convert_episodes_to_rlds_and_template(tmp_path):
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__)))), "data_pipelines"))
  import convert_episodes_to_rlds as conv  # pylint: disable=g-import-not-at-top
  h5py = pytest.importorskip("h5py")
  rng = np.random.default_rng(0)
  src = tmp_path / "raw"
  src.mkdir()
  for i in range(3):
    t = 4 + i
    ep = {"images/primary": rng.integers(0, 255, (t, 12, 16, 3), np.uint8),
          "images/wrist": rng.integers(0, 255, (t, 8, 8, 3), np.uint8),
          "state": rng.normal(size=(t, 3)).astype(np.float32),
          "action": np.concatenate([rng.normal(size=(t, 2)),
                                    rng.integers(0, 2, (t, 1))], 1).astype(np.float32),
          "language": np.array("pick up the cup")}
    if i < 2:
      np.savez(src / f"ep{i}.npz", **ep)
    else:
      with h5py.File(src / f"ep{i}.hdf5", "w") as f:
        for k, v in ep.items():
          f[k] = np.bytes_(str(v)) if k == "language" else v
  path, template = conv.convert_episodes(str(src), "conv_test_robot", str(tmp_path / "out"))
  assert os.path.exists(os.path.join(path, "dataset_info.json"))
  assert "action_normalization_mask=(True, True, False)" in template
  exec(compile(template, "<template>", "exec"), {})  # registers the spec
  spec = registry.get_spec("conv_test_robot")
  assert dict(spec.image_keys) == {"primary": "image_primary", "wrist": "image_wrist"}
  from vlax.data import robot  # pylint: disable=g-import-not-at-top
  ds, stats = robot.make_robot_dataset(
      [("conv_test_robot", 1.0)], str(tmp_path / "out"), image_size=8, train=False,
      split="train", stats_cache_dir=str(tmp_path / "cache"), process_index=0,
      process_count=1, progress=False, chunk_len=2)
  frames = list(ds.as_numpy_iterator())
  assert len(frames) == 4 + 5 + 6
  assert stats["conv_test_robot"]["num_trajectories"] == 3
  assert frames[0]["observation"]["image_wrist_mask"]
  assert frames[0]["language_instruction"] == b"pick up the cup"


@pytest.mark.parametrize("emb", ["a", "b", "c"])
def test_oracle_episode_ends_at_success(emb):
  env = ToyReachEnv(emb, image_size=16, seed=0)
  lengths = []
  for ep in range(20):
    steps = rollout_oracle(env, seed=ep, end_at_success=True)
    lengths.append(len(steps))
    # Replaying the recorded actions succeeds exactly at the last one, not before.
    env.reset(seed=ep)
    for t, s in enumerate(steps):
      _, _, _, info = env.step(s["action"])
      assert info["success"] == (t == len(steps) - 1), (ep, t)
    # The step limit still applies; without end_at_success episodes are full length.
    assert len(rollout_oracle(env, seed=ep)) == env.max_steps
  assert max(lengths) < env.max_steps and min(lengths) >= 1


def test_toy_data_is_rewritten_when_its_settings_change(tmp_path):
  kw = dict(num_episodes=3, image_size=16, episode_len=12, datasets=("toy_reach_a",))
  path = toy.write_toy_robot_data(str(tmp_path), end_at_success=True, **kw)["toy_reach_a"]

  def lengths():
    trajs = rlds.read_trajectories("toy_reach_a", str(tmp_path), process_index=0,
                                   process_count=1).as_numpy_iterator()
    return sorted(len(t["action"]) for t in trajs)

  short = lengths()
  assert max(short) < 12
  mtime = os.path.getmtime(os.path.join(path, "dataset_info.json"))
  toy.write_toy_robot_data(str(tmp_path), end_at_success=True, **kw)  # same: kept
  assert os.path.getmtime(os.path.join(path, "dataset_info.json")) == mtime
  toy.write_toy_robot_data(str(tmp_path), end_at_success=False, **kw)  # changed: rewritten
  assert lengths() == [12, 12, 12]


def test_scene_settings_block_count_size_and_rewrite(tmp_path):
  env = ToyReachEnv("a", image_size=64, num_blocks=2, block_size=0.2, seed=0)
  for seed in range(10):
    env.reset(seed=seed)
    assert len(env.block_colors) == 2
    # Big blocks are placed further apart, so they never touch.
    assert np.linalg.norm(env.block_pos[0] - env.block_pos[1]) > 0.4
  img = env.render()
  colour = env.block_colors[env.target]
  # 0.4 world units of a 2-unit table at 64 px: a ~13 px wide block.
  assert (img == np.array(COLORS[colour], np.uint8)).all(-1).sum() > 120
  with pytest.raises(ValueError, match="block_size"):
    ToyReachEnv("a", block_size=0.5)
  # The scene is part of the recorded settings: changing it rewrites the data.
  kw = dict(num_episodes=2, image_size=16, episode_len=4, datasets=("toy_reach_a",))
  path = toy.write_toy_robot_data(str(tmp_path), **kw)["toy_reach_a"]
  assert json.load(open(os.path.join(path, toy.SETTINGS_FILE)))["num_blocks"] == 3
  toy.write_toy_robot_data(str(tmp_path), num_blocks=1, block_size=0.2, **kw)
  settings = json.load(open(os.path.join(path, toy.SETTINGS_FILE)))
  assert settings["num_blocks"] == 1 and settings["block_size"] == 0.2
