"""Closed-loop toy_reach rollouts: the harness measures behaviour (oracle >> zero)."""

import json
import os

import numpy as np
import pytest

from vlax.data.oxe.toy import TOY_DATASETS
from vlax.errors import VlaxError
from vlax.envs.toy_env import COLORS
from vlax.evaluation.rollout import evaluate_rollout, rollout


class ZeroMotionPolicy:
  """A Policy-like object (predict_action only) that never moves but closes the gripper."""

  def predict_action(self, observation, instruction, dataset=None):
    del instruction
    dim = 3 if dataset == "toy_reach_a" else 4
    a = np.zeros((2, dim), np.float32)
    a[:, -1] = 1.0
    assert observation["image_primary"].dtype == np.uint8
    return a


@pytest.mark.parametrize("embodiment", ["a", "b", "c"])
def test_oracle_succeeds_and_zero_fails(embodiment):
  oracle = rollout("oracle", episodes=10, seed=0, embodiment=embodiment)
  zero = rollout("zero", episodes=10, seed=0, embodiment=embodiment)
  rand = rollout("random", episodes=10, seed=0, embodiment=embodiment)
  for r in (oracle, zero, rand):
    assert 0.0 <= r["success_rate"] <= 1.0 and r["episodes"] == 10
    assert len(r["success_per_episode"]) == 10
  assert oracle["success_rate"] >= 0.9
  assert zero["success_rate"] < oracle["success_rate"] - 0.5
  assert rand["success_rate"] < oracle["success_rate"] - 0.5
  assert oracle["mean_final_distance"] < 0.1 < zero["mean_final_distance"]
  assert oracle["mean_steps"] < zero["mean_steps"] == 20


def test_rollout_is_deterministic_and_seeded():
  a = rollout("random", episodes=4, seed=3)
  b = rollout("random", episodes=4, seed=3)
  c = rollout("random", episodes=4, seed=4)
  assert a == b
  assert a["trajectories"] != c["trajectories"]


def test_object_policy_with_open_loop_chunks():
  r = rollout(ZeroMotionPolicy(), episodes=3, embodiment="a", execute_steps=2)
  assert r["policy"] == "policy" and r["success_rate"] == 0.0
  assert r["num_predictions"] == 10  # 20 steps, 2 actions executed per prediction
  with pytest.raises(VlaxError, match=r"\[3, K, 4\]"):
    rollout(ZeroMotionPolicy(), episodes=3, embodiment="b", dataset="toy_reach_a")


def test_evaluate_rollout_report(tmp_path):
  out = str(tmp_path / "roll")
  lines = []
  report = evaluate_rollout(None, out, policy="oracle", episodes=4,
                            baselines=("zero",), print_fn=lines.append)
  saved = json.load(open(os.path.join(out, "report.json")))
  assert saved["results"] == report["results"]
  assert set(saved["results"]) == set(TOY_DATASETS)  # every toy embodiment
  for name in TOY_DATASETS:
    assert saved["results"][name]["oracle"]["success_rate"] == 1.0
    assert saved["results"][name]["zero"]["success_rate"] < 0.5
  assert "rollout_success.png" in saved["plots"]
  assert all(os.path.exists(os.path.join(out, p)) for p in saved["plots"])
  assert "oracle" in lines[0] and "zero" in lines[0]
  with pytest.raises(VlaxError, match="embodiment 'z'"):
    evaluate_rollout(None, None, policy="oracle", embodiment="z", print_fn=None)
  with pytest.raises(VlaxError, match="unknown environment"):
    evaluate_rollout(None, None, env_name="cartpole", policy="oracle", print_fn=None)
  with pytest.raises(VlaxError, match="not found"):
    evaluate_rollout(str(tmp_path / "missing"), None, print_fn=None)


class _SceneRecorder:
  """A policy whose metadata asks for a 1-block scene with big blocks; it records what
  it sees and stands still."""
  metadata = {"config": {"data": {"image_size": 32, "toy_num_blocks": 1,
                                  "toy_block_size": 0.2}}}
  dataset_keys = ["toy_reach_a"]

  def __init__(self):
    self.images = []

  def predict_action_batch(self, observations, instructions, dataset=None):
    del instructions, dataset
    self.images += [o["image_primary"] for o in observations]
    return np.zeros((len(observations), 1, 3), np.float32)


def test_evaluate_rollout_uses_the_training_scene():
  """Rollouts draw the blocks the checkpoint's data config generated (count and size)."""
  policy = _SceneRecorder()
  report = evaluate_rollout(None, None, policy=policy, episodes=3, baselines=(),
                            print_fn=None)
  assert report["metadata"]["num_blocks"] == 1
  assert report["metadata"]["block_size"] == 0.2
  for img in policy.images:
    assert img.shape == (32, 32, 3)
    colours = {c for c, rgb in COLORS.items() if (img == np.array(rgb, np.uint8)).all(-1).any()}
    assert len(colours) == 1
    # A 0.4-wide block on a 2-wide table at 32 px: about 6 x 6 pixels (minus the ring).
    assert (img == np.array(COLORS[colours.pop()], np.uint8)).all(-1).sum() >= 25


@pytest.mark.slow
def test_cli_rollout_with_checkpoint_policy(tmp_path, capsys):
  """`vlax eval --env toy_reach` on a tiny random checkpoint through vlax.Policy."""
  from test_eval_run import make_tiny_checkpoint
  from vlax.cli import main
  root = str(tmp_path / "train" / "checkpoints")
  make_tiny_checkpoint(root, str(tmp_path / "train"))
  out = str(tmp_path / "out")
  rc = main(["eval", "--env", "toy_reach", "--checkpoint", root, "--out", out,
             "--episodes", "2"])
  assert rc == 0, capsys.readouterr().err
  printed = capsys.readouterr().out
  assert "policy" in printed and "oracle" in printed
  report = json.load(open(os.path.join(out, "report.json")))
  for name in ("toy_reach_a", "toy_reach_b"):
    res = report["results"][name]
    assert set(res) == {"policy", "zero", "random", "oracle"}
    assert 0.0 <= res["policy"]["success_rate"] <= 1.0
    assert res["policy"]["episodes"] == 2
    assert np.isfinite(res["policy"]["mean_final_distance"])
  assert report["metadata"]["step"] == 1
