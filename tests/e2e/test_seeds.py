"""Data seeds at any step and for any seed (vlax.data.seeds).

Seeds used to be products that overflowed int64 once the resume step passed ~1165 (or
the seed was large), and TensorFlow then refused them: resumes at late steps crashed.
"""

import os
import shutil

import numpy as np
import pytest

from vlax.data import cotrain
from vlax.data import seeds

from test_data_resume import data_config

BIG_SEED = 2**31 - 1
LATE_STEP = 12_000


def test_folds_stay_int64_and_keep_small_values():
  for base in (0, 1, BIG_SEED, 2**62 + 5, 2**63 - 1, 10**30):
    for salt in (0, 3, 2**40):
      assert 0 <= seeds.fold(base, salt) < 2**63
  assert 0 <= seeds.step_seed(2**63 - 1, 10**9) < 2**63
  # Values that fitted before are unchanged (earlier runs replay bit for bit).
  assert seeds.fold(5, 2) == 5 * 1_000_003 + 2
  assert seeds.step_seed(7, 100) == 7 + 7919 * 100
  # Large, distinct bases stay distinct for the same salt.
  bases = [2**62 + k for k in range(1000)]
  assert len({seeds.fold(b, 1) for b in bases}) == len(bases)


def _data_config(seed):
  config = data_config(augment=True)
  config.seed = seed
  return config


def test_pipeline_builds_at_a_late_step_with_a_large_seed(tmp_path):
  """The co-training pipeline (robot + web, augmentation on) seeded for a resume at step
  12,000 with a seed near 2**31: per-element image seeds fold twice more below it."""
  config = _data_config(BIG_SEED)
  batches = []
  for start_step in (0, LATE_STEP):
    it, _ = cotrain.make_data_iterator(config, process_index=1, process_count=2,
                                       workdir=str(tmp_path), start_step=start_step)
    batches.append(next(it))
  assert all(np.isfinite(b["images"]).all() for b in batches)
  # A resume is seeded with its step: a fresh order, not a replay of step 0.
  assert not np.array_equal(batches[0]["images"], batches[1]["images"])


def _set_saved_step(item_dir, step):
  """Rewrites a checkpoint's train_state item ({'step', 'rng'}) to say `step`."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  with ocp.StandardCheckpointer() as ckptr:
    saved = ckptr.restore(item_dir)
    shutil.rmtree(item_dir)
    ckptr.save(item_dir, {**saved, "step": np.asarray(step, np.asarray(saved["step"]).dtype)})


@pytest.mark.slow
def test_train_resumes_past_step_10000_with_a_large_seed(tmp_path):
  """`vlax train`'s data callables through the trainer: a fresh run with seed 2**31 - 1,
  then a resume seeded for step 12,000 (the checkpoint is relabelled as that step and the
  data state dropped, so the pipeline is re-seeded with the resume step)."""
  from vlax.cli import _data_fns  # pylint: disable=import-outside-toplevel
  from vlax.config import load_config  # pylint: disable=import-outside-toplevel
  from vlax.training.trainer import train  # pylint: disable=import-outside-toplevel
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  config = load_config(os.path.join(root, "experiments", "debug.py"), [
      f"seed={BIG_SEED}", f"num_steps={LATE_STEP + 2}", "batch_size=8",
      "checkpoint_every=2", "eval_every=0", "log_every=2", "model.preset=tiny",
      "data.image_size=32", "data.toy_episodes=4", "data.toy_episode_len=6",
      "data.shuffle_buffer=20", "data.num_bins=16", "data.max_len=48",
      "data.web_shuffle_buffer=8", "logging.tensorboard=False", "logging.progress=False",
      "async_checkpointing=False"])
  config.data.web_sources = ({"kind": "toy", "num_examples": 16},)
  workdir = str(tmp_path / "run")
  train_fn, _ = _data_fns(workdir)

  first_config = config.copy_and_resolve_references()
  first_config.num_steps = 2
  assert train(first_config, workdir, data_iterator_fn=train_fn)["step"] == 2
  ckpts = os.path.join(workdir, "checkpoints")
  os.rename(os.path.join(ckpts, "2"), os.path.join(ckpts, str(LATE_STEP)))
  _set_saved_step(os.path.join(ckpts, str(LATE_STEP), "train_state"), LATE_STEP)
  shutil.rmtree(os.path.join(workdir, "data_state"), ignore_errors=True)
  summary = train(config, workdir, data_iterator_fn=train_fn)
  assert summary["resumed_from"] == LATE_STEP and summary["step"] == LATE_STEP + 2
