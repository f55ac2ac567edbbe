"""Vision probe: does the trained vision tower see the object? (`vlax vision-probe`)

A policy can succeed or fail for reasons unrelated to its cameras; this asks the encoder
directly. The checkpoint's SigLIP tower alone encodes Meta-World demo frames (one
mean-pooled feature vector per camera), and a ridge regression (numpy, closed form) maps
the features to positions in the full simulator state: the object (full_state[4:7]), the
goal (full_state[36:39]), as a sanity check the hand (full_state[0:3]), and the object
on the first frame of each episode alone (`object_pos_t0`: before the hand, which the
expert steers to the object and which moves it, can give the answer away). The probe is
fitted on the frames of some demo episodes (the regularisation strength chosen on a
split of those episodes) and scored by R^2 on held-out episodes, i.e. on layouts it has
not seen. The same probe on a randomly initialised tower of the same architecture is the
baseline: the trained tower should beat it clearly if training taught it where things are.

Reads the RLDS demos with TensorFlow (never in a process that renders with MuJoCo).
Writes OUT/report.json ({format, tasks: {T: {trained|random: {features: {target: {r2,
r2_per_dim, alpha}}}}}, summary, metadata}).
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vlax.checkpoints import weights as weights_lib
from vlax.data.oxe import metaworld as mw_names
from vlax.data.oxe.registry import get_spec
from vlax.errors import VlaxError
from vlax.models.config import VLAConfig
from vlax.models.siglip import SigLIP

REPORT_FORMAT = "vlax-vision-probe/1"
# Slices of Meta-World's 39-D observation (hand xyz, gripper, object xyz + quat, second
# object, the previous frame of those 18, goal xyz).
TARGETS = {"object_pos": slice(4, 7), "goal_pos": slice(36, 39), "hand_pos": slice(0, 3)}
# The object position on the first frame of each episode only: the hand is still at its
# start pose and has not touched the object, so the hand (which the expert steers towards
# the object, and which moves it) cannot stand in for seeing the object.
START_TARGET = "object_pos_t0"
ALPHAS = tuple(10.0 ** np.arange(-3, 5))


# --------------------------------------------------------------------------- ridge


def ridge_fit(x: np.ndarray, y: np.ndarray, alpha: float
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Ridge on standardised features: (W [D, T], x mean, x scale, y mean). Closed form in
  the primal (D <= N) or dual (D > N), whichever system is smaller."""
  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.float64)
  mu, sd = x.mean(0), x.std(0)
  sd = np.where(sd > 1e-8, sd, 1.0)
  z = (x - mu) / sd
  ym = y.mean(0)
  yc = y - ym
  n, d = z.shape
  if d <= n:
    w = np.linalg.solve(z.T @ z + alpha * np.eye(d), z.T @ yc)
  else:
    w = z.T @ np.linalg.solve(z @ z.T + alpha * np.eye(n), yc)
  return w, mu, sd, ym


def ridge_predict(model: tuple[np.ndarray, ...], x: np.ndarray) -> np.ndarray:
  w, mu, sd, ym = model
  return ((np.asarray(x, np.float64) - mu) / sd) @ w + ym


def r2_score(y: np.ndarray, pred: np.ndarray) -> tuple[float, list[float]]:
  """(R^2 over all dims together = 1 - SS_res / SS_tot, R^2 per dim). A dim that does not
  vary in y gets nan (and counts for nothing in the total)."""
  y, pred = np.asarray(y, np.float64), np.asarray(pred, np.float64)
  if y.ndim == 1:
    y, pred = y[:, None], pred[:, None]
  res = ((y - pred) ** 2).sum(0)
  tot = ((y - y.mean(0)) ** 2).sum(0)
  per = [float(1 - r / t) if t > 1e-12 else float("nan") for r, t in zip(res, tot)]
  keep = tot > 1e-12
  total = float(1 - res[keep].sum() / tot[keep].sum()) if keep.any() else float("nan")
  return total, per


def split_episodes(episode_ids: np.ndarray, fraction: float, seed: int
                   ) -> tuple[np.ndarray, np.ndarray]:
  """Boolean masks (first, second) over frames; `fraction` of the episodes (at least
  one) go to the second part, chosen at random with `seed`."""
  eps = np.unique(episode_ids)
  if len(eps) < 2:
    raise VlaxError(f"the probe needs at least 2 episodes to hold some out, got {len(eps)}")
  k = min(len(eps) - 1, max(1, int(round(fraction * len(eps)))))
  held = np.random.default_rng(seed).choice(eps, size=k, replace=False)
  second = np.isin(episode_ids, held)
  return ~second, second


