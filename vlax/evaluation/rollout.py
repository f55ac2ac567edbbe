"""Closed-loop evaluation in the toy environment: learning measured by behaviour.

`rollout` steps N `ToyReachEnv` episodes side by side with a policy's actions: each
step, one batched prediction for all N observations gives an action chunk per episode,
of which the first `execute_steps` actions are executed open-loop (1 = re-plan every
step). An episode succeeds when the end effector is within the grasp radius of the named
block with the gripper closed (the env's `info["success"]`); it stops there.

Policies: a `vlax.Policy` (uses `predict_action_batch`), any object with
`predict_action(observation, instruction, dataset=...) -> [K, A]`, or the baselines
"zero" (no motion), "random" (uniform steps, random gripper if any) and "oracle" (the env's
expert action, the data-generating policy: an upper bound).

`evaluate_rollout` (behind `vlax eval --env toy_reach`) runs the checkpoint's policy for
every toy embodiment it was trained on, plus the baselines, and writes OUT/report.json,
OUT/rollout_success.png, OUT/rollout_trajectories_<dataset>.png and a printed table.

Instruction following: success alone cannot tell "went to the named block" from "went to
a block". The follow rate counts an episode as followed when the first block the end
effector comes within `follow_radius` of (default: the grasp radius) is the named one;
an episode that never comes that close counts the block nearest at the end. Chance is
1 / num_blocks. Named `CONDITIONS` set the block colours per episode (a held-out
`concept` colour as target, distractor, or the block a nonsense word may pick); every
condition and policy runs on the same episode seeds, which give the same layouts, so
results can be paired (McNemar) per episode.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from vlax.data.oxe.toy import TOY_DATASETS
from vlax.envs.toy_env import COLORS, EMBODIMENTS, ToyReachEnv, scene_kwargs
from vlax.errors import VlaxError
from vlax.inference.policy import Policy

ENVS = ("toy_reach",)
BASELINES = ("zero", "random", "oracle")
REPORT_FORMAT = "vlax-rollout/1"
# Eval episodes use seeds far from the training data's (seed * 100_003 + episode).
_SEED_OFFSET = 1_000_000_007
# Evaluation conditions of the held-out-concept experiment (notes/cotraining-evidence.md
# section 4): "seen" = the other colours.
#   seen:             a seen target with seen distractors;
#   novel_target:     "move to the <concept> block" among seen distractors;
#   novel_distractor: a seen target, the concept's block among the distractors;
#   nonsense:         "move to the zorp block" with the concept's block and seen ones; the
#                     concept's block is the "target", so follow = went to the novel colour.
CONDITIONS = ("seen", "novel_target", "novel_distractor", "nonsense")
DEFAULT_CONCEPT = "purple"
NONSENSE_WORD = "zorp"
_COLOR_KEYS = ("target_colors", "distractor_colors", "required_distractors",
               "instruction_color")


def _toy_datasets() -> dict[str, str]:
  return dict(TOY_DATASETS)


def embodiment_of(dataset: str) -> str:
  toy = _toy_datasets()
  if dataset not in toy:
    raise VlaxError(f"dataset {dataset!r} is not a toy_reach dataset ({sorted(toy)})")
  return toy[dataset]


def dataset_of(embodiment: str) -> str:
  for name, emb in _toy_datasets().items():
    if emb == embodiment or name == embodiment:
      return name
  raise VlaxError(f"unknown toy_reach embodiment {embodiment!r}; use one of "
                  f"{sorted(_toy_datasets().values())} or {sorted(_toy_datasets())}")


def episode_seed(seed: int, episode: int) -> int:
  """The env seed of episode `episode` of a rollout with `seed` (shared by every policy and
  condition, so their episodes pair up)."""
  return _SEED_OFFSET + int(seed) * 100_003 + int(episode)


def condition_kwargs(condition: str, concept: str = DEFAULT_CONCEPT) -> dict[str, Any]:
  """ToyReachEnv colour arguments of a named evaluation condition (see CONDITIONS)."""
  if concept not in COLORS:
    raise VlaxError(f"concept {concept!r} is not a toy block colour ({list(COLORS)})")
  seen = tuple(c for c in COLORS if c != concept)
  if condition == "seen":
    return {"target_colors": seen, "distractor_colors": seen}
  if condition == "novel_target":
    return {"target_colors": (concept,), "distractor_colors": seen}
  if condition == "novel_distractor":
    return {"target_colors": seen, "distractor_colors": seen,
            "required_distractors": (concept,)}
  if condition == "nonsense":
    return {"target_colors": (concept,), "distractor_colors": seen,
            "instruction_color": NONSENSE_WORD}
  raise VlaxError(f"unknown condition {condition!r}; use one of {list(CONDITIONS)}")


def _chunk_fn(policy: Any, dataset: str, action_dim: int, rng: np.random.Generator
              ) -> tuple[str, Callable[[list, list], np.ndarray]]:
  """(label, fn(envs, observations) -> float [B, K, A] action chunks)."""
  if isinstance(policy, str):
    if policy == "zero":
      return "zero", lambda envs, obs: np.zeros((len(envs), 1, action_dim), np.float32)
    if policy == "random":
      def random_fn(envs, obs):
        del obs
        a = np.empty((len(envs), 1, action_dim), np.float32)
        for i, env in enumerate(envs):
          a[i, 0] = rng.uniform(-env.max_step_size, env.max_step_size, action_dim)
          if getattr(env, "has_gripper", True):
            a[i, 0, -1] = float(rng.random() < 0.5)
        return a
      return "random", random_fn
    if policy == "oracle":
      return "oracle", lambda envs, obs: np.stack([e.oracle_action()[None] for e in envs])
    raise VlaxError(f"unknown baseline policy {policy!r}; use one of {BASELINES} or a "
                    f"Policy")
  if hasattr(policy, "predict_action_batch"):
    def batch_fn(envs, obs):
      del envs
      return np.asarray(policy.predict_action_batch(
          obs, [o["instruction"] for o in obs], dataset=dataset), np.float32)
    return "policy", batch_fn
  if hasattr(policy, "predict_action"):
    def single_fn(envs, obs):
      del envs
      return np.stack([np.asarray(policy.predict_action(o, o["instruction"],
                                                        dataset=dataset), np.float32)
                       for o in obs])
    return "policy", single_fn
  raise VlaxError(f"rollout: {type(policy).__name__} is not a policy (needs "
                  f"predict_action or predict_action_batch)")


def rollout(policy: Any, env_name: str = "toy_reach", episodes: int = 20, seed: int = 0,
            embodiment: str = "a", dataset: str | None = None, execute_steps: int = 1,
            max_steps: int = 20, image_size: int = 64,
            env_kwargs: Mapping[str, Any] | None = None,
            keep_trajectories: int = 8, condition: str | None = None,
            concept: str = DEFAULT_CONCEPT,
            follow_radius: float | None = None) -> dict[str, Any]:
  """Runs `episodes` episodes; returns success and follow rates (JSON-safe dict).

  condition: one of CONDITIONS (block colours per episode, with `concept` the novel
  colour); it replaces any colour arguments of `env_kwargs`.
  Keys: success_rate, successes, episodes, mean_steps (steps until success, else
  max_steps), mean_final_distance, mean_min_distance, success_per_episode, follow_rate,
  follows, follow_per_episode, follow_chance (1 / blocks), reached_block (episodes that
  came within follow_radius of some block), target_color_per_episode,
  chosen_color_per_episode, instructions, num_predictions, decode_errors and
  invalid_decodes (policies that count them), and `trajectories` (end-effector paths,
  targets and blocks of the first `keep_trajectories` episodes, for plots).
  """
  if env_name not in ENVS:
    raise VlaxError(f"unknown environment {env_name!r}; available: {list(ENVS)}")
  if int(episodes) < 1:
    raise VlaxError(f"episodes must be >= 1, got {episodes}")
  if int(execute_steps) < 1:
    raise VlaxError(f"execute_steps must be >= 1, got {execute_steps}")
  if embodiment not in EMBODIMENTS:
    embodiment = embodiment_of(embodiment)
  dataset = dataset or dataset_of(embodiment)
  n = int(episodes)
  kwargs = dict(env_kwargs or {})
  if condition is not None:
    kwargs = {k: v for k, v in kwargs.items() if k not in _COLOR_KEYS}
    kwargs.update(condition_kwargs(condition, concept))
  kwargs.setdefault("image_size", int(image_size))
  kwargs.setdefault("max_steps", int(max_steps))
  try:
    envs = [ToyReachEnv(embodiment, seed=seed, **kwargs) for _ in range(n)]
  except ValueError as e:
    raise VlaxError(f"toy_reach scene{f' (condition {condition})' if condition else ''}: "
                    f"{e}") from None
  obs = [e.reset(seed=episode_seed(seed, i)) for i, e in enumerate(envs)]
  action_dim = envs[0].action_dim
  radius = float(envs[0].grasp_radius if follow_radius is None else follow_radius)
  label, chunk_fn = _chunk_fn(policy, dataset, action_dim,
                              np.random.default_rng([int(seed), 17]))
  counts_before = _decode_counts(policy)
  paths = [[e.pos.copy()] for e in envs]
  targets = [e.target_position() for e in envs]
  active = np.ones(n, bool)
  success = np.zeros(n, bool)
  steps = np.zeros(n, np.int64)
  final = np.array([np.linalg.norm(t - e.pos) for t, e in zip(targets, envs)])
  min_dist = final.copy()
  predictions = 0
  horizon = envs[0].max_steps
  t = 0
  while t < horizon and active.any():
    # All N observations every time: one batch shape, one compile.
    chunks = np.asarray(chunk_fn(envs, obs), np.float32)
    predictions += 1
    if chunks.ndim != 3 or chunks.shape[0] != n or chunks.shape[2] != action_dim:
      raise VlaxError(f"{label} policy returned actions of shape {chunks.shape}, expected "
                      f"[{n}, K, {action_dim}] for embodiment {embodiment!r}")
    if not np.all(np.isfinite(chunks)):
      raise VlaxError(f"{label} policy returned non-finite actions")
    for k in range(min(int(execute_steps), chunks.shape[1])):
      if t >= horizon or not active.any():
        break
      for i in np.nonzero(active)[0]:
        o, _, done, info = envs[i].step(chunks[i, k])
        obs[i] = o
        steps[i] += 1
        paths[i].append(envs[i].pos.copy())
        final[i] = info["distance"]
        min_dist[i] = min(min_dist[i], info["distance"])
        if info["success"]:
          success[i] = True
          active[i] = False
        elif done:
          active[i] = False
      t += 1
  chosen, reached = np.array([follow_choice(np.asarray(paths[i])[1:], e.block_pos, radius)
                              for i, e in enumerate(envs)]).T
  follow = chosen == np.array([e.target for e in envs])
  reached = reached.astype(bool)
  keep = min(n, int(keep_trajectories))
  out = {
      "policy": label, "env": env_name, "embodiment": embodiment, "dataset": dataset,
      "episodes": n, "successes": int(success.sum()),
      "success_rate": float(success.mean()),
      "follows": int(follow.sum()), "follow_rate": float(follow.mean()),
      "follow_chance": 1.0 / envs[0].num_blocks, "follow_radius": radius,
      "reached_block": int(reached.sum()),
      "mean_steps": float(steps.mean()),
      "mean_final_distance": float(final.mean()),
      "mean_min_distance": float(min_dist.mean()),
      "success_per_episode": [bool(s) for s in success],
      "follow_per_episode": [bool(f) for f in follow],
      "target_color_per_episode": [e.block_colors[e.target] for e in envs],
      "chosen_color_per_episode": [e.block_colors[c] for e, c in zip(envs, chosen)],
      "instructions": sorted({e.instruction for e in envs}),
      "execute_steps": int(execute_steps), "max_steps": int(horizon),
      "num_predictions": predictions, "seed": int(seed),
      "trajectories": [{"path": np.asarray(paths[i]).round(4).tolist(),
                        "target": np.asarray(targets[i]).round(4).tolist(),
                        "blocks": [[round(float(x), 4), round(float(y), 4), c] for (x, y), c
                                   in zip(envs[i].block_pos, envs[i].block_colors)],
                        "success": bool(success[i]), "follow": bool(follow[i])}
                       for i in range(keep)],
  }
  if condition is not None:
    out.update(condition=condition, concept=concept)
  counts_after = _decode_counts(policy)
  out.update({k: counts_after[k] - counts_before[k] for k in counts_after})
  return out


def follow_choice(path: np.ndarray, blocks: np.ndarray, radius: float) -> tuple[int, bool]:
  """(block the episode chose, whether it came within `radius` of a block).

  path: end-effector positions [T, D] after each action (D = 2, or 3 with height z);
  blocks: block centres [N, 2] on the table (z = 0). The choice is the first block the
  path comes within `radius` of (the nearest one if several), else the block nearest its
  last position: distances as success measures them.
  """
  path = np.asarray(path, np.float64).reshape(len(path), -1)
  centres = np.zeros((len(blocks), path.shape[1]))
  centres[:, :2] = np.asarray(blocks)[:, :2]
  d = np.linalg.norm(path[:, None, :] - centres[None], axis=-1)  # [T, N]
  near = np.nonzero(d.min(axis=1) < radius)[0]
  if near.size:
    return int(np.argmin(d[near[0]])), True
  return int(np.argmin(d[-1])), False


def _decode_counts(policy: Any) -> dict[str, int]:
  """The policy's running decode counters (vlax.Policy has them; baselines do not)."""
  if isinstance(policy, str):
    return {}
  return {k: int(getattr(policy, k)) for k in ("decode_errors", "invalid_decodes")
          if isinstance(getattr(policy, k, None), (int, np.integer))}


