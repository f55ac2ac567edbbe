"""Closed-loop evaluation on Meta-World tasks (`vlax eval --env metaworld`).

Per task, N seeded episodes (eval seeds, disjoint from the demos') run side by side: each
step one batched prediction for the N observations gives an action chunk per episode, of
which `execute_steps` actions run open-loop before re-planning. An episode succeeds at
the first step with Meta-World's `info["success"]` and stops there; otherwise it ends at
`max_steps`. With `temporal_ensemble=m` the policy re-plans every step and executes the
exponentially weighted average of the overlapping chunks' predictions for that step
(`vlax.evaluation.chunking`, ACT-style). The baselines run the same seeds through the same loop: the scripted
expert (a check of the harness: it should succeed >= 90%), zero actions and uniform
random actions; only the policy's episodes render images.

`layouts="train"` replays the demos' own layouts instead of the eval seeds: success on
them and not on eval layouts is memorisation, not a closed-loop failure.

`image_ablation` measures what the images contribute: "shuffle" gives each episode the
images of another episode of the same batch (same task, other layout, same step),
"black" replaces them by zeros; proprio and instruction stay. `proprio_ablation="drop"`
leaves the proprio out of every prompt (`proprio_dropped`: the prompt a policy trained
with `data.proprio_dropout` saw on its dropped examples): the no-proprio rung measured
on the same checkpoint.

Outputs under OUT: report.json (`tasks: {T: {success_rate, mean_steps, baselines:
{expert, zero, random}}}`, `average_success`), metaworld_success.png (bars per task and
policy) and videos/<task>_ep<i>.gif (front | wrist camera of the first episodes).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import queue as queue_lib
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from PIL import Image

from vlax.envs import metaworld_env  # imports Meta-World and MuJoCo only when an env is made
from vlax.envs import metaworld_tasks as mw_names
from vlax.errors import VlaxError
from vlax.evaluation.chunking import TemporalEnsemble
from vlax.evaluation.rollout import _chunk_fn
from vlax.inference.policy import Policy

REPORT_FORMAT = "vlax-metaworld/1"
BASELINES = ("expert", "zero", "random")
ABLATIONS = ("shuffle", "black")
PROPRIO_ABLATIONS = ("drop",)
# Which layouts the episodes use: the eval seeds (never in the demos), or the demos' own
# (`train_seed`, the layouts make_metaworld_demos.py wrote with the same --seed): success
# there and not on eval layouts means the policy memorised its demos' layouts.
LAYOUTS = ("eval", "train")
DEFAULT_EXECUTE_STEPS = 4  # the whole chunk of the MT10 config


def _proprio_is_full(policy: Any, dataset: str) -> bool:
  """Whether the policy's prompt holds Meta-World's full state: its saved data config
  (`proprio_source`), else (older checkpoints) its proprio statistics' size."""
  source = getattr(getattr(policy, "seq", None), "proprio_source", "proprio")
  if source != "proprio":
    return source == "full_state"
  stats = (getattr(policy, "metadata", None) or {}).get("statistics") or {}
  mean = ((stats.get(dataset) or {}).get("proprio") or {}).get("mean") or []
  return len(mean) == mw_names.FULL_STATE_DIM


def _trained_cameras(obs: list[dict[str, Any]], cameras: Sequence[str] | None
                     ) -> list[dict[str, Any]]:
  """The observation a policy trained on `cameras` takes: the env renders front and
  wrist, a policy trained on fewer (none: the state oracle) gets those alone."""
  if cameras is None:
    return obs
  keep = {f"image_{c}" for c in cameras}
  return [{k: v for k, v in o.items() if not k.startswith("image_") or k in keep}
          for o in obs]


def _drop_proprio(obs: list[dict[str, Any]], mode: str | None) -> list[dict[str, Any]]:
  return [{**o, "proprio_dropped": True} for o in obs] if mode == "drop" else obs