def probe(features: np.ndarray, targets: np.ndarray, episode_ids: np.ndarray, *,
          heldout_fraction: float = 0.2, val_fraction: float = 0.25, seed: int = 0,
          alphas: Sequence[float] = ALPHAS) -> dict[str, Any]:
  """Linear probe features [N, D] -> targets [N, T], scored on held-out episodes.

  alpha: the best validation R^2 on a split of the training episodes; the probe is then
  refitted on all training episodes with it.
  """
  features = np.asarray(features, np.float64)
  targets = np.asarray(targets, np.float64)
  episode_ids = np.asarray(episode_ids)
  if not (len(features) == len(targets) == len(episode_ids)):
    raise VlaxError(f"probe: {len(features)} feature rows, {len(targets)} targets and "
                    f"{len(episode_ids)} episode ids")
  train, test = split_episodes(episode_ids, heldout_fraction, seed)
  fit, val = split_episodes(episode_ids[train], val_fraction, seed + 1)
  xt, yt = features[train], targets[train]
  scores = {float(a): r2_score(yt[val], ridge_predict(ridge_fit(xt[fit], yt[fit], a),
                                                      xt[val]))[0] for a in alphas}
  alpha = max(scores, key=lambda a: (np.nan_to_num(scores[a], nan=-np.inf), a))
  r2, per = r2_score(targets[test], ridge_predict(ridge_fit(xt, yt, alpha),
                                                  features[test]))
  return {"r2": r2, "r2_per_dim": per, "alpha": alpha, "val_r2": scores[alpha],
          "train_frames": int(train.sum()), "test_frames": int(test.sum()),
          "test_episodes": int(len(np.unique(episode_ids[test])))}


# --------------------------------------------------------------------------- the tower


def vision_tower(config: VLAConfig) -> SigLIP:
  """The VLA's image encoder alone (params: the `img` subtree of the VLA's)."""
  return SigLIP(config.vision, config.llm.width, jnp.float32, jnp.float32)


@functools.lru_cache(maxsize=4)
def _tower_fns(config_json: str) -> tuple[Callable, Callable]:
  """(jitted init(key), jitted features(params, uint8-valued float images [B, h, w, 3]))
  of one tower config: compiled once, shared by the trained and the random tower."""
  config = VLAConfig.from_dict(json.loads(config_json))
  tower = vision_tower(config)
  size = config.vision.image_size

  def init(key):
    x = jnp.zeros((1, 1, size, size, 3), jnp.float32)
    return nn.unbox(tower.init(key, x)["params"])

  def features(p, x):
    if x.shape[1:3] != (size, size):  # as the policy resizes (`policy.resize_image`)
      x = jax.image.resize(x, (x.shape[0], size, size, 3), method="linear", antialias=True)
      x = jnp.clip(jnp.round(x), 0, 255)
    x = x / 127.5 - 1.0
    return tower.apply({"params": p}, x[:, None]).mean(axis=1)

  return jax.jit(init), jax.jit(features)


def _key(config: VLAConfig) -> str:
  return json.dumps(config.to_dict(), sort_keys=True)


def random_vision_params(config: VLAConfig, seed: int = 0) -> Any:
  """A freshly initialised tower of the same architecture (the probe's baseline)."""
  return _tower_fns(_key(config))[0](jax.random.PRNGKey(seed))


def make_encoder(config: VLAConfig, params: Any, batch_size: int = 64
                 ) -> Callable[[np.ndarray], np.ndarray]:
  """uint8 images [N, h, w, 3] -> float [N, width]: the tower's tokens mean-pooled over
  patches. Images of another size are resized as the policy does (antialiased bilinear,
  rounded to uint8: `vlax.inference.policy.resize_image`), a batch at a time."""
  apply = _tower_fns(_key(config))[1]

  def encode(images: np.ndarray) -> np.ndarray:
    out = []
    for i in range(0, len(images), batch_size):
      x = np.asarray(images[i:i + batch_size], np.float32)
      n = len(x)
      if n < batch_size:  # one compiled shape
        x = np.concatenate([x, np.zeros((batch_size - n,) + x.shape[1:], np.float32)])
      out.append(np.asarray(apply(params, x))[:n])
    return np.concatenate(out) if out else np.zeros((0, config.llm.width), np.float32)

  return encode


