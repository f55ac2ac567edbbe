"""Checkpoints written before the issue-15 redesign (trainer split, typed Batch,
structure-derived optimizer-state shardings) still load, predict the same, resume and
fine-tune with the current code.

The fixture, tests/fixtures/pre_split_checkpoint/, was written by vlax at the commit named
in its expected.json (tests/fixtures/make_pre_split_checkpoint.py, run on that commit):
the tiny preset trained 2 steps on the toy robots with AdamW, plus what that vlax
predicted from it.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import vlax

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
FIXTURES = os.path.join(os.path.dirname(HERE), "fixtures")
OLD = os.path.join(FIXTURES, "pre_split_checkpoint")
sys.path.insert(0, FIXTURES)

import make_pre_split_checkpoint as fixture  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(scope="module")
def expected():
  with open(os.path.join(OLD, "expected.json")) as f:
    return json.load(f)


def test_policy_predicts_what_the_old_code_predicted(expected):
  for name, proprio_dim in fixture.DATASETS.items():
    # The old code decoded freely (this 2-step model still emits text tokens, which
    # constrained decoding, the default since, would replace by action tokens).
    policy = vlax.Policy(os.path.join(OLD, "checkpoints"), dataset=name,
                         constrain_actions=False)
    for seed, want in zip((0, 1), expected["predictions"][name]):
      got = policy.predict_action(fixture.observation(seed, proprio_dim),
                                  expected["instruction"])
      np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=1e-6,
                                 err_msg=f"{name} seed {seed}")


def test_logits_equal_the_old_code(expected):
  model = vlax.load_pretrained(os.path.join(OLD, "checkpoints"))
  images, tokens, prefix_mask = fixture.model_inputs(model.config.vision.image_size)
  logits = np.asarray(model.logits(images, tokens, prefix_mask))
  np.testing.assert_allclose(logits[0, :, :fixture.LOGITS_SLICE], np.asarray(expected["logits"]),
                             rtol=1e-5, atol=1e-5)


def _train(workdir, *flags):
  cmd = [sys.executable, "-m", "vlax.cli", "train", "--config",
         os.path.join(REPO, "experiments", "debug.py"), "--workdir", str(workdir),
         *fixture.TRAIN_FLAGS, *flags]
  out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=str(workdir.parent))
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_resume_and_init_from_an_old_checkpoint(tmp_path):
  # Resume: the old run's workdir (checkpoint with its AdamW state + config.json), 2 more steps.
  run = tmp_path / "run"
  shutil.copytree(OLD, run, ignore=shutil.ignore_patterns("expected.json"))
  summary = _train(run, "--config.num_steps=4", "--config.checkpoint_every=4")
  assert summary["resumed_from"] == 2 and summary["step"] == 4, summary
  rows = [json.loads(l) for l in open(run / "metrics.jsonl")]
  assert rows and all(r["step"] > 2 and np.isfinite(r["loss"]) for r in rows), rows

  # init_from: a fresh run starting from the old weights (the fine-tuning path).
  fresh = tmp_path / "fresh"
  summary = _train(fresh, f"--config.init_from={os.path.join(OLD, 'checkpoints')}",
                   "--config.num_steps=1", "--config.checkpoint_every=1")
  assert summary["resumed_from"] is None and summary["step"] == 1, summary
  old = vlax.load_pretrained(os.path.join(OLD, "checkpoints")).params
  new = vlax.load_pretrained(str(fresh / "checkpoints")).params
  # One AdamW step away from the old weights (lr 1e-3-ish): close, and not the random init.
  a, b = old["llm"]["embedder"]["input_embedding"], new["llm"]["embedder"]["input_embedding"]
  assert np.abs(np.asarray(a) - np.asarray(b)).max() < 0.05
