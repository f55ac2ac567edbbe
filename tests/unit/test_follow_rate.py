"""Instruction following in the toy closed loop: the follow rate, the evaluation conditions
(which colours the blocks and the instruction have) and `vlax eval --condition`."""

import json
import os

import numpy as np
import pytest

from vlax.cli import main
from vlax.envs.toy_env import COLORS, ToyReachEnv
from vlax.errors import VlaxError
from vlax.evaluation import rollout as rollout_lib
from vlax.evaluation.rollout import (CONDITIONS, episode_seed, evaluate_rollout,
                                     follow_choice, rollout)

SCENE = {"num_blocks": 2, "block_size": 0.2}
SEEN = [c for c in COLORS if c != "purple"]


class ImagePolicy:
  """Reads the blocks off the top-down image (embodiment "a": one camera, proprio =
  [x, y]) and steps towards a chosen block, closing the gripper there.

  mode "named": the block the instruction names (any block for an unknown word);
  "first_other": another block until within reach, then the named one (it succeeds
  without following).
  """

  def __init__(self, mode):
    self.mode = mode
    self.detour = {}  # episode key -> still heading for the other block

  @staticmethod
  def blocks(image):
    size = image.shape[0]
    out = {}
    for name, rgb in COLORS.items():
      ys, xs = np.nonzero((image == np.asarray(rgb, np.uint8)).all(-1))
      if xs.size:  # bounding-box centre: robust to the end-effector ring drawn on top
        px, py = (xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2
        out[name] = np.array([px / size * 2 - 1, 1 - py / size * 2])
    return out

  def predict_action_batch(self, observations, instructions, dataset=None):
    del dataset
    actions = np.zeros((len(observations), 1, 3), np.float32)
    for i, (obs, text) in enumerate(zip(observations, instructions)):
      blocks, pos, word = self.blocks(obs["image_primary"]), obs["proprio"], text.split()[3]
      goal = blocks.get(word, next(iter(blocks.values())))
      key = (i, text, tuple(sorted(blocks)))
      if self.detour.setdefault(key, self.mode == "first_other"):
        other = next(v for c, v in blocks.items() if c != word)
        if np.linalg.norm(other - pos) < 0.05:
          self.detour[key] = False
        else:
          goal = other
      delta = np.clip(goal - pos, -0.15, 0.15)
      close = float(not self.detour[key] and np.linalg.norm(goal - pos - delta) < 0.05)
      actions[i, 0] = [delta[0], delta[1], close]
    return actions


def test_follow_choice_on_scripted_paths():
  blocks = np.array([[0.5, 0.5], [-0.5, -0.5]])
  to_first = np.linspace([0.0, 0.0], [0.5, 0.5], 6)
  assert follow_choice(to_first, blocks, 0.1) == (0, True)
  # Past block 1 first, then on to block 0 (where it ends): block 1 was chosen.
  via_other = np.concatenate([np.linspace([0, 0], [-0.5, -0.5], 5),
                              np.linspace([-0.5, -0.5], [0.5, 0.5], 8)])
  assert follow_choice(via_other, blocks, 0.1) == (1, True)
  # Never within reach: the block nearest the last position.
  assert follow_choice(np.array([[0.0, 0.0], [0.2, 0.15]]), blocks, 0.1) == (0, False)
  assert follow_choice(np.array([[0.0, 0.0], [-0.2, -0.1]]), blocks, 0.1) == (1, False)
  # Height counts (embodiment b): hovering 0.3 above block 0 is not reaching it.
  above = np.array([[0.5, 0.5, 0.3], [-0.45, -0.5, 0.3]])
  assert follow_choice(above, blocks, 0.1) == (1, False)


def test_follow_rate_oracle_detour_and_never_near():
  kw = dict(episodes=6, seed=1, embodiment="a", image_size=32, env_kwargs=SCENE,
            max_steps=40)
  oracle = rollout("oracle", **kw)
  assert oracle["follow_rate"] == 1.0 and oracle["success_rate"] == 1.0
  assert oracle["follow_chance"] == 0.5 and oracle["reached_block"] == 6
  named = rollout(ImagePolicy("named"), **kw)
  assert named["follow_rate"] == 1.0 and named["success_rate"] == 1.0
  detour = rollout(ImagePolicy("first_other"), **kw)
  assert detour["follow_rate"] == 0.0 and detour["follows"] == 0
  assert detour["success_rate"] == 1.0  # success alone would call this following
  assert detour["chosen_color_per_episode"] != detour["target_color_per_episode"]
  # Never near a block: the block nearest the (unchanged) start counts.
  zero = rollout("zero", **kw)
  want = []
  for i in range(6):
    env = ToyReachEnv("a", image_size=32, max_steps=40, **SCENE)
    env.reset(seed=episode_seed(1, i))
    want.append(int(np.argmin(np.linalg.norm(env.block_pos - env.pos, axis=1)))
                == env.target)
  assert zero["reached_block"] == 0
  assert zero["follow_per_episode"] == want and 0 < sum(want) < 6


def test_conditions_set_colours_and_instructions():
  kw = dict(episodes=8, seed=0, embodiment="b", image_size=16, keep_trajectories=8)
  layouts, full_scenes = {}, {}
  for cond in CONDITIONS:
    for blocks in (2, 3):
      r = rollout("oracle", env_kwargs={"num_blocks": blocks}, condition=cond, **kw)
      assert r["follow_rate"] == 1.0 and r["condition"] == cond
      targets = r["target_color_per_episode"]
      scenes = [[c for _, _, c in tr["blocks"]] for tr in r["trajectories"]]
      others = [[c for c in s if c != t] for s, t in zip(scenes, targets)]
      assert all(len(s) == len(set(s)) == blocks for s in scenes)
      if cond in ("novel_target", "nonsense"):
        assert set(targets) == {"purple"}
        assert all(set(o) <= set(SEEN) for o in others)
      else:
        assert set(targets) <= set(SEEN) and len(set(targets)) > 1
      if cond == "seen":
        assert all("purple" not in s for s in scenes)
      if cond == "novel_distractor":
        assert all("purple" in o for o in others)
      word = {"nonsense": "zorp", "novel_target": "purple"}.get(cond)
      if word:
        assert r["instructions"] == [f"move to the {word} block"]
      else:
        assert all(f"move to the {t} block" in r["instructions"] for t in targets)
      # Same seeds, same layouts: every condition pairs with the others per episode.
      pos = [[b[:2] for b in tr["blocks"]] for tr in r["trajectories"]]
      assert layouts.setdefault(blocks, pos) == pos
      if cond in ("novel_target", "nonsense"):  # the same scenes, colours included:
        # only the instruction's word differs, so the pair isolates the word's effect
        assert full_scenes.setdefault(blocks, scenes) == scenes
  with pytest.raises(VlaxError, match="required_distractors"):
    rollout("oracle", env_kwargs={"num_blocks": 1}, condition="novel_distractor", **kw)
  with pytest.raises(VlaxError, match="unknown condition"):
    rollout("oracle", condition="novel", **kw)


def test_rollout_reports_policy_decode_counters():
  class Counting(ImagePolicy):
    decode_errors, invalid_decodes = 3, 1

    def predict_action_batch(self, observations, instructions, dataset=None):
      self.invalid_decodes += 1
      return super().predict_action_batch(observations, instructions, dataset)

  r = rollout(Counting("named"), episodes=2, embodiment="a", image_size=32,
              env_kwargs=SCENE)
  assert r["invalid_decodes"] == r["num_predictions"] and r["decode_errors"] == 0
  assert "invalid_decodes" not in rollout("zero", episodes=2, embodiment="a",
                                          image_size=32)


class _Checkpoint(ImagePolicy):
  """What `Policy.from_checkpoint` returns here: trained on a 2-block toy_reach_a scene."""
  metadata = {"step": 7, "config": {"data": {"image_size": 32, "toy_num_blocks": 2,
                                             "toy_block_size": 0.2}}}
  dataset_keys = ["toy_reach_a"]

  @classmethod
  def from_checkpoint(cls, path, step=None):
    del path, step
    return cls("named")


def test_vlax_eval_condition(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(rollout_lib, "Policy", _Checkpoint)
  out = str(tmp_path / "out")
  rc = main(["eval", "--env", "toy_reach", "--checkpoint", str(tmp_path), "--out", out,
             "--episodes", "4", "--condition", "seen,nonsense"])
  assert rc == 0, capsys.readouterr().err
  printed = capsys.readouterr().out
  assert "follow" in printed and "toy_reach_a/nonsense" in printed
  report = json.load(open(os.path.join(out, "report.json")))
  assert set(report["results"]) == {"toy_reach_a/seen", "toy_reach_a/nonsense"}
  assert report["metadata"]["conditions"] == ["seen", "nonsense"]
  assert report["metadata"]["concept"] == "purple"
  seen = report["results"]["toy_reach_a/seen"]
  assert seen["policy"]["follow_rate"] == 1.0 and seen["oracle"]["follow_rate"] == 1.0
  assert seen["zero"]["episodes"] == 4 and "follow_per_episode" in seen["random"]
  nonsense = report["results"]["toy_reach_a/nonsense"]["oracle"]
  assert nonsense["instructions"] == ["move to the zorp block"]
  assert set(nonsense["target_color_per_episode"]) == {"purple"}
  rc = main(["eval", "--checkpoint", str(tmp_path), "--out", out, "--condition", "seen"])
  assert rc == 2 and "--env toy_reach" in capsys.readouterr().err


def test_evaluate_rollout_concept_from_checkpoint_and_errors():
  class Held(_Checkpoint):
    metadata = {"config": {"data": {"image_size": 32, "toy_num_blocks": 2,
                                    "held_out_concept": "yellow"}}}
  report = evaluate_rollout(None, None, policy=Held("named"), episodes=3, baselines=(),
                            conditions=["novel_target"], print_fn=None)
  r = report["results"]["toy_reach_a/novel_target"]["policy"]
  assert set(r["target_color_per_episode"]) == {"yellow"} and r["concept"] == "yellow"
  # The training scene of a held-out checkpoint never draws the held-out colour.
  default = evaluate_rollout(None, None, policy=Held("named"), episodes=6, baselines=(),
                             print_fn=None)["results"]["toy_reach_a"]["policy"]
  assert "yellow" not in default["target_color_per_episode"]
  assert default["follow_rate"] == 1.0
  with pytest.raises(VlaxError, match="unknown condition 'zorp'"):
    evaluate_rollout(None, None, policy="oracle", conditions=["zorp"], print_fn=None)
  with pytest.raises(VlaxError, match="not a toy block colour"):
    rollout("oracle", condition="seen", concept="white")
