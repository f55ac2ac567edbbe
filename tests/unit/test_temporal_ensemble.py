"""Temporal ensembling of overlapping chunks (ACT-style), on numbers: no model, no sim."""

from __future__ import annotations

import numpy as np
import pytest

from vlax.envs import metaworld_env
from vlax.errors import VlaxError
from vlax.evaluation import metaworld_eval
from vlax.evaluation.chunking import TemporalEnsemble, ensemble_weights


def test_weights():
  w = ensemble_weights(3, 0.5)
  e = np.exp(-0.5 * np.arange(3))
  np.testing.assert_allclose(w, e / e.sum(), rtol=1e-6)
  assert w[0] > w[1] > w[2]  # the oldest prediction weighs most
  np.testing.assert_allclose(ensemble_weights(4, 0.0), [0.25] * 4)
  np.testing.assert_allclose(ensemble_weights(1, 3.0), [1.0])
  with pytest.raises(VlaxError, match=">= 0"):
    ensemble_weights(2, -1.0)
  with pytest.raises(VlaxError, match="at least one"):
    ensemble_weights(0)


def test_averages_the_overlapping_predictions():
  k, m = 3, 0.5
  ens = TemporalEnsemble(m)
  # Chunk predicted at step s holds 10 * s + j for step s + j (episode 0), negated for 1.
  def chunk(s):
    v = np.array([10 * s + j for j in range(k)], np.float32)
    return np.stack([v, -v])[:, :, None]  # [B=2, K, A=1]
  out = [ens(chunk(s)) for s in range(5)]
  assert out[0].shape == (2, 1)
  assert out[0][0, 0] == 0.0  # only chunk 0: its row 0
  w2 = ensemble_weights(2, m)
  np.testing.assert_allclose(out[1][0, 0], w2 @ [1.0, 10.0], rtol=1e-6)  # chunk0[1], chunk1[0]
  w3 = ensemble_weights(3, m)
  np.testing.assert_allclose(out[2][0, 0], w3 @ [2.0, 11.0, 20.0], rtol=1e-6)
  np.testing.assert_allclose(out[4][0, 0], w3 @ [22.0, 31.0, 40.0], rtol=1e-6)
  np.testing.assert_allclose(out[4][1, 0], -out[4][0, 0], rtol=1e-6)
  assert ens.num_stored == 3  # chunks older than K steps were dropped
  ens.reset()
  assert ens(chunk(7))[0, 0] == 70.0


def test_consistent_plans_are_unchanged_and_shapes_are_checked():
  ens = TemporalEnsemble()
  plan = np.arange(10, dtype=np.float32)  # the same trajectory, re-planned each step
  for t in range(6):
    a = ens(np.broadcast_to(plan[t:t + 4][None, :, None], (1, 4, 2)))
    np.testing.assert_allclose(a, [[plan[t], plan[t]]], rtol=1e-6)
  with pytest.raises(VlaxError, match="must not change"):
    ens(np.zeros((2, 4, 2)))
  with pytest.raises(VlaxError, match=r"\[B, K, A\]"):
    TemporalEnsemble()(np.zeros((4, 2)))


class _FakeEnv:
  """Records executed actions; never succeeds (a stand-in for MetaWorldEnv)."""
  action_dim = 1

  def __init__(self):
    self.render_images = False
    self.actions = []

  def reset(self, seed):
    del seed
    return self.observation()

  def observation(self):
    return {"image_primary": np.zeros((2, 2, 3), np.uint8),
            "image_wrist": np.zeros((2, 2, 3), np.uint8), "instruction": "x"}

  def step(self, action):
    self.actions.append(float(action[0]))
    return self.observation(), 0.0, False, {"success": False}

  def close(self):
    pass


class _CountingPolicy:
  """Chunk predicted at call c: [10c, 10c + 1, 10c + 2] (K = 3): the plans disagree."""

  def __init__(self):
    self.calls = 0

  def predict_action_batch(self, obs, instructions, dataset=None):
    del instructions, dataset
    c = self.calls
    self.calls += 1
    return np.tile(np.array([10 * c, 10 * c + 1, 10 * c + 2], np.float32)[None, :, None], (len(obs), 1, 1))


