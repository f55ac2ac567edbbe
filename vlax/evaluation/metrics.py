"""Streaming offline action-prediction metrics, per dataset and overall.

Held-out trajectories are evaluated batch by batch, so the accumulator keeps only sums
(per dataset, a [chunk_len, action_dim] matrix of each error) and a small buffer of a few
episodes' first-chunk-step actions for the time-series plots: memory does not grow with
the number of batches.

Conventions: actions arrive padded to the batch's max action dim A, with `mask` False on
padded dims and on chunk steps past the episode end. Dims at or beyond a dataset's own
action dim are always excluded, whatever the mask says. Gripper dims are binarized at
`gripper_threshold` (0.5) in robot units, 1 = open.
"""

from __future__ import annotations

import collections
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from vlax.errors import VlaxError

_ERRORS = ("l1_norm", "mse_norm", "l1_robot", "mse_robot")


def _ratio(num: float, den: float) -> float | None:
  """num / den as a float, None (JSON null) when nothing was counted."""
  return float(num) / float(den) if den > 0 else None


def _ratios(num: np.ndarray, den: np.ndarray) -> list[float | None]:
  return [_ratio(n, d) for n, d in zip(np.ravel(num), np.ravel(den))]


def _episode_key(value: Any) -> str:
  """Episode ids may be ints, strings or bytes (tf.string): one hashable, printable key."""
  if isinstance(value, np.ndarray):
    value = value.item()
  if isinstance(value, np.generic):
    value = value.item()
  if isinstance(value, bytes):
    value = value.decode("utf-8", errors="replace")
  return str(value)


