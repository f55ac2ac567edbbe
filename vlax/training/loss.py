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

from vlax.errors import VlaxError
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


def smoothing_window(sigma: float) -> np.ndarray:
  """Offsets and weights of Gaussian label smoothing over bins: ([2W+1] int, [2W+1])
  with W = ceil(3 sigma); the weights are unnormalized (renormalized in range)."""
  w = int(np.ceil(3.0 * sigma))
  offsets = np.arange(-w, w + 1)
  return offsets, np.exp(-0.5 * (offsets / sigma) ** 2).astype(np.float32)


def smoothed_targets(targets: jax.Array, sigma: float, action_range: tuple[int, int]
                     ) -> tuple[jax.Array, jax.Array]:
  """The Gaussian soft target of each (action) target id: (ids [..., 2W+1], weights
  [..., 2W+1] summing to 1). Bins outside `action_range` [start, end) get no weight, so
  the mass stays on action ids (renormalized at the ends of the range)."""
  offsets, weights = smoothing_window(sigma)
  ids = targets[..., None] + jnp.asarray(offsets)
  start, end = action_range
  inside = (ids >= start) & (ids < end)
  wts = jnp.where(inside, jnp.asarray(weights), 0.0)
  wts = wts / jnp.maximum(wts.sum(-1, keepdims=True), 1e-12)
  return jnp.clip(ids, start, end - 1), wts


def smoothed_cross_entropy(logits: jax.Array, targets: jax.Array, sigma: float,
                           action_range: tuple[int, int]) -> jax.Array:
  """Per-token CE against the Gaussian soft target over neighbouring action bins, [B, T].

  Only the 2W+1 neighbours are gathered (never a [B, T, vocab] target). Ordinal bins are
  why this helps: a neighbouring bin is a near-miss, not an unrelated token.
  """
  logits = logits.astype(jnp.float32)
  logz = jax.nn.logsumexp(logits, axis=-1)
  ids, wts = smoothed_targets(targets, sigma, action_range)
  return logz - (jnp.take_along_axis(logits, ids, axis=-1) * wts).sum(-1)


def smoothing_action_range(action_tokenizer: Mapping | None) -> tuple[int, int]:
  """[start, end) of the action bins' ids in the model vocabulary, from a checkpoint's /
  the data's `action_tokenizer` metadata; a VlaxError when the ids are not ordinal bins."""
  kind = (action_tokenizer or {}).get("type")
  if kind != "bins" or "vocab" not in action_tokenizer:
    raise VlaxError(f"config.loss.action_label_smoothing needs ordinal action bins "
                    f"(data.action_tokenizer 'bins' or 'quantile'), not {kind!r}: FAST "
                    f"tokens are BPE merges with no neighbours to smooth over")
  v = action_tokenizer["vocab"]
  start, size = int(v["start"]), int(v["size"])
  nb = int(action_tokenizer["num_bins"])
  end = start + size
  return (end - nb, end) if v.get("reverse") else (start, start + nb)


def loss_sums(logits: jax.Array, batch: Batch, num_datasets: int, *,
              label_smoothing: float = 0.0,
              action_range: tuple[int, int] | None = None) -> dict[str, jax.Array]:
  """Sums (not means) of CE / target counts / action accuracy, total and per segment.

  Keys: loss_sum, token_count, action_correct, action_count, num_examples, and for
  each of those (but num_examples) `source/<key>` [2] and `dataset/<key>` [num_datasets].
  A batch without `source` / `dataset_index` counts as segment 0.
  label_smoothing > 0 (the training loss only): action tokens (action_token_mask) are
  scored against a Gaussian of that many bins' sigma over the action ids
  `action_range` = [start, end) of the vocabulary; every other token keeps plain CE.
  """
  lg, targets, mask, amask = shifted_targets(
      logits, batch.inputs.tokens, batch.loss_mask, batch.action_token_mask)
  ce = token_cross_entropy(lg, targets)
  if label_smoothing > 0 and amask is not None:
    if action_range is None:
      raise ValueError("label_smoothing needs the action_range of the vocabulary")
    soft = smoothed_cross_entropy(lg, targets, label_smoothing, action_range)
    ce = jnp.where(amask > 0, soft, ce)
  ce = ce * mask
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