# --------------------------------------------------------------------------- data


def load_frames(data_dir: str, task: str, cameras: Sequence[str], *,
                max_episodes: int | None = None, frame_stride: int = 2) -> dict[str, Any]:
  """Every `frame_stride`-th frame of the demo episodes of `task`: {images: {camera:
  uint8 [N, S, S, 3]}, full_state [N, 39], episode_ids [N]}."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top - TF is heavy
  from vlax.data import rlds  # pylint: disable=g-import-not-at-top - TF is heavy
  name = mw_names.dataset_name(task)
  spec = get_spec(name)
  keys = {}
  for cam in cameras:
    if cam not in spec.image_keys:
      raise VlaxError(f"camera {cam!r} of the checkpoint is not in dataset {name} (it "
                      f"has {sorted(spec.image_keys)})")
    keys[cam] = spec.image_keys[cam]
  builder = rlds.load_builder(name, data_dir)
  obs_features = builder.info.features["steps"]["observation"]
  if "full_state" not in obs_features:
    raise VlaxError(f"dataset {name} in {data_dir} stores no observation/full_state (it "
                    f"has {sorted(obs_features)}); rewrite the demos with "
                    f"data_pipelines/make_metaworld_demos.py")
  split = "train" if max_episodes is None else f"train[:{int(max_episodes)}]"
  images = {c: [] for c in cameras}
  states, ids, index = [], [], []
  for e, episode in enumerate(tfds.as_numpy(builder.as_dataset(split=split))):
    for t, step in enumerate(episode["steps"]):
      if t % int(frame_stride):
        continue
      o = step["observation"]
      for c, k in keys.items():
        images[c].append(o[k])
      states.append(o["full_state"])
      ids.append(e)
      index.append(t)
  if not ids:
    raise VlaxError(f"dataset {name} in {data_dir} has no frames")
  return {"images": {c: np.stack(v) for c, v in images.items()},
          "full_state": np.stack(states).astype(np.float32), "episode_ids": np.array(ids),
          "step_index": np.array(index)}


# --------------------------------------------------------------------------- entry point


def probe_task(frames: Mapping[str, Any], encoders: Mapping[str, Callable], *,
               heldout_fraction: float = 0.2, seed: int = 0) -> dict[str, Any]:
  """{tower: {feature set: {target: probe result}}}; feature sets: each camera and, with
  several cameras, `all` (their features side by side). With `step_index` in frames
  (and >= 5 episodes), also START_TARGET on the episodes' first frames."""
  out: dict[str, Any] = {}
  state, ids = frames["full_state"], frames["episode_ids"]
  first = None
  if "step_index" in frames and len(np.unique(ids)) >= 5:
    first = np.asarray(frames["step_index"]) == 0
  for tower, encode in encoders.items():
    feats = {c: encode(im) for c, im in frames["images"].items()}
    if len(feats) > 1:
      feats["all"] = np.concatenate(list(feats.values()), axis=1)
    out[tower] = {}
    for f, x in feats.items():
      res = {t: probe(x, state[:, sl], ids, heldout_fraction=heldout_fraction, seed=seed)
             for t, sl in TARGETS.items()}
      if first is not None:
        res[START_TARGET] = probe(x[first], state[first, TARGETS["object_pos"]], ids[first],
                                  heldout_fraction=heldout_fraction, seed=seed)
      out[tower][f] = res
  return out


def summarize(tasks: Mapping[str, Any]) -> dict[str, Any]:
  """{tower: {feature set: {target: mean R^2 over tasks}}}."""
  out: dict[str, Any] = {}
  for res in tasks.values():
    for tower, by_feat in res.items():
      for feat, by_target in by_feat.items():
        for target, r in by_target.items():
          out.setdefault(tower, {}).setdefault(feat, {}).setdefault(target, []).append(
              np.nan if r["r2"] is None else r["r2"])
  return {tw: {f: {t: float(np.nanmean(v)) if not np.all(np.isnan(v)) else None for t, v in bt.items()} for f, bt in bf.items()}
          for tw, bf in out.items()}