def token_accuracy_counts(pred_tokens: np.ndarray, target_tokens: np.ndarray,
                          mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-example (correct, total) action-token counts, the `update` token inputs.

  pred_tokens / target_tokens: int [B, L] (e.g. argmax of teacher-forced logits shifted to
  the target positions, or decoded ids aligned with the targets); mask: bool [B, L], True
  at action-token positions (the batch's `action_token_mask`).
  """
  pred_tokens, target_tokens = np.asarray(pred_tokens), np.asarray(target_tokens)
  mask = np.asarray(mask, dtype=bool)
  if not pred_tokens.shape == target_tokens.shape == mask.shape:
    raise VlaxError(
        f"token_accuracy_counts: pred_tokens {pred_tokens.shape}, target_tokens "
        f"{target_tokens.shape} and mask {mask.shape} must have the same shape")
  correct = np.sum((pred_tokens == target_tokens) & mask, axis=-1).astype(np.int64)
  return correct, np.sum(mask, axis=-1).astype(np.int64)


class _DatasetSums:
  """Running sums of one dataset, at its own action dim."""

  def __init__(self, chunk_len: int, action_dim: int, num_gripper: int):
    shape = (chunk_len, action_dim)
    self.errors = {k: np.zeros(shape, np.float64) for k in _ERRORS}
    self.count = np.zeros(shape, np.int64)
    self.gripper_correct = np.zeros((chunk_len, num_gripper), np.int64)
    self.gripper_total = np.zeros((chunk_len, num_gripper), np.int64)
    self.token_correct = 0
    self.token_total = 0
    self.num_examples = 0
    # episode key -> {"t": [], "pred_norm": [], ...}; insertion-ordered, bounded.
    self.episodes: collections.OrderedDict[str, dict[str, list]] = collections.OrderedDict()


class ActionMetrics:
  """Accumulates action-prediction metrics over batches; `result()` gives the report dict.

  Args:
    dataset_names: the mixture's datasets, in `dataset_index` order.
    action_dims: each dataset's real action dim.
    chunk_len: K, the action chunk length of every example.
    gripper_dims: per dataset, the indices of its gripper dims (missing = none).
    dimension_names: optional per-dataset labels of the action dims (for the plots).
    max_plot_episodes: episodes per dataset kept for the time-series plots.
    max_plot_steps: steps kept per buffered episode.
    gripper_threshold: gripper binarization threshold, in robot units.
  """

  def __init__(self, dataset_names: Sequence[str], action_dims: Mapping[str, int],
               chunk_len: int, gripper_dims: Mapping[str, Sequence[int]] | None = None,
               dimension_names: Mapping[str, Sequence[str]] | None = None,
               max_plot_episodes: int = 3, max_plot_steps: int = 1000,
               gripper_threshold: float = 0.5):
    self.dataset_names = [str(n) for n in dataset_names]
    if not self.dataset_names:
      raise VlaxError("ActionMetrics: dataset_names is empty")
    if len(set(self.dataset_names)) != len(self.dataset_names):
      raise VlaxError(f"ActionMetrics: duplicate dataset names in {self.dataset_names}")
    if "overall" in self.dataset_names:
      raise VlaxError("ActionMetrics: 'overall' is reserved and cannot name a dataset")
    if int(chunk_len) < 1:
      raise VlaxError(f"ActionMetrics: chunk_len must be >= 1, got {chunk_len}")
    self.chunk_len = int(chunk_len)
    gripper_dims = dict(gripper_dims or {})
    dimension_names = dict(dimension_names or {})
    for what, mapping in (("action_dims", action_dims), ("gripper_dims", gripper_dims),
                          ("dimension_names", dimension_names)):
      unknown = sorted(set(mapping) - set(self.dataset_names))
      if unknown:
        raise VlaxError(f"ActionMetrics: {what} names unknown datasets {unknown}; "
                        f"datasets are {self.dataset_names}")
    self.action_dims, self.gripper_dims, self.dimension_names = {}, {}, {}
    for name in self.dataset_names:
      if name not in action_dims:
        raise VlaxError(f"ActionMetrics: action_dims has no entry for dataset {name!r}")
      dim = int(action_dims[name])
      if dim < 1:
        raise VlaxError(f"ActionMetrics: dataset {name!r} has action dim {dim} (< 1)")
      grip = [int(g) for g in gripper_dims.get(name, ())]
      bad = [g for g in grip if not 0 <= g < dim]
      if bad or len(set(grip)) != len(grip):
        raise VlaxError(f"ActionMetrics: dataset {name!r} gripper_dims {grip} must be "
                        f"distinct indices in [0, {dim})")
      labels = [str(s) for s in dimension_names.get(name, [f"a{i}" for i in range(dim)])]
      if len(labels) != dim:
        raise VlaxError(f"ActionMetrics: dataset {name!r} has {len(labels)} dimension_names "
                        f"for action dim {dim}")
      self.action_dims[name], self.gripper_dims[name] = dim, grip
      self.dimension_names[name] = labels
    self.max_plot_episodes = int(max_plot_episodes)
    self.max_plot_steps = int(max_plot_steps)
    self.gripper_threshold = float(gripper_threshold)
    self.reset()

  def reset(self) -> None:
    """Forgets everything accumulated (e.g. between evals during training)."""
    self._sums = [
        _DatasetSums(self.chunk_len, self.action_dims[n], len(self.gripper_dims[n]))
        for n in self.dataset_names]

  # ---------------------------------------------------------------- update

  def _check(self, name: str, x: Any, shape: tuple[int, ...], dtype=None) -> np.ndarray:
    x = np.asarray(x) if dtype is None else np.asarray(x, dtype=dtype)
    if x.shape != shape:
      raise VlaxError(f"ActionMetrics.update: {name} has shape {x.shape}, expected {shape}")
    return x

  def update(self, dataset_index: Any, pred_norm: Any, true_norm: Any, pred_robot: Any,
             true_robot: Any, mask: Any, token_correct: Any, token_total: Any,
             episode_id: Any = None, timestep: Any = None) -> None:
    """Adds one batch (numpy or jax arrays; see the class docstring for shapes).

    dataset_index int [B]; pred/true_norm, pred/true_robot float [B, K, A]; mask bool
    [B, K, A]; token_correct / token_total int [B] (action tokens right / scored);
    episode_id [B] and timestep [B] (optional) feed the time-series buffer; without a
    timestep the arrival order within an episode is used.
    """
    pred_norm = np.asarray(pred_norm, dtype=np.float64)
    if pred_norm.ndim != 3:
      raise VlaxError(f"ActionMetrics.update: pred_norm must be [B, K, A], got shape "
                      f"{pred_norm.shape}")
    b, k, a = pred_norm.shape
    if k != self.chunk_len:
      raise VlaxError(f"ActionMetrics.update: chunk length {k} in pred_norm, but the "
                      f"metrics were built for chunk_len={self.chunk_len}")
    ds = self._check("dataset_index", dataset_index, (b,)).astype(np.int64)
    true_norm = self._check("true_norm", true_norm, (b, k, a), np.float64)
    pred_robot = self._check("pred_robot", pred_robot, (b, k, a), np.float64)
    true_robot = self._check("true_robot", true_robot, (b, k, a), np.float64)
    mask = self._check("mask", mask, (b, k, a), bool)
    tok_c = self._check("token_correct", token_correct, (b,)).astype(np.int64)
    tok_t = self._check("token_total", token_total, (b,)).astype(np.int64)
    if np.any(tok_c < 0) or np.any(tok_c > tok_t):
      raise VlaxError("ActionMetrics.update: token_correct must be in [0, token_total]")
    if episode_id is not None:
      episode_id = np.asarray(episode_id)
      if episode_id.shape != (b,):
        raise VlaxError(f"ActionMetrics.update: episode_id has shape {episode_id.shape}, "
                        f"expected {(b,)}")
    if timestep is not None:
      timestep = self._check("timestep", timestep, (b,))
    bad = (ds < 0) | (ds >= len(self.dataset_names))
    if np.any(bad):
      raise VlaxError(f"ActionMetrics.update: dataset_index {int(ds[bad][0])} is out of "
                      f"range for {len(self.dataset_names)} datasets {self.dataset_names}")

    for i in np.unique(ds):
      name, sums = self.dataset_names[i], self._sums[i]
      dim = self.action_dims[name]
      rows = np.nonzero(ds == i)[0]
      m = mask[rows]
      if a < dim:
        if np.any(m):
          raise VlaxError(f"ActionMetrics.update: dataset {name!r} has action dim {dim} "
                          f"but the batch has only {a} action dims")
        m = np.pad(m, ((0, 0), (0, 0), (0, dim - a)))
      m = m[..., :dim]
      sl = (rows, slice(None), slice(0, min(a, dim)))
      pad = ((0, 0), (0, 0), (0, max(0, dim - a)))
      pn, tn, pr, tr = (np.pad(x[sl], pad) for x in (pred_norm, true_norm, pred_robot,
                                                     true_robot))
      for label, x in (("pred_norm", pn), ("true_norm", tn), ("pred_robot", pr),
                       ("true_robot", tr)):
        if not np.all(np.isfinite(x[m])):
          raise VlaxError(f"ActionMetrics.update: {label} has non-finite values at valid "
                          f"positions of dataset {name!r}")
      dn, dr = np.where(m, pn - tn, 0.0), np.where(m, pr - tr, 0.0)
      sums.errors["l1_norm"] += np.abs(dn).sum(0)
      sums.errors["mse_norm"] += np.square(dn).sum(0)
      sums.errors["l1_robot"] += np.abs(dr).sum(0)
      sums.errors["mse_robot"] += np.square(dr).sum(0)
      sums.count += m.sum(0)
      grip = self.gripper_dims[name]
      if grip:
        gm = m[..., grip]
        same = (pr[..., grip] > self.gripper_threshold) == (tr[..., grip] >
                                                            self.gripper_threshold)
        sums.gripper_correct += (same & gm).sum(0)
        sums.gripper_total += gm.sum(0)
      sums.token_correct += int(tok_c[rows].sum())
      sums.token_total += int(tok_t[rows].sum())
      sums.num_examples += len(rows)
      if episode_id is not None and self.max_plot_episodes > 0:
        self._buffer(sums, rows, episode_id, timestep, pn, tn, pr, tr, m)

  def _buffer(self, sums: _DatasetSums, rows: np.ndarray, episode_id: np.ndarray,
              timestep: np.ndarray | None, pn, tn, pr, tr, m) -> None:
    """Keeps the first chunk step of up to max_plot_episodes episodes (bounded)."""
    for j, r in enumerate(rows):
      if not np.any(m[j, 0]):
        continue
      key = _episode_key(episode_id[r])
      ep = sums.episodes.get(key)
      if ep is None:
        if len(sums.episodes) >= self.max_plot_episodes:
          continue
        ep = sums.episodes[key] = {f: [] for f in ("t", "pred_norm", "true_norm",
                                                   "pred_robot", "true_robot", "mask")}
      if len(ep["t"]) >= self.max_plot_steps:
        continue
      ep["t"].append(int(timestep[r]) if timestep is not None else len(ep["t"]))
      for f, x in (("pred_norm", pn), ("true_norm", tn), ("pred_robot", pr),
                   ("true_robot", tr), ("mask", m)):
        ep[f].append(np.array(x[j, 0]))

  # ---------------------------------------------------------------- results

  def _summary(self, err: dict[str, np.ndarray], count: np.ndarray) -> dict[str, Any]:
    out: dict[str, Any] = {k: _ratio(err[k].sum(), count.sum()) for k in _ERRORS}
    out["rmse_norm"] = None if out["mse_norm"] is None else float(np.sqrt(out["mse_norm"]))
    out["rmse_robot"] = None if out["mse_robot"] is None else float(np.sqrt(out["mse_robot"]))
    return out

  def _dataset_result(self, name: str, sums: _DatasetSums) -> dict[str, Any]:
    count = sums.count
    res: dict[str, Any] = {
        "num_examples": sums.num_examples,
        "num_action_values": int(count.sum()),
        "num_action_tokens": sums.token_total,
        "token_accuracy": _ratio(sums.token_correct, sums.token_total),
        "action_dim": self.action_dims[name],
        "dimension_names": list(self.dimension_names[name]),
        "gripper_dims": list(self.gripper_dims[name]),
    }
    res.update(self._summary(sums.errors, count))
    res["num_gripper_values"] = int(sums.gripper_total.sum())
    res["gripper_accuracy"] = _ratio(sums.gripper_correct.sum(), sums.gripper_total.sum())
    per_dim = {k: _ratios(sums.errors[k].sum(0), count.sum(0)) for k in _ERRORS}
    per_dim["count"] = [int(c) for c in count.sum(0)]
    per_dim["gripper_accuracy"] = [None] * self.action_dims[name]
    for gi, d in enumerate(self.gripper_dims[name]):
      per_dim["gripper_accuracy"][d] = _ratio(sums.gripper_correct[:, gi].sum(),
                                              sums.gripper_total[:, gi].sum())
    res["per_dimension"] = per_dim
    per_pos = {k: _ratios(sums.errors[k].sum(1), count.sum(1)) for k in _ERRORS}
    per_pos["count"] = [int(c) for c in count.sum(1)]
    per_pos["gripper_accuracy"] = _ratios(sums.gripper_correct.sum(1),
                                          sums.gripper_total.sum(1))
    res["per_chunk_position"] = per_pos
    return res

  def result(self) -> dict[str, Any]:
    """The JSON-safe metrics dict (None where nothing was counted).

    {"chunk_len", "datasets": {name: {...}}, "overall": {...}}; each dataset has counts,
    token_accuracy, l1/mse/rmse in normalized and robot units, gripper_accuracy,
    per_dimension and per_chunk_position lists. "overall" pools all datasets' values
    (micro average) and has per_chunk_position but no per_dimension (dims of different
    robots do not mean the same thing).
    """
    datasets = {n: self._dataset_result(n, s)
                for n, s in zip(self.dataset_names, self._sums)}
    k = self.chunk_len
    pos_err = {e: np.zeros(k) for e in _ERRORS}
    pos_count = np.zeros(k, np.int64)
    g_corr, g_tot = np.zeros(k, np.int64), np.zeros(k, np.int64)
    tok_c = tok_t = n_ex = 0
    for s in self._sums:
      for e in _ERRORS:
        pos_err[e] += s.errors[e].sum(1)
      pos_count += s.count.sum(1)
      g_corr += s.gripper_correct.sum(1)
      g_tot += s.gripper_total.sum(1)
      tok_c += s.token_correct
      tok_t += s.token_total
      n_ex += s.num_examples
    overall: dict[str, Any] = {
        "num_examples": n_ex,
        "num_action_values": int(pos_count.sum()),
        "num_action_tokens": tok_t,
        "token_accuracy": _ratio(tok_c, tok_t),
    }
    overall.update(self._summary(pos_err, pos_count))
    overall["num_gripper_values"] = int(g_tot.sum())
    overall["gripper_accuracy"] = _ratio(g_corr.sum(), g_tot.sum())
    seen = [d for d in datasets.values() if d["num_examples"]]
    overall["num_datasets"] = len(seen)
    overall["dataset_mean_l1_norm"] = (
        float(np.mean([d["l1_norm"] for d in seen if d["l1_norm"] is not None]))
        if any(d["l1_norm"] is not None for d in seen) else None)
    per_pos = {e: _ratios(pos_err[e], pos_count) for e in _ERRORS}
    per_pos["count"] = [int(c) for c in pos_count]
    per_pos["gripper_accuracy"] = _ratios(g_corr, g_tot)
    overall["per_chunk_position"] = per_pos
    return {"chunk_len": k, "gripper_threshold": self.gripper_threshold,
            "datasets": datasets, "overall": overall}

  def plot_data(self) -> dict[str, Any]:
    """The buffered episodes for `plots.plot_timeseries`, sorted by timestep.

    {name: {"action_dim", "dimension_names", "gripper_dims", "episodes": [{"episode_id",
    "timestep" int [T], "pred_norm"/"true_norm"/"pred_robot"/"true_robot" float [T, A],
    "mask" bool [T, A]}]}}
    """
    out = {}
    for name, sums in zip(self.dataset_names, self._sums):
      episodes = []
      for key, ep in sums.episodes.items():
        t = np.asarray(ep["t"], np.int64)
        order = np.argsort(t, kind="stable")
        item: dict[str, Any] = {"episode_id": key, "timestep": t[order]}
        for f in ("pred_norm", "true_norm", "pred_robot", "true_robot", "mask"):
          item[f] = np.stack(ep[f])[order]
        episodes.append(item)
      out[name] = {"action_dim": self.action_dims[name],
                   "dimension_names": list(self.dimension_names[name]),
                   "gripper_dims": list(self.gripper_dims[name]), "episodes": episodes}
    return out


def summary_scalars(result: Mapping[str, Any], prefix: str = "eval") -> dict[str, float]:
  """Flat scalar view of `result` for metrics.jsonl during training.

  Keys: f"{prefix}/{dataset or 'overall'}/{metric}"; metrics that were not counted are
  left out.
  """
  keys = ("token_accuracy", "l1_norm", "mse_norm", "l1_robot", "mse_robot",
          "gripper_accuracy")
  out = {}
  groups: Iterable[tuple[str, Mapping[str, Any]]] = [
      *result["datasets"].items(), ("overall", result["overall"])]
  for name, res in groups:
    for k in keys:
      if res.get(k) is not None:
        out[f"{prefix}/{name}/{k}"] = float(res[k])
  return out
