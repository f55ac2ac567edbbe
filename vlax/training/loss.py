"""Next-token cross-entropy on target tokens, with per-source / per-dataset breakdowns.

Logit at position i predicts token i+1, so the target at position i (`loss_mask[i]`) is
scored by logits[i-1]; `loss_mask[0]` can never be a target and is ignored.

Breakdowns are fixed-size arrays (segment sums over `source` and `dataset_index` with a
static number of segments), so the jitted step returns them without any host sync; they
are summed on device over a logging window and turned into ratios on the host by
`summarize` only when metrics are logged.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vlax.models.batch import Batch

SOURCE_NAMES = ("robot", "web")


def shifted_targets(logits: jax.Array, tokens: jax.Array, loss_mask: jax.Array,
                    action_token_mask: jax.Array | None = None):
  """Aligns logits[:, :-1] with tokens[:, 1:]; returns (logits, targets, mask, action_mask)."""
  logits = logits[:, :-1]
  targets = tokens[:, 1:]
  mask = loss_mask[:, 1:].astype(jnp.float32)
  amask = None
  if action_token_mask is not None:
    amask = (action_token_mask[:, 1:] & loss_mask[:, 1:]).astype(jnp.float32)
  return logits, targets, mask, amask


def token_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Per-token CE in float32, [B, T]."""
  logits = logits.astype(jnp.float32)
  logz = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return logz - target_logit


def loss_sums(logits: jax.Array, batch: Batch, num_datasets: int) -> dict[str, jax.Array]:
  """Sums (not means) of CE / target counts / action accuracy, total and per segment.

  Keys: loss_sum, token_count, action_correct, action_count, num_examples, and for
  each of those (but num_examples) `source/<key>` [2] and `dataset/<key>` [num_datasets].
  A batch without `source` / `dataset_index` counts as segment 0.
  """
  lg, targets, mask, amask = shifted_targets(
      logits, batch.inputs.tokens, batch.loss_mask, batch.action_token_mask)
  ce = token_cross_entropy(lg, targets) * mask
  if amask is None:
    amask = jnp.zeros_like(mask)
  correct = (jnp.argmax(lg, axis=-1) == targets).astype(jnp.float32) * amask
  per_example = {
      "loss_sum": ce.sum(-1),
      "token_count": mask.sum(-1),
      "action_correct": correct.sum(-1),
      "action_count": amask.sum(-1),
  }
  out = {k: v.sum() for k, v in per_example.items()}
  out["num_examples"] = jnp.asarray(lg.shape[0], jnp.float32)
  b = lg.shape[0]
  zeros = jnp.zeros((b,), jnp.int32)
  source = (zeros if batch.source is None else batch.source).astype(jnp.int32)
  dataset = (zeros if batch.dataset_index is None else batch.dataset_index).astype(jnp.int32)
  for k, v in per_example.items():
    out[f"source/{k}"] = jax.ops.segment_sum(v, source, num_segments=len(SOURCE_NAMES))
    out[f"dataset/{k}"] = jax.ops.segment_sum(v, dataset, num_segments=max(num_datasets, 1))
  return out


def mean_loss(sums: Mapping[str, jax.Array]) -> jax.Array:
  return sums["loss_sum"] / jnp.maximum(sums["token_count"], 1.0)


def _ratio(num, den) -> float | None:
  return float(num) / float(den) if den > 0 else None


def summarize(sums: Mapping[str, np.ndarray], dataset_names: Sequence[str] = (),
              prefix: str = "") -> dict[str, float]:
  """Host side: accumulated sums -> loss, loss/<source>, loss/<dataset>, accuracy/action...

  Segments with no target tokens in the window are left out (not reported as 0).
  """
  s = {k: np.asarray(v) for k, v in sums.items()}
  out: dict[str, float] = {}

  def put(name, value):
    if value is not None:
      out[prefix + name] = value

  put("loss", _ratio(s["loss_sum"], s["token_count"]))
  put("accuracy/action", _ratio(s["action_correct"], s["action_count"]))
  for i, name in enumerate(SOURCE_NAMES):
    put(f"loss/{name}", _ratio(s["source/loss_sum"][i], s["source/token_count"][i]))
    put(f"accuracy/action/{name}",
        _ratio(s["source/action_correct"][i], s["source/action_count"][i]))
  n = s["dataset/loss_sum"].shape[0]
  names = list(dataset_names) + [f"dataset_{i}" for i in range(len(dataset_names), n)]
  for i in range(n):
    put(f"loss/{names[i]}", _ratio(s["dataset/loss_sum"][i], s["dataset/token_count"][i]))
    put(f"accuracy/action/{names[i]}",
        _ratio(s["dataset/action_correct"][i], s["dataset/action_count"][i]))
  return out