# --------------------------------------------------------------------------- reports


def _summary(res: Mapping[str, Any]) -> dict[str, Any]:
  return {k: v for k, v in res.items() if k != "trajectories"}


def format_rollout_table(results: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
  """One row per (dataset, policy): success and follow rates (chance), mean final
  distance, mean steps."""
  header = ["dataset", "policy", "episodes", "success", "follow", "chance", "final dist",
            "min dist", "steps"]
  rows = []
  for name, by_policy in results.items():
    for label, r in by_policy.items():
      rows.append([name, label, str(r["episodes"]), f"{r['success_rate']:.3f}",
                   f"{r['follow_rate']:.3f}", f"{r['follow_chance']:.3f}",
                   f"{r['mean_final_distance']:.3f}", f"{r['mean_min_distance']:.3f}",
                   f"{r['mean_steps']:.1f}"])
  widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]

  def line(r):
    return "  ".join([r[0].ljust(widths[0]), r[1].ljust(widths[1])] +
                     [c.rjust(w) for c, w in zip(r[2:], widths[2:])])

  return "\n".join([line(header), "  ".join("-" * w for w in widths)] +
                   [line(r) for r in rows])


def plot_rollouts(results: Mapping[str, Mapping[str, Mapping[str, Any]]], out_dir: str
                  ) -> list[str]:
  """rollout_success.png (bars per dataset and policy) and, per dataset, the top-down
  end-effector paths of the kept episodes (green = success, red = failure)."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  from vlax.evaluation.plots import safe_name  # pylint: disable=g-import-not-at-top
  paths = []
  names = list(results)
  labels = sorted({p for r in results.values() for p in r},
                  key=lambda p: (p != "policy", p))
  fig = Figure(figsize=(max(5.0, 1.8 * len(names) * len(labels) / 2 + 2), 4.0))
  ax = fig.add_subplot(1, 1, 1)
  width = 0.8 / max(1, len(labels))
  for j, label in enumerate(labels):
    x = np.arange(len(names)) + j * width
    y = [results[n][label]["success_rate"] if label in results[n] else np.nan
         for n in names]
    ax.bar(x, y, width, label=label)
  ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2)
  ax.set_xticklabels(names, fontsize=9)
  ax.set_ylim(0, 1.05)
  ax.set_ylabel("success rate")
  ax.legend(fontsize=8)
  ax.set_title("toy_reach closed-loop success", fontsize=10)
  fig.tight_layout()
  FigureCanvasAgg(fig)
  p = os.path.join(out_dir, "rollout_success.png")
  fig.savefig(p, dpi=80)
  paths.append(p)
  for name, by_policy in results.items():
    shown = [(label, r) for label, r in by_policy.items() if r.get("trajectories")]
    if not shown:
      continue
    fig = Figure(figsize=(3.2 * len(shown), 3.4))
    for j, (label, r) in enumerate(shown):
      ax = fig.add_subplot(1, len(shown), j + 1)
      for tr in r["trajectories"]:
        for x, y, c in tr.get("blocks", ()):
          ax.plot(x, y, "s", color=np.asarray(COLORS[c]) / 255, ms=7, alpha=0.5)
        xy = np.asarray(tr["path"])[:, :2]
        color = "tab:green" if tr["success"] else "tab:red"
        ax.plot(xy[:, 0], xy[:, 1], color=color, lw=1.0)
        ax.plot(xy[0, 0], xy[0, 1], "o", color=color, ms=3)
        ax.plot(tr["target"][0], tr["target"][1], "s", color="black", ms=5, mfc="none")
      ax.set_xlim(-1, 1)
      ax.set_ylim(-1, 1)
      ax.set_aspect("equal")
      ax.tick_params(labelsize=7)
      ax.set_title(f"{label}: success {r['success_rate']:.2f}, follow "
                   f"{r['follow_rate']:.2f}", fontsize=8)
    fig.suptitle(f"{name}: end-effector paths (square = target)", fontsize=10)
    fig.tight_layout()
    FigureCanvasAgg(fig)
    p = os.path.join(out_dir, f"rollout_trajectories_{safe_name(name)}.png")
    fig.savefig(p, dpi=80)
    paths.append(p)
  return paths


def write_rollout_report(results: Mapping[str, Mapping[str, Mapping[str, Any]]],
                         out_dir: str, metadata: Mapping[str, Any] | None = None
                         ) -> dict[str, Any]:
  """OUT/report.json ({format, env, results: {dataset: {policy: summary}}, plots,
  metadata}) and the PNGs; returns the report."""
  try:
    os.makedirs(out_dir, exist_ok=True)
  except OSError as e:
    raise VlaxError(f"cannot create output directory {out_dir!r}: {e}") from e
  plot_paths = plot_rollouts(results, out_dir)
  report = {"format": REPORT_FORMAT,
            "results": {n: {p: _summary(r) for p, r in by.items()}
                        for n, by in results.items()},
            "plots": [os.path.relpath(p, out_dir) for p in plot_paths],
            "metadata": dict(metadata or {})}
  with open(os.path.join(out_dir, "report.json"), "w") as f:
    f.write(json.dumps(report, indent=2, sort_keys=True, allow_nan=False) + "\n")
  return report


def evaluate_rollout(checkpoint: str | None, out: str | None, env_name: str = "toy_reach",
                     episodes: int = 20, step: int | None = None,
                     embodiment: str | None = None, seed: int = 0,
                     execute_steps: int = 1, baselines: Sequence[str] = BASELINES,
                     policy: Any = None, datasets: Sequence[str] | None = None,
                     max_steps: int = 20, conditions: Sequence[str] | None = None,
                     concept: str | None = None, follow_radius: float | None = None,
                     print_fn: Callable[[str], Any] | None = print) -> dict[str, Any]:
  """Rolls a checkpoint's Policy (or `policy`) out for each toy embodiment it knows.

  embodiment: "a"/"b" or a dataset name to evaluate only that one (default: every toy
  dataset with statistics in the checkpoint). Baselines run on the same episode seeds.
  conditions: CONDITIONS names; each runs on the same seeds as the others, its results
  keyed "<dataset>/<condition>" (default: the training scene, keyed "<dataset>").
  concept: the novel colour of the conditions (default: the checkpoint's
  data.held_out_concept, else "purple").
  Returns the report dict ({"results": {dataset: {policy label: summary}}, ...}).
  """
  if env_name not in ENVS:
    raise VlaxError(f"unknown environment {env_name!r}; available: {list(ENVS)}")
  for c in conditions or ():
    if c not in CONDITIONS:
      raise VlaxError(f"unknown condition {c!r}; use one of {list(CONDITIONS)}")
  if policy is None:
    if not checkpoint:
      raise VlaxError("evaluate_rollout: give a checkpoint or a policy")
    if "://" not in checkpoint and not os.path.exists(checkpoint):
      raise VlaxError(f"checkpoint not found: {checkpoint}")
    policy = Policy.from_checkpoint(checkpoint, step=step)
  if datasets is None:
    keys = list(getattr(policy, "dataset_keys", None) or _toy_datasets())
    datasets = [k for k in keys if k in _toy_datasets()]
    if not datasets:
      raise VlaxError(f"{checkpoint or 'policy'} has no toy_reach dataset (it knows "
                      f"{keys}); --env toy_reach needs one of {sorted(_toy_datasets())}")
  if embodiment:
    chosen = dataset_of(embodiment)
    if chosen not in datasets:
      raise VlaxError(f"embodiment {embodiment!r} ({chosen}) is not in this policy's "
                      f"datasets {list(datasets)}")
    datasets = [chosen]
  image_size = 64
  meta = getattr(policy, "metadata", None) or {}
  data_cfg = (meta.get("config") or {}).get("data") or {}
  if data_cfg.get("image_size"):
    image_size = int(data_cfg["image_size"])  # the resolution the policy was trained on
  try:
    scene = scene_kwargs(data_cfg)  # the blocks the policy was trained on
  except ValueError as e:
    raise VlaxError(f"{checkpoint or 'policy'}: data config: {e}") from None
  concept = concept or str(data_cfg.get("held_out_concept") or DEFAULT_CONCEPT)
  results: dict[str, dict[str, Any]] = {}
  for name in datasets:
    for cond in conditions or [None]:
      key = name if cond is None else f"{name}/{cond}"
      results[key] = {}
      for p in [policy, *baselines]:
        r = rollout(p, env_name, episodes=episodes, seed=seed,
                    embodiment=embodiment_of(name), dataset=name,
                    execute_steps=execute_steps if not isinstance(p, str) else 1,
                    max_steps=max_steps, image_size=image_size, env_kwargs=scene,
                    condition=cond, concept=concept, follow_radius=follow_radius)
        results[key][r["policy"]] = r
  metadata = {"checkpoint": checkpoint, "step": meta.get("step"), "env": env_name,
              "episodes": int(episodes), "seed": int(seed),
              "execute_steps": int(execute_steps), "max_steps": int(max_steps),
              **{k: list(v) if isinstance(v, tuple) else v for k, v in scene.items()}}
  if conditions:
    metadata.update(conditions=list(conditions), concept=concept)
  report = ({"format": REPORT_FORMAT, "results": {n: {p: _summary(r) for p, r in by.items()}
                                                  for n, by in results.items()},
             "metadata": metadata}
            if out is None else write_rollout_report(results, out, metadata))
  if print_fn is not None:
    print_fn(format_rollout_table(results))
  return report
