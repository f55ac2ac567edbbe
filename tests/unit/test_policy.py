"""vlax.Policy: observation -> robot-unit action chunks, from a tiny random checkpoint
(`tests/_policy_utils.py`)."""

import os

import numpy as np
import pytest

from vlax.checkpoints import format as ckpt_format
from vlax.data.normalization import normalize, unnormalize
from vlax.data.sequence import SequenceBuilder
from vlax.errors import VlaxError
from vlax.inference.policy import ActionChunker, Policy, resize_image
from vlax.models import decoding

from _policy_utils import (CAMERAS, DIMS, K, PROPRIO, make_checkpoint, make_metadata,
                           make_observation, make_params)

@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
  return make_checkpoint(tmp_path_factory.mktemp("policy") / "ckpt")


@pytest.fixture(scope="module")
def policy(ckpt):
  return Policy(os.path.dirname(ckpt))


def manual_prediction(policy, obs, instruction, dataset):
  """The pipeline written out by hand, with training's TensorFlow image resize."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from vlax.data import images as images_lib  # pylint: disable=g-import-not-at-top
  _, meta = make_metadata()
  builder = SequenceBuilder.from_metadata(meta)
  stats = meta["statistics"][dataset]
  mode = stats.get("normalization_type", "bounds")
  imgs, mask = [], []
  for cam in CAMERAS:
    key = f"image_{cam}"
    if key in obs:
      img = images_lib.to_uint8(images_lib.resize(tf.constant(obs[key]), (32, 32))).numpy()
      imgs.append(img.astype(np.float32) / 127.5 - 1.0)
      mask.append(True)
    else:
      imgs.append(np.zeros((32, 32, 3), np.float32))
      mask.append(False)
  proprio = normalize(np.asarray(obs["proprio"], np.float64), stats["proprio"], mode)
  prompt = builder.prompt_inputs(instruction, proprio, np.ones(len(proprio), bool))
  a = DIMS[dataset]
  steps = K * a + 1
  assert builder.max_decode_steps(K, a) == steps
  # The Policy decodes under the robot answer's grammar (K * a action ids, then eos).
  allowed = tuple(x[None] for x in builder.action_grammar(K, a, steps))
  ids = decoding.greedy_decode(
      policy.model, policy.params, np.asarray(imgs)[None], np.asarray(mask)[None],
      prompt["tokens"][None], prompt["input_mask"][None], prompt["prefix_mask"][None],
      steps, allowed=allowed)
  ids = np.asarray(ids)[0]
  norm = builder.actions_from_tokens(ids, a, K)
  return unnormalize(norm, stats["action"], mode), ids


def test_vlax_policy_is_exported():
  import vlax  # pylint: disable=g-import-not-at-top
  assert vlax.Policy is Policy


@pytest.mark.parametrize("dataset", sorted(DIMS))
def test_predict_matches_manual_pipeline(policy, dataset):
  obs = make_observation(1, proprio_dim=PROPRIO[dataset])
  actions, tokens = policy.predict_action(obs, "pick up the red block", dataset=dataset,
                                          return_tokens=True)
  assert actions.shape == (K, DIMS[dataset]) and actions.dtype == np.float32
  assert np.all(np.isfinite(actions))
  want, want_ids = manual_prediction(policy, obs, "pick up the red block", dataset)
  np.testing.assert_array_equal(tokens, want_ids)
  np.testing.assert_allclose(actions, want, rtol=1e-6, atol=1e-6)
  # Constrained decoding: action tokens only, then eos (the random model alone emits
  # action tokens often, so the check covers real bins, but never eos).
  assert policy.builder.vocab.contains(tokens[:-1]).all()
  assert tokens[-1] == policy.builder.eos_id


def test_same_tokens_different_units_per_dataset(policy):
  obs = make_observation(2)
  a, ta = policy.predict_action(obs, "stack the cups", dataset="robot_a",
                                return_tokens=True)
  c, tc = policy.predict_action(obs, "stack the cups", dataset="robot_c",
                                return_tokens=True)
  np.testing.assert_array_equal(ta, tc)  # same prompt (same proprio statistics)
  norm = policy.builder.actions_from_tokens(ta, 3, K)
  stats = policy.statistics
  np.testing.assert_allclose(a, unnormalize(norm, stats["robot_a"]["action"], "bounds"),
                             rtol=1e-6)
  np.testing.assert_allclose(c, unnormalize(norm, stats["robot_c"]["action"], "normal"),
                             rtol=1e-6)
  assert not np.allclose(a[:, :2], c[:, :2])
  # robot_a's gripper is not normalized: it stays in model units (bin centres in [-1, 1]).
  np.testing.assert_allclose(a[:, 2], norm[:, 2])


def test_batch_equals_single_and_compiles_once(policy):
  obs = [make_observation(3, size=(64, 48)), make_observation(4, wrist=False),
         make_observation(5, size=(20, 30))]
  instr = ["pick up the red block", "open the drawer", "go left"]
  single = np.stack([policy.predict_action(o, i, dataset="robot_a")
                     for o, i in zip(obs, instr)])
  batch = policy.predict_action_batch(obs, instr, dataset="robot_a")
  assert batch.shape == (3, K, 3)
  np.testing.assert_allclose(batch, single, rtol=1e-5, atol=1e-5)
  before = decoding.TRACE_COUNTS["greedy_decode"]
  policy.predict_action_batch(obs[::-1], instr[::-1], dataset="robot_a")
  assert decoding.TRACE_COUNTS["greedy_decode"] == before  # same shape: no retrace
  # One key per example: every example answers in its own action space.
  mixed = policy.predict_action_batch(
      [make_observation(3, size=(64, 48)), make_observation(6, proprio_dim=4)],
      [instr[0], "wave"], dataset=["robot_a", "robot_b"])
  assert [m.shape for m in mixed] == [(K, 3), (K, 4)]
  np.testing.assert_allclose(mixed[0], single[0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
      mixed[1], policy.predict_action(make_observation(6, proprio_dim=4), "wave",
                                      dataset="robot_b"), rtol=1e-5, atol=1e-5)


def test_missing_camera_is_masked(policy):
  full = policy.prepare(make_observation(7), "x", "robot_a")
  part = policy.prepare(make_observation(7, wrist=False), "x", "robot_a")
  off = policy.prepare({**make_observation(7), "image_wrist_mask": False}, "x", "robot_a")
  assert full.image_mask.tolist() == [True, True]
  assert part.image_mask.tolist() == [True, False]
  assert off.image_mask.tolist() == [True, False]
  np.testing.assert_array_equal(part.images[0], full.images[0])
  assert full.images.min() >= -1 and full.images.max() <= 1


def test_resize_matches_training_resize():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from vlax.data import images as images_lib  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for shape in [(480, 640, 3), (20, 30, 3), (32, 32, 3), (33, 100, 3)]:
    img = rng.integers(0, 256, shape, dtype=np.uint8)
    want = images_lib.to_uint8(images_lib.resize(tf.constant(img), (32, 32))).numpy()
    got = resize_image(img, (32, 32))
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01  # float rounding ties only


def test_action_chunker_replans_every_k_steps(policy):
  chunker = ActionChunker(policy, execute_steps=1, dataset="robot_b")
  obs = make_observation(8, proprio_dim=4)
  chunk = policy.predict_action(obs, "wave", dataset="robot_b")
  np.testing.assert_allclose(chunker(obs, "wave"), chunk[0])
  chunker(obs, "wave")
  assert chunker.num_plans == 2
  chunker = ActionChunker(policy, execute_steps=K, dataset="robot_b")
  got = [chunker(obs, "wave") for _ in range(2 * K)]
  assert chunker.num_plans == 2
  np.testing.assert_allclose(np.stack(got[:K]), chunk)
  chunker(obs, "another task")
  assert chunker.num_plans == 3  # a new instruction re-plans at once
  with pytest.raises(VlaxError, match="execute_steps"):
    ActionChunker(policy, execute_steps=K + 1, dataset="robot_b")


def test_dataset_key_errors(policy):
  obs = make_observation(0)
  with pytest.raises(VlaxError, match=r"several datasets.*robot_a.*robot_b.*robot_c"):
    policy.predict_action(obs, "x")
  with pytest.raises(VlaxError, match=r"unknown dataset key 'robot_z'.*robot_a"):
    policy.predict_action(obs, "x", dataset="robot_z")
  with pytest.raises(VlaxError, match=r"unknown dataset key 'web'"):
    policy.predict_action(obs, "x", dataset="web")


def test_observation_errors(policy):
  obs = make_observation(0)
  bad = [
      ({**obs, "image_primary": obs["image_primary"].astype(np.float32)},
       r"image_primary.*uint8.*float32"),
      ({**obs, "image_primary": obs["image_primary"][..., :2]}, r"image_primary.*shape"),
      ({**obs, "image_top": obs["image_primary"]}, r"unknown camera 'top'.*primary"),
      ({k: v for k, v in obs.items() if k != "proprio"}, r"no 'proprio'.*robot_a"),
      ({**obs, "proprio": np.zeros(5)}, r"proprio.*\[2\].*\(5,\)"),
  ]
  for o, msg in bad:
    with pytest.raises(VlaxError, match=msg):
      policy.predict_action(o, "x", dataset="robot_a")
  with pytest.raises(VlaxError, match="instruction"):
    policy.predict_action(obs, 3, dataset="robot_a")
  # The server's rule (issue 24): no empty, blank or bytes instruction, no lone surrogate.
  for instruction, msg in [("", "non-empty string"), (" \n", "non-empty string"),
                           (b"wave", "got bytes"), ("pick \ud800 up", "not valid Unicode")]:
    with pytest.raises(VlaxError, match=msg):
      policy.predict_action(obs, instruction, dataset="robot_a")
  with pytest.raises(VlaxError, match="batch example 1: .*uint8"):
    policy.predict_action_batch([obs, {**obs, "image_wrist": np.zeros((4, 4, 3))}],
                                ["x", "y"], dataset="robot_a")


def test_missing_statistics_key_fails(tmp_path):
  config, meta = make_metadata()
  meta["statistics"]["robot_b"] = {"proprio": meta["statistics"]["robot_b"]["proprio"]}
  path = make_checkpoint(tmp_path / "nostats", metadata=meta,
                         params=make_params(config))
  p = Policy(path, dataset="robot_a")  # other datasets still work
  with pytest.raises(VlaxError, match=r"statistics of dataset 'robot_b' lack the 'action'"):
    p.predict_action(make_observation(0, proprio_dim=4), "x", dataset="robot_b")
  _, meta = make_metadata(statistics={})
  path = make_checkpoint(tmp_path / "empty", metadata=meta, params=make_params(config))
  with pytest.raises(VlaxError, match="no normalization statistics"):
    Policy(path).predict_action(make_observation(0), "x")


def test_mismatched_param_shape_fails(tmp_path):
  config, meta = make_metadata()
  params = make_params(config)
  params["img"]["head"]["kernel"] = np.zeros((32, 40), np.float32)
  path = make_checkpoint(tmp_path / "bad", params=params, metadata=meta)
  with pytest.raises(VlaxError, match=r"img/head/kernel: checkpoint has shape \(32, 40\), "
                     r"model config expects \(32, 32\)"):
    Policy(path)


def test_checkpoint_without_action_tokenizer_fails(tmp_path):
  config, _ = make_metadata()
  path = make_checkpoint(tmp_path / "imported", params=make_params(config),
                         metadata={"model": config.to_dict()})
  with pytest.raises(VlaxError, match="no action tokenizer settings"):
    Policy(path)


def test_from_params_and_single_dataset_default(ckpt):
  params, meta = ckpt_format.load_params(ckpt)
  meta["statistics"] = {"robot_b": meta["statistics"]["robot_b"]}
  p = Policy.from_params(params, meta)
  obs = make_observation(9, proprio_dim=4)
  out = p.predict_action(obs, "wave")  # the only dataset is the default
  assert out.shape == (K, 4)
  p2 = Policy.from_checkpoint(ckpt, dataset="robot_b")
  np.testing.assert_allclose(p2.predict_action(obs, "wave"), out)


def test_proprio_dropped_gives_the_prompt_proprio_dropout_trained(policy):
  """observation['proprio_dropped']: the prompt without proprio, token for token the one
  training writes for a dropped example (the proprio_bins=0 prompt); no proprio needed."""
  obs = make_observation(11, proprio_dim=PROPRIO["robot_a"])
  kept = policy.prepare(obs, "open the drawer", dataset="robot_a")
  dropped = policy.prepare({**obs, "proprio_dropped": True}, "open the drawer",
                           dataset="robot_a")
  plain = policy.builder.prompt_inputs("open the drawer")
  np.testing.assert_array_equal(dropped.tokens, plain["tokens"])
  assert dropped.input_mask.sum() < kept.input_mask.sum()
  no_proprio = {k: v for k, v in obs.items() if k != "proprio"}
  np.testing.assert_array_equal(
      policy.prepare({**no_proprio, "proprio_dropped": True}, "open the drawer",
                     dataset="robot_a").tokens, plain["tokens"])