def test_rollout_task_replans_every_step_and_executes_the_average():
  envs = [_FakeEnv(), _FakeEnv()]
  policy = _CountingPolicy()
  r = metaworld_eval.rollout_task(policy, "reach-v3", episodes=2, max_steps=4,
                                  envs=envs, temporal_ensemble=0.0)
  assert r["num_predictions"] == 4 and r["temporal_ensemble"] == 0.0
  # step 0: chunk 0's row 0; 1: mean(1, 10); 2: mean(2, 11, 20); 3: mean(12, 21, 30).
  np.testing.assert_allclose(envs[0].actions, [0, 5.5, 11, 21])
  np.testing.assert_allclose(envs[1].actions, envs[0].actions)
  policy = _CountingPolicy()
  envs = [_FakeEnv()]
  metaworld_eval.rollout_task(policy, "reach-v3", episodes=1, max_steps=4, envs=envs,
                              execute_steps=3)
  assert policy.calls == 2 and envs[0].actions == [0, 1, 2, 10]  # open loop: no averaging


class _CameraCheckingPolicy(_CountingPolicy):
  """Fails the way a real Policy does on a camera it was not trained with."""

  def __init__(self, cameras):
    super().__init__()
    self.cameras = tuple(cameras)

  def predict_action_batch(self, obs, instructions, dataset=None):
    for o in obs:
      extra = {k for k in o if k.startswith("image_")} - {f"image_{c}" for c in self.cameras}
      assert not extra, f"cameras {sorted(extra)} given to a policy trained on {self.cameras}"
    return super().predict_action_batch(obs, instructions, dataset)


@pytest.mark.parametrize("cameras", [(), ("primary",), ("primary", "wrist")])
def test_the_policy_gets_only_its_trained_cameras(cameras):
  """The env renders front + wrist; a state oracle (no cameras) or a one-camera policy
  gets only what it was trained on, with or without the shuffle ablation."""
  for ablation in (None, "shuffle"):
    r = metaworld_eval.rollout_task(_CameraCheckingPolicy(cameras), "reach-v3", episodes=2,
                                    max_steps=2, envs=[_FakeEnv(), _FakeEnv()],
                                    image_ablation=ablation)
    assert r["num_predictions"] == 1


class _SeedRecordingEnv(_FakeEnv):
  def reset(self, seed):
    self.seed = seed
    return self.observation()


def test_layouts_train_replays_the_demos_layouts_eval_never_does():
  seeds = {}
  for layouts in ("eval", "train"):
    envs = [_SeedRecordingEnv() for _ in range(3)]
    r = metaworld_eval.rollout_task(_CountingPolicy(), "reach-v3", episodes=3, seed=2,
                                    max_steps=1, envs=envs, layouts=layouts)
    seeds[layouts] = [e.seed for e in envs]
    assert r["layouts"] == layouts
  # the demo writer's layouts for --seed 2 (make_metaworld_demos.py uses train_seed)
  assert seeds["train"] == [metaworld_env.train_seed(2, i) for i in range(3)]
  assert seeds["eval"] == [metaworld_env.eval_seed(2, i) for i in range(3)]
  assert not set(seeds["eval"]) & {metaworld_env.train_seed(2, i) for i in range(10_000)}
  with pytest.raises(VlaxError, match="layouts"):
    metaworld_eval.rollout_task(_CountingPolicy(), "reach-v3", episodes=1, max_steps=1,
                                envs=[_FakeEnv()], layouts="test")


class _ProprioRecordingPolicy(_CountingPolicy):
  def __init__(self):
    super().__init__()
    self.dropped = []

  def predict_action_batch(self, obs, instructions, dataset=None):
    self.dropped.extend(bool(o.get("proprio_dropped", False)) for o in obs)
    return super().predict_action_batch(obs, instructions, dataset)


def test_proprio_ablation_drops_the_proprio_of_every_policy_prompt():
  for mode, expect in ((None, False), ("drop", True)):
    policy = _ProprioRecordingPolicy()
    r = metaworld_eval.rollout_task(policy, "reach-v3", episodes=2, max_steps=2,
                                    envs=[_FakeEnv(), _FakeEnv()], execute_steps=1,
                                    proprio_ablation=mode)
    assert policy.dropped == [expect] * 4 and r["proprio_ablation"] == mode
  with pytest.raises(VlaxError, match="unknown proprio ablation"):
    metaworld_eval.rollout_task(_CountingPolicy(), "reach-v3", episodes=1, max_steps=1,
                                envs=[_FakeEnv()], proprio_ablation="zero")
