"""Closed-loop learning curve: Meta-World success at every kept checkpoint of a run.

Token accuracy says little about behaviour; this runs the full `vlax eval --env
metaworld` at each chosen step (`--all-steps`, or `--steps 300,600`) on the same eval
seeds, so differences between steps come from the weights alone.

Outputs under OUT: OUT/step_<N>/ (the per-step report of `metaworld_eval`, videos
included), OUT/report.json ({format, curve: [{step, mean_success, per_task}], best_step,
steps, skipped, metadata}) and OUT/metaworld_curve.png (mean and per-task success vs
step). A step whose eval fails (e.g. deleted or unreadable since it was listed) is
recorded under `skipped` with its error and the others still run; no step evaluated is
an error. A step whose OUT/step_<N>/report.json already holds an eval with the same
settings (tasks, episodes, seed, execute steps, cap, ablations, layouts, baselines) is
read, not run again: an interrupted curve resumes, and a step evaluated on its own
(`vlax eval --step N --out OUT/step_<N>`) joins the curve. Delete that report to redo it.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from vlax.checkpoints import format as ckpt_format
from vlax.errors import VlaxError
from vlax.evaluation import metaworld_eval

REPORT_FORMAT = "vlax-metaworld-curve/1"
PLOT_NAME = "metaworld_curve.png"


def checkpoint_root(checkpoint: str) -> str:
  """A run's workdir or its checkpoints directory -> the directory of step dirs."""
  if os.path.isdir(os.path.join(checkpoint, "checkpoints")):
    return os.path.join(checkpoint, "checkpoints")
  if ckpt_format.is_step_dir(checkpoint):
    raise VlaxError(f"--all-steps/--steps need a run's workdir or checkpoints directory, "
                    f"not the single step {checkpoint}")
  return checkpoint


def parse_steps(steps: str | Sequence[int] | None) -> list[int] | None:
  """'300,600' -> [300, 600] (None stays None; a bad entry names itself)."""
  if steps is None:
    return None
  if isinstance(steps, str):
    out = []
    for s in (x.strip() for x in steps.split(",")):
      if not s:
        continue
      try:
        out.append(int(s))
      except ValueError:
        raise VlaxError(f"--steps: {s!r} is not a step number") from None
    steps = out
  steps = sorted({int(s) for s in steps})
  if not steps:
    raise VlaxError("--steps: no step given")
  return steps


def select_steps(available: Sequence[int], steps: Sequence[int] | None) -> list[int]:
  """The steps to evaluate: all available ones (steps=None) or the requested ones, each of
  which must exist (diverged / unreadable steps were set aside and are not available)."""
  available = sorted(int(s) for s in available)
  if not available:
    raise VlaxError("no checkpoint steps to evaluate")
  if steps is None:
    return available
  missing = [s for s in steps if s not in available]
  if missing:
    raise VlaxError(f"--steps {missing} not among the kept checkpoints {available}")
  return list(steps)