def _ablate(obs: list[dict[str, Any]], mode: str | None, rng: np.random.Generator
            ) -> list[dict[str, Any]]:
  if not mode:
    return obs
  keys = [k for k in obs[0] if k.startswith("image_")]
  if mode == "black":
    return [{**o, **{k: np.zeros_like(o[k]) for k in keys}} for o in obs]
  n = len(obs)
  perm = rng.permutation(n)
  if n > 1:  # a derangement: nobody keeps their own images
    while np.any(perm == np.arange(n)):
      perm = rng.permutation(n)
  return [{**o, **{k: obs[int(j)][k] for k in keys}} for o, j in zip(obs, perm)]


def _layout_seed_fn(layouts: str) -> Callable[[int, int], int]:
  if layouts not in LAYOUTS:
    raise VlaxError(f"unknown layouts {layouts!r}; use one of {LAYOUTS}")
  return metaworld_env.train_seed if layouts == "train" else metaworld_env.eval_seed


def make_envs(task: str, n: int, image_size: int = 64, max_steps: int = 200,
              full_state: bool = False) -> list:
  return [metaworld_env.MetaWorldEnv(task, image_size=image_size, max_steps=max_steps,
                                     full_state=full_state, render_images=False)
          for _ in range(n)]


def rollout_task(policy: Any, task: str, episodes: int = 20, seed: int = 0,
                 execute_steps: int = DEFAULT_EXECUTE_STEPS, max_steps: int = 200,
                 image_size: int = 64, full_state: bool = False,
                 image_ablation: str | None = None, keep_videos: int = 0,
                 envs: list | None = None, temporal_ensemble: float | None = None,
                 layouts: str = "eval", proprio_ablation: str | None = None
                 ) -> dict[str, Any]:
  """Runs one policy (a Policy, or "expert" / "zero" / "random") on `episodes` seeded
  layouts of `task`. Returns a JSON-safe summary (+ "frames" of the first keep_videos
  episodes when images are rendered). `envs`: reuse these (one per episode; reset here,
  not closed) instead of building new ones. temporal_ensemble: the coefficient m of
  ACT-style chunk averaging (re-plans every step; ignored by the baselines)."""
  if int(episodes) < 1:
    raise VlaxError(f"episodes must be >= 1, got {episodes}")
  if int(execute_steps) < 1:
    raise VlaxError(f"execute_steps must be >= 1, got {execute_steps}")
  if image_ablation not in (None, "", *ABLATIONS):
    raise VlaxError(f"unknown image ablation {image_ablation!r}; use one of {ABLATIONS}")
  if proprio_ablation not in (None, "", *PROPRIO_ABLATIONS):
    raise VlaxError(f"unknown proprio ablation {proprio_ablation!r}; use one of "
                    f"{PROPRIO_ABLATIONS}")
  layout_seed = _layout_seed_fn(layouts)
  baseline = isinstance(policy, str)
  name = {"expert": "oracle"}.get(policy, policy) if baseline else policy
  n = int(episodes)
  # Steps never render; observations with images are rendered only when the policy
  # predicts (every `execute_steps` steps), only for running episodes, and for the GIFs.
  own = envs is None
  if own:
    envs = make_envs(task, n, image_size, max_steps, full_state)
  elif len(envs) != n:
    raise VlaxError(f"rollout_task: {len(envs)} envs for {n} episodes")
  looks = not baseline
  try:
    obs = [e.reset(layout_seed(seed, i)) for i, e in enumerate(envs)]
    if looks:
      for e in envs:
        e.render_images = True
      obs = [e.observation() for e in envs]
    dataset = mw_names.dataset_name(task)
    label, chunk_fn = _chunk_fn(name, dataset, mw_names.ACTION_DIM,
                                np.random.default_rng([int(seed), 17]))
    label = "expert" if label == "oracle" else label
    ablate_rng = np.random.default_rng([int(seed), 29])
    cameras = None if baseline else getattr(name, "cameras", None)
    active = np.ones(n, bool)
    success = np.zeros(n, bool)
    steps = np.zeros(n, np.int64)
    keep = min(n, int(keep_videos)) if not baseline else 0
    frames: list[list[np.ndarray]] = [[] for _ in range(keep)]
    for i in range(keep):
      frames[i].append(np.concatenate([obs[i]["image_primary"], obs[i]["image_wrist"]], 1))
    predictions, t = 0, 0
    k = 1 if baseline else int(execute_steps)
    ensemble = None
    if temporal_ensemble is not None and not baseline:
      ensemble, k = TemporalEnsemble(float(temporal_ensemble)), 1
    while t < max_steps and active.any():
      if looks and t > 0:
        for i in np.nonzero(active)[0]:
          obs[i] = envs[i].observation()  # finished episodes keep their last frame
      seen = _trained_cameras(_ablate(obs, image_ablation, ablate_rng), cameras)
      if not baseline:
        seen = _drop_proprio(seen, proprio_ablation)
      chunks = np.asarray(chunk_fn(envs, seen), np.float32)
      predictions += 1
      if chunks.ndim != 3 or chunks.shape[0] != n or chunks.shape[2] != envs[0].action_dim:
        raise VlaxError(f"{label} policy returned actions of shape {chunks.shape}, "
                        f"expected [{n}, K, {envs[0].action_dim}]")
      if not np.all(np.isfinite(chunks)):
        raise VlaxError(f"{label} policy returned non-finite actions")
      if ensemble is not None:
        chunks = ensemble(chunks)[:, None]  # [n, 1, A]: this step's averaged action
      for j in range(min(k, chunks.shape[1])):
        if t >= max_steps or not active.any():
          break
        for i in np.nonzero(active)[0]:
          envs[i].render_images = False
          o, _, done, info = envs[i].step(chunks[i, j])
          envs[i].render_images = looks
          if not looks:
            obs[i] = o
          steps[i] += 1
          if i < keep and (steps[i] % 2 == 0 or info["success"] or done):  # GIF: every other step
            frames[i].append(np.concatenate([envs[i].render("primary"),
                                             envs[i].render("wrist")], 1))
          if info["success"]:
            success[i] = True
            active[i] = False
          elif done:
            active[i] = False
        t += 1
  finally:
    for e in envs:
      e.render_images = False
      if own:
        e.close()
  return {
      "policy": label, "task": task, "dataset": dataset, "episodes": n,
      "successes": int(success.sum()), "success_rate": float(success.mean()),
      # Steps to success, over the successful episodes (None when there are none).
      "mean_steps": float(steps[success].mean()) if success.any() else None,
      "success_per_episode": [bool(s) for s in success],
      "execute_steps": k, "max_steps": int(max_steps), "num_predictions": predictions,
      "seed": int(seed), "layouts": layouts, "image_ablation": image_ablation or None,
      "proprio_ablation": (proprio_ablation or None) if not baseline else None,
      "temporal_ensemble": None if ensemble is None else float(temporal_ensemble),
      "frames": [np.stack(f) for f in frames], "video_success": [bool(s) for s in
                                                                  success[:keep]],
  }


