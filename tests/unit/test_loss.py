"""Loss: target masking, the one-position shift, per-source / per-dataset sums."""

import jax
import jax.numpy as jnp
import numpy as np

from vlax.models.batch import Batch
from vlax.training import loss as loss_lib

import _train_utils as U


def _sums(logits, batch):
  return loss_lib.loss_sums(jnp.asarray(logits), Batch.from_dict(batch), 3)


def _numpy_sums(logits, batch, num_datasets):
  logits = np.asarray(logits, np.float64)
  b, l, _ = logits.shape
  lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
  out = {"loss": np.zeros(b), "count": np.zeros(b), "correct": np.zeros(b), "acount": np.zeros(b)}
  for i in range(b):
    for t in range(1, l):  # target t is predicted by logits[t - 1]
      if batch["loss_mask"][i, t]:
        tok = batch["tokens"][i, t]
        out["loss"][i] += lse[i, t - 1] - logits[i, t - 1, tok]
        out["count"][i] += 1
        if batch["action_token_mask"][i, t]:
          out["acount"][i] += 1
          out["correct"][i] += float(np.argmax(logits[i, t - 1]) == tok)
  return out


def test_sums_match_numpy_per_source_and_dataset():
  batch = U.make_batch(12, seed=3)
  logits = np.random.default_rng(0).normal(size=(12, U.SEQ_LEN, U.VOCAB)).astype(np.float32)
  # Make some action predictions right so accuracy is not trivially 0.
  logits[0, U.PREFIX_LEN - 1, batch["tokens"][0, U.PREFIX_LEN]] += 100.0
  sums = jax.device_get(_sums(logits, batch))
  ref = _numpy_sums(logits, batch, 3)
  np.testing.assert_allclose(sums["loss_sum"], ref["loss"].sum(), rtol=1e-5)
  assert sums["token_count"] == ref["count"].sum()
  assert sums["action_count"] == ref["acount"].sum()
  assert sums["action_correct"] == ref["correct"].sum() >= 1
  for seg, key, n in (("source", "source", 2), ("dataset", "dataset_index", 3)):
    for s in range(n):
      sel = batch[key] == s
      np.testing.assert_allclose(sums[f"{seg}/loss_sum"][s], ref["loss"][sel].sum(), rtol=1e-5)
      assert sums[f"{seg}/token_count"][s] == ref["count"][sel].sum()
      assert sums[f"{seg}/action_correct"][s] == ref["correct"][sel].sum()
  summary = loss_lib.summarize(sums, U.DATASET_NAMES)
  np.testing.assert_allclose(summary["loss"], ref["loss"].sum() / ref["count"].sum(), rtol=1e-5)
  web = batch["source"] == 1
  np.testing.assert_allclose(summary["loss/web"],
                             ref["loss"][web].sum() / ref["count"][web].sum(), rtol=1e-5)
  a = batch["dataset_index"] == 0
  np.testing.assert_allclose(summary["loss/toy_a"],
                             ref["loss"][a].sum() / ref["count"][a].sum(), rtol=1e-5)
  assert {"loss/robot", "loss/toy_b", "loss/toy_web", "accuracy/action"} <= set(summary)


def test_shift_and_masking():
  batch = U.make_batch(4, seed=1)
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(4, U.SEQ_LEN, U.VOCAB)).astype(np.float32)
  base = float(loss_lib.mean_loss(_sums(logits, batch)))
  # Logits at positions whose *next* token is not a target do not matter...
  not_used = ~batch["loss_mask"][:, 1:]
  changed = logits.copy()
  changed[:, :-1][not_used] += rng.normal(size=changed[:, :-1][not_used].shape) * 10
  changed[:, -1] += 7.0  # the last position predicts nothing
  same = float(loss_lib.mean_loss(_sums(changed, batch)))
  np.testing.assert_allclose(same, base, rtol=1e-6)
  # ...while the logit just before a target does.
  t = int(np.argmax(batch["loss_mask"][0]))
  bumped = logits.copy()
  bumped[0, t - 1, batch["tokens"][0, t]] += 5.0
  lower = float(loss_lib.mean_loss(_sums(bumped, batch)))
  assert lower < base
  # A perfect prediction at every target gives ~0 loss.
  perfect = np.full_like(logits, -50.0)
  for i in range(4):
    for j in range(1, U.SEQ_LEN):
      perfect[i, j - 1, batch["tokens"][i, j]] = 50.0
  sums = _sums(perfect, batch)
  assert float(loss_lib.mean_loss(sums)) < 1e-6
  assert float(sums["action_correct"]) == float(sums["action_count"]) > 0


def test_summarize_leaves_out_empty_segments():
  batch = U.make_batch(4, seed=2)
  batch["dataset_index"][:] = 0
  logits = jnp.zeros((4, U.SEQ_LEN, U.VOCAB))
  summary = loss_lib.summarize(jax.device_get(_sums(logits, batch)),
                               U.DATASET_NAMES)
  assert "loss/toy_a" in summary and "loss/toy_b" not in summary
  np.testing.assert_allclose(summary["loss"], np.log(U.VOCAB), rtol=1e-5)