def assemble_curve(reports: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
  """{step: per-step Meta-World report} -> {curve, best_step}. best_step: highest mean
  success (the earliest of ties: fewer steps for the same behaviour)."""
  curve = [{"step": int(s),
            "mean_success": float(r["average_success"]),
            "per_task": {t: float(v["success_rate"]) for t, v in r["tasks"].items()}}
           for s, r in sorted(reports.items())]
  best = max(curve, key=lambda c: (c["mean_success"], -c["step"]))["step"] if curve else None
  return {"curve": curve, "best_step": best}


def _reusable_report(step_out: str | None, step: int, tasks: Sequence[str],
                    kwargs: Mapping[str, Any]) -> Mapping[str, Any] | None:
  """OUT/step_<N>/report.json when it is an eval of this step with these settings."""
  path = None if step_out is None else os.path.join(step_out, "report.json")
  if path is None or not os.path.isfile(path):
    return None
  try:
    with open(path) as f:
      r = json.load(f)
  except (OSError, ValueError):
    return None
  meta = r.get("metadata") or {}
  ensemble = kwargs.get("temporal_ensemble")
  execute = 1 if ensemble is not None else int(kwargs.get("execute_steps") or
                                               metaworld_eval.DEFAULT_EXECUTE_STEPS)
  want = {"step": int(step), "seed": int(kwargs.get("seed") or 0), "execute_steps": execute,
          "max_steps": int(kwargs.get("max_steps") or 200),
          "image_ablation": kwargs.get("image_ablation") or None,
          "proprio_ablation": kwargs.get("proprio_ablation") or None,
          "temporal_ensemble": None if ensemble is None else float(ensemble),
          "layouts": kwargs.get("layouts") or "eval"}
  have = {k: meta.get(k) for k in want}
  baselines = set(kwargs.get("baselines", metaworld_eval.BASELINES))
  if (have != want or r.get("episodes") != int(kwargs.get("episodes") or 20)
      or sorted(r.get("tasks") or {}) != sorted(tasks)
      or not baselines <= set(r.get("baselines_average") or {})):
    return None
  return r


def plot_curve(curve: Sequence[Mapping[str, Any]], path: str,
               title: str = "Meta-World closed loop vs training step") -> str:
  """Success rate vs step: the mean (thick) and each task (thin)."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  steps = [c["step"] for c in curve]
  tasks = sorted({t for c in curve for t in c["per_task"]})
  fig = Figure(figsize=(7.5, 4.5))
  ax = fig.add_subplot(1, 1, 1)
  for t in tasks:
    y = [c["per_task"].get(t, np.nan) for c in curve]
    ax.plot(steps, y, marker=".", lw=1.0, alpha=0.7, label=t.removesuffix("-v3"))
  ax.plot(steps, [c["mean_success"] for c in curve], color="black", lw=2.5, marker="o",
          label="mean")
  ax.set_ylim(-0.02, 1.02)
  ax.set_xlabel("training step")
  ax.set_ylabel("success rate")
  ax.set_title(title, fontsize=10)
  ax.legend(fontsize=7, ncol=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
  fig.tight_layout()
  FigureCanvasAgg(fig)
  fig.savefig(path, dpi=80)
  return path


def format_curve_table(curve: Sequence[Mapping[str, Any]]) -> str:
  tasks = sorted({t for c in curve for t in c["per_task"]})
  rows = [["step", "mean", *(t.removesuffix("-v3") for t in tasks)]]
  for c in curve:
    rows.append([str(c["step"]), f"{c['mean_success']:.2f}",
                 *(f"{c['per_task'][t]:.2f}" if t in c["per_task"] else "-" for t in tasks)])
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows)


def evaluate_curve(checkpoint: str, out: str | None, tasks: str | Sequence[str],
                   steps: str | Sequence[int] | None = None, *,
                   eval_fn: Callable[..., Mapping[str, Any]] | None = None,
                   print_fn: Callable[[str], Any] | None = print, progress: bool = True,
                   **eval_kwargs: Any) -> dict[str, Any]:
  """Runs `eval_fn` (default: `metaworld_eval.evaluate_metaworld`) at each selected step.

  steps: None = every kept step, else a list or '300,600'. eval_kwargs go to every
  per-step eval unchanged (episodes, seed, execute_steps, ...): the same seeds each step.
  """
  eval_fn = eval_fn or metaworld_eval.evaluate_metaworld
  if "step" in eval_kwargs:
    raise VlaxError("evaluate_curve: give steps=, not step=")
  if "://" not in checkpoint and not os.path.exists(checkpoint):
    raise VlaxError(f"checkpoint not found: {checkpoint}")
  root = checkpoint_root(checkpoint)
  chosen = select_steps(ckpt_format.all_steps(root), parse_steps(steps))
  task_names = metaworld_eval.metaworld_env.resolve_tasks(tasks)
  if out is not None:
    os.makedirs(out, exist_ok=True)
  reports: dict[int, Mapping[str, Any]] = {}
  skipped: list[dict[str, Any]] = []
  bar = tqdm(chosen, desc="checkpoints", unit="step", disable=not progress,
             file=sys.stderr, dynamic_ncols=True)
  for step in bar:
    bar.set_postfix(step=step)
    step_out = None if out is None else os.path.join(out, f"step_{step}")
    r = _reusable_report(step_out, step, task_names, eval_kwargs)
    try:
      if r is None:
        r = eval_fn(root, step_out, tasks, step=step, print_fn=None, **eval_kwargs)
    except VlaxError as e:  # e.g. a step that became unreadable: the others still count
      skipped.append({"step": step, "error": str(e)})
      tqdm.write(f"step {step}: skipped ({e})", file=sys.stderr)
      continue
    reports[step] = r
    tqdm.write(f"step {step}: mean success {r['average_success']:.2f}", file=sys.stderr)
  bar.close()
  if not reports:
    raise VlaxError(f"no step of {root} could be evaluated: "
                    f"{[s['error'] for s in skipped]}")
  first = next(iter(reports.values()))
  report = {"format": REPORT_FORMAT, "env": "metaworld", **assemble_curve(reports),
            "steps": sorted(reports), "skipped": skipped,
            "metadata": {"checkpoint": root, "episodes": first.get("episodes"),
                         **{k: v for k, v in (first.get("metadata") or {}).items()
                            if k not in ("checkpoint", "step")}}}
  if out is not None:
    report["plots"] = [os.path.relpath(plot_curve(report["curve"],
                                                  os.path.join(out, PLOT_NAME)), out)]
    report["step_reports"] = {str(s): f"step_{s}/report.json" for s in reports}
    with open(os.path.join(out, "report.json"), "w") as f:
      f.write(json.dumps(report, indent=2, sort_keys=True) + "\n")
  if print_fn is not None:
    print_fn(format_curve_table(report["curve"]))
    print_fn(f"best step: {report['best_step']}")
  return report