# --------------------------------------------------------------------------- outputs


def write_gif(frames: np.ndarray, path: str, scale: int = 2, fps: int = 20) -> str:
  """uint8 [T, H, W, 3] -> an animated GIF (nearest-neighbour upscaled)."""
  images = [Image.fromarray(f).resize((f.shape[1] * scale, f.shape[0] * scale),
                                      Image.NEAREST) for f in frames]
  images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps),
                 loop=0)
  return path


def plot_success(report: Mapping[str, Any], path: str) -> str:
  """Bars of success rate per task: the policy and each baseline."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  tasks = list(report["tasks"])
  labels = ["policy", *BASELINES]
  fig = Figure(figsize=(max(6.0, 0.9 * len(tasks) + 2.5), 4.2))
  ax = fig.add_subplot(1, 1, 1)
  width = 0.8 / len(labels)
  for j, label in enumerate(labels):
    y = [report["tasks"][t]["success_rate"] if label == "policy" else
         report["tasks"][t]["baselines"].get(label) for t in tasks]
    ax.bar(np.arange(len(tasks)) + j * width, [np.nan if v is None else v for v in y],
           width, label=label)
  ax.set_xticks(np.arange(len(tasks)) + 0.4 - width / 2)
  ax.set_xticklabels([t[:-3] for t in tasks], fontsize=8, rotation=30, ha="right")
  ax.set_ylim(0, 1.05)
  ax.set_ylabel("success rate")
  ax.legend(fontsize=8, ncol=4)
  ax.set_title(f"Meta-World closed loop: average {report['average_success']:.2f} "
               f"({report['episodes']} episodes per task)", fontsize=10)
  fig.tight_layout()
  FigureCanvasAgg(fig)
  fig.savefig(path, dpi=80)
  return path


def format_table(report: Mapping[str, Any]) -> str:
  rows = [["task", "policy", "steps", *BASELINES]]
  for t, r in report["tasks"].items():
    steps = "-" if r["mean_steps"] is None else f"{r['mean_steps']:.0f}"
    rows.append([t, f"{r['success_rate']:.2f}", steps,
                 *(f"{r['baselines'][b]:.2f}" if b in r["baselines"] else "-"
                   for b in BASELINES)])
  avg = report["baselines_average"]
  rows.append(["average", f"{report['average_success']:.2f}", "",
               *(f"{avg[b]:.2f}" if b in avg else "-" for b in BASELINES)])
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  return "\n".join("  ".join([r[0].ljust(widths[0])] +
                             [c.rjust(w) for c, w in zip(r[1:], widths[1:])])
                   for r in rows)


# --------------------------------------------------------------------------- entry point


def _evaluate_task(policy: Any, task: str, episodes: int, seed: int, execute_steps: int,
                   max_steps: int, image_size: int, baselines: Sequence[str],
                   image_ablation: str | None, keep_videos: int,
                   temporal_ensemble: float | None = None, layouts: str = "eval",
                   proprio_ablation: str | None = None
                   ) -> tuple[dict[str, Any], list[tuple[np.ndarray, bool]]]:
  """The policy and the baselines on one task: (report entry, [(frames, success)])."""
  full = _proprio_is_full(policy, mw_names.dataset_name(task))
  envs = make_envs(task, episodes, image_size, max_steps, full)  # shared by all policies
  try:
    r = rollout_task(policy, task, episodes, seed, execute_steps, max_steps, image_size,
                     full, image_ablation, keep_videos=keep_videos, envs=envs,
                     temporal_ensemble=temporal_ensemble, layouts=layouts,
                     proprio_ablation=proprio_ablation)
    base = {b: rollout_task(b, task, episodes, seed, 1, max_steps, image_size, full,
                            envs=envs, layouts=layouts) for b in baselines}
  finally:
    for e in envs:
      e.close()
  videos = list(zip(r.pop("frames"), r.pop("video_success")))
  entry = {"success_rate": r["success_rate"], "mean_steps": r["mean_steps"],
           "successes": r["successes"], "episodes": r["episodes"],
           "baselines": {b: v["success_rate"] for b, v in base.items()},
           "baseline_mean_steps": {b: v["mean_steps"] for b, v in base.items()},
           "success_per_episode": r["success_per_episode"],
           "num_predictions": r["num_predictions"]}
  return entry, videos


def _load_policy(checkpoint: str, step: int | None):
  if os.path.isdir(os.path.join(checkpoint, "checkpoints")):  # a run's workdir
    checkpoint = os.path.join(checkpoint, "checkpoints")
  return checkpoint, Policy.from_checkpoint(checkpoint, step=step)


def _worker(checkpoint: str, step: int | None, tasks: Sequence[str], kwargs: dict,
            queue) -> None:
  """Child process of `workers > 1`: its own Policy, a share of the tasks."""
  try:
    _, policy = _load_policy(checkpoint, step)
    for task in tasks:
      queue.put(("task", task, _evaluate_task(policy, task, **kwargs)))
  except Exception as e:  # noqa: BLE001 - one line to the parent
    queue.put(("error", None, f"{type(e).__name__}: {e}"))


def _run_workers(checkpoint: str, step: int | None, tasks: Sequence[str], workers: int,
                 kwargs: dict, print_fn) -> dict[str, Any]:
  ctx = multiprocessing.get_context("spawn")
  q = ctx.Queue()
  procs = [ctx.Process(target=_worker, daemon=True,
                       args=(checkpoint, step, list(tasks[i::workers]), kwargs, q))
           for i in range(min(workers, len(tasks)))]
  for p in procs:
    p.start()
  done: dict[str, Any] = {}
  try:
    while len(done) < len(tasks):
      try:
        kind, task, value = q.get(timeout=5)
      except queue_lib.Empty:
        if not any(p.is_alive() for p in procs):
          raise VlaxError(f"Meta-World eval workers died (exit codes "
                          f"{[p.exitcode for p in procs]})") from None
        continue
      if kind == "error":
        raise VlaxError(f"Meta-World eval worker: {value}")
      done[task] = value
      if print_fn is not None:
        print_fn(_task_line(task, value[0]))
  finally:
    for p in procs:
      p.join(timeout=10)
      if p.is_alive():
        p.terminate()
  return {t: done[t] for t in tasks}


def _task_line(task: str, entry: Mapping[str, Any]) -> str:
  return f"{task}: policy {entry['success_rate']:.2f} " + " ".join(
      f"{b} {v:.2f}" for b, v in entry["baselines"].items())


def evaluate_metaworld(checkpoint: str | None, out: str | None, tasks: str | Sequence[str],
                       episodes: int = 20, step: int | None = None, seed: int = 0,
                       execute_steps: int | None = None, max_steps: int = 200,
                       baselines: Sequence[str] = BASELINES, policy: Any = None,
                       image_ablation: str | None = None, videos_per_task: int = 2,
                       workers: int = 1, temporal_ensemble: float | None = None,
                       layouts: str = "eval", proprio_ablation: str | None = None,
                       print_fn: Callable[[str], Any] | None = print) -> dict[str, Any]:
  """Rolls the checkpoint's Policy (or `policy`) and the baselines out on `tasks`.

  workers > 1 splits the tasks over that many processes (each loads the checkpoint).
  temporal_ensemble: m of ACT-style chunk averaging (re-plans every step; None = off,
  then `execute_steps` actions of each chunk run open-loop). layouts: "eval" (the eval
  seeds) or "train" (the demos' own layouts, a memorisation check). proprio_ablation
  "drop": prompts without proprio (needs a policy whose prompt holds proprio).
  """
  task_list = metaworld_env.resolve_tasks(tasks)
  layout_seed = _layout_seed_fn(layouts)
  for b in baselines:
    if b not in BASELINES:
      raise VlaxError(f"unknown baseline {b!r}; use {BASELINES}")
  if int(workers) < 1:
    raise VlaxError(f"workers must be >= 1, got {workers}")
  if policy is None:
    if not checkpoint:
      raise VlaxError("evaluate_metaworld: give a checkpoint or a policy")
    if "://" not in checkpoint and not os.path.exists(checkpoint):
      raise VlaxError(f"checkpoint not found: {checkpoint}")
    checkpoint, policy = _load_policy(checkpoint, step)
  known = list(getattr(policy, "dataset_keys", None) or [])
  missing = [t for t in task_list if known and mw_names.dataset_name(t) not in known]
  if missing:
    raise VlaxError(f"{checkpoint or 'policy'} was not trained on {missing} (its "
                    f"datasets: {known})")
  meta = getattr(policy, "metadata", None) or {}
  data_cfg = (meta.get("config") or {}).get("data") or {}
  if proprio_ablation not in (None, "", *PROPRIO_ABLATIONS):
    raise VlaxError(f"unknown proprio ablation {proprio_ablation!r}; use one of "
                    f"{PROPRIO_ABLATIONS}")
  seq = getattr(policy, "seq", None)
  if proprio_ablation and seq is not None and not getattr(seq, "proprio_bins", 0):
    raise VlaxError("--proprio-ablation drop: this policy's prompt holds no proprio "
                    "(proprio_bins=0), there is nothing to drop")
  image_size = int(data_cfg.get("image_size") or 64)
  if temporal_ensemble is not None:
    if execute_steps not in (None, 1):
      raise VlaxError(f"temporal ensembling re-plans every step: execute_steps must be 1 "
                      f"or unset, got {execute_steps}")
    if not np.isfinite(temporal_ensemble) or temporal_ensemble < 0:
      raise VlaxError(f"temporal_ensemble must be >= 0, got {temporal_ensemble}")
    execute_steps = 1
  execute_steps = int(execute_steps or DEFAULT_EXECUTE_STEPS)
  if out is not None:
    try:
      os.makedirs(os.path.join(out, "videos"), exist_ok=True)
    except OSError as e:
      raise VlaxError(f"cannot create output directory {out!r}: {e}") from e
  kwargs = {"episodes": int(episodes), "seed": int(seed), "execute_steps": execute_steps,
            "max_steps": int(max_steps), "image_size": image_size,
            "baselines": tuple(baselines), "image_ablation": image_ablation,
            "keep_videos": videos_per_task if out is not None else 0,
            "temporal_ensemble": None if temporal_ensemble is None
                                 else float(temporal_ensemble), "layouts": layouts,
            "proprio_ablation": proprio_ablation or None}
  if int(workers) > 1 and checkpoint and len(task_list) > 1:
    del policy  # each worker loads its own
    done = _run_workers(checkpoint, step, task_list, int(workers), kwargs, print_fn)
  else:
    done = {}
    for task in task_list:
      done[task] = _evaluate_task(policy, task, **kwargs)
      if print_fn is not None:
        print_fn(_task_line(task, done[task][0]))
  results: dict[str, Any] = {}
  videos = []
  for task, (entry, clips) in done.items():
    results[task] = entry
    for i, (frames, ok) in enumerate(clips):
      name = f"{task}_ep{i}_{'success' if ok else 'fail'}.gif"
      videos.append(os.path.relpath(write_gif(frames, os.path.join(out, "videos", name)),
                                    out))
  report = {
      "format": REPORT_FORMAT, "env": "metaworld", "tasks": results,
      "average_success": float(np.mean([r["success_rate"] for r in results.values()])),
      "baselines_average": {b: float(np.mean([r["baselines"][b] for r in
                                              results.values()])) for b in baselines},
      "episodes": int(episodes),
      "metadata": {"checkpoint": checkpoint, "step": meta.get("step"), "seed": int(seed),
                   "execute_steps": execute_steps, "max_steps": int(max_steps),
                   "image_size": image_size, "image_ablation": image_ablation or None,
                   "proprio_ablation": proprio_ablation or None,
                   "temporal_ensemble": kwargs["temporal_ensemble"],
                   "layouts": layouts,
                   "eval_seeds": f"{layout_seed(seed, 0)}..{layout_seed(seed, episodes - 1)}"},
  }
  if out is not None:
    report["plots"] = [os.path.relpath(plot_success(report, os.path.join(
        out, "metaworld_success.png")), out)]
    report["videos"] = videos
    with open(os.path.join(out, "report.json"), "w") as f:
      f.write(json.dumps(report, indent=2, sort_keys=True) + "\n")
  if print_fn is not None:
    print_fn(format_table(report))
  return report