def format_table(report: Mapping[str, Any]) -> str:
  targets = list(dict.fromkeys(t for res in report["tasks"].values()
                                for by_feat in res.values() for bt in by_feat.values()
                                for t in bt))
  rows = [["task", "tower", "features", *targets]]
  for task, res in report["tasks"].items():
    for tower, by_feat in res.items():
      for feat, by_target in by_feat.items():
        rows.append([task, tower, feat, *("-" if (by_target.get(t) or {}).get("r2") is None
                                          else f"{by_target[t]['r2']:.3f}"
                                          for t in targets)])
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  return "\n".join("  ".join(c.ljust(w) if i < 3 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(r, widths))) for r in rows)


def _cameras(meta: Mapping[str, Any]) -> list[str]:
  """The cameras the policy was trained with (its sequence config, else its data config)."""
  seq = (meta.get("action_tokenizer") or {}).get("sequence") or {}
  if "cameras" in seq:
    return list(seq["cameras"])
  return list(((meta.get("config") or {}).get("data") or {}).get("cameras") or ())


def _json_safe(x: Any) -> Any:
  if isinstance(x, float) and not np.isfinite(x):
    return None
  if isinstance(x, dict):
    return {k: _json_safe(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_json_safe(v) for v in x]
  return x


def run_probe(checkpoint: str, data_dir: str, tasks: str | Sequence[str], out: str | None,
              *, step: int | None = None, max_episodes: int | None = None,
              frame_stride: int = 2, heldout_fraction: float = 0.2, seed: int = 0,
              random_baseline: bool = True, load_fn: Callable[..., Mapping] | None = None,
              print_fn: Callable[[str], Any] | None = print) -> dict[str, Any]:
  """Probes the checkpoint's tower (and a random one) on each task's demos; writes
  OUT/report.json. load_fn replaces `load_frames` (tests)."""
  if isinstance(tasks, str):
    tasks = [mw_names.task_name(t) for t in tasks.split(",") if t.strip()]
  if not tasks:
    raise VlaxError("vision-probe: no --tasks given")
  if int(frame_stride) < 1:
    raise VlaxError(f"--frame-stride must be >= 1, got {frame_stride}")
  if not 0 < float(heldout_fraction) < 1:
    raise VlaxError(f"--heldout-fraction must be in (0, 1), got {heldout_fraction}")
  if os.path.isdir(os.path.join(checkpoint, "checkpoints")):  # a run's workdir
    checkpoint = os.path.join(checkpoint, "checkpoints")
  if "://" not in checkpoint and not os.path.exists(checkpoint):
    raise VlaxError(f"checkpoint not found: {checkpoint}")
  params, meta = weights_lib.load(checkpoint, step)
  config = weights_lib.model_config(meta, f"checkpoint {checkpoint}")
  if "img" not in params:
    raise VlaxError(f"checkpoint {checkpoint} has no vision tower (params 'img')")
  cameras = _cameras(meta)
  if not cameras:
    raise VlaxError(f"checkpoint {checkpoint} was trained without cameras: nothing to probe")
  encoders = {"trained": make_encoder(config, params["img"])}
  if random_baseline:
    encoders["random"] = make_encoder(config, random_vision_params(config, seed))
  load_fn = load_fn or load_frames
  results = {}
  for task in tasks:
    frames = load_fn(data_dir, task, cameras, max_episodes=max_episodes,
                     frame_stride=frame_stride)
    results[task] = probe_task(frames, encoders, heldout_fraction=heldout_fraction,
                               seed=seed)
    results[task]["frames"] = int(len(frames["episode_ids"]))
    results[task]["episodes"] = int(len(np.unique(frames["episode_ids"])))
  counts = {t: {k: results[t].pop(k) for k in ("frames", "episodes")} for t in results}
  report = {"format": REPORT_FORMAT, "tasks": results, "summary": summarize(results),
            "targets": {**{t: [s.start, s.stop] for t, s in TARGETS.items()},
                        START_TARGET: [4, 7, "first frame of each episode"]},
            "metadata": {"checkpoint": checkpoint, "step": meta.get("step"),
                         "weights": meta.get("weights"), "cameras": cameras,
                         "data_dir": data_dir, "frame_stride": int(frame_stride),
                         "heldout_fraction": float(heldout_fraction), "seed": int(seed),
                         "data": counts, "pooling": "mean over patches"}}
  report = _json_safe(report)  # R^2 of a constant target is undefined: null
  if out is not None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "report.json"), "w") as f:
      f.write(json.dumps(report, indent=2, sort_keys=True) + "\n")
  if print_fn is not None:
    print_fn(format_table(report))
  return report
