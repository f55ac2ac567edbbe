"""The Meta-World diagnostic ladder: one command, each rung a row of success rates.

Every rung trains (or reuses) a policy on the same demos with the same config and is
evaluated by the same closed loop on the same eval seeds, so the rows differ only in what
the rung changes:

  state_oracle  full simulator state (object and goal positions) as proprio, no cameras:
                bounds everything except vision (action tokens, chunking, re-planning)
  image         the image policy (the config as shipped)
  shuffle       the image checkpoint with every episode given another episode's images:
                what the cameras contribute (`--image-ablation shuffle`, no training)
  no_proprio    the image checkpoint with prompts that leave the proprio out
                (`--proprio-ablation drop`, no training: the shipped recipe trains with
                proprio dropout, so those prompts are ones it was trained on)
  probe         `vlax vision-probe` on the image checkpoint: R^2 of object / goal
                position from the vision tower, beside a random tower (no training)

  python benchmarks/metaworld_ladder.py --data-dir /tmp/mw64 --tasks push,pick-place,reach \\
      --steps 3000 --out /tmp/mw_ladder [--dry-run]

Writes OUT/<rung>/ (workdir with checkpoints/ and eval/ or probe/), OUT/ladder.json,
OUT/ladder.md (success per task per rung, the probe's R^2) and OUT/ladder.png. A rung
whose eval report exists is not run again (delete OUT/<rung>/eval to redo it); `vlax
train` resumes an unfinished workdir. Run rungs one at a time on a quiet machine: timings
and results on a loaded one are not comparable.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from typing import Any, Mapping, Sequence

RUNGS = ("state_oracle", "image", "shuffle", "no_proprio", "probe")
DEFAULT_CONFIG = "experiments/metaworld_mt10.py"
# Config overrides of the rungs that train their own policy.
TRAIN_OVERRIDES = {
    # The measured oracle recipe (README "diagnostic ladder"): one action-bin token per
    # state dim and proprio noise, without which it memorises its 50 demos' layouts.
    "state_oracle": ("--config.data.proprio_source=full_state", "--config.data.cameras=()",
                     "--config.data.proprio_format=action_tokens",
                     "--config.data.proprio_noise=0.05", "--config.data.max_len=96",
                     "--config.data.proprio_dropout=0"),
    "image": (),
}
# Rungs that use another rung's checkpoint: rung -> (checkpoint rung, extra eval args).
REUSES = {"shuffle": ("image", ("--image-ablation", "shuffle")),
          "no_proprio": ("image", ("--proprio-ablation", "drop")), "probe": ("image", ())}
PROBE_TARGETS = ("object_pos", "object_pos_t0", "goal_pos")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def robot_datasets(tasks: str) -> str:
  """--tasks -> config.data.robot_datasets: the mixture for mt10, else the task datasets."""
  if tasks.strip().lower() == "mt10":
    return "metaworld_mt10"
  names = [t.strip().removesuffix("-v3") for t in tasks.split(",") if t.strip()]
  if not names:
    raise SystemExit("error: --tasks is empty")
  return ",".join("metaworld_" + n.replace("-", "_") for n in names)


def rung_commands(rung: str, args: argparse.Namespace) -> list[list[str]]:
  """The commands of one rung, in order (train first where the rung trains)."""
  vlax = ["vlax"]  # run as `python -m vlax.cli` of this checkout (see `_runnable`)
  out = os.path.join(args.out, rung)
  if rung in TRAIN_OVERRIDES:
    train = [*vlax, "train", "--config", args.config, "--workdir", out,
             f"--config.data.data_dir={args.data_dir}",
             f"--config.data.robot_datasets={robot_datasets(args.tasks)}",
             *TRAIN_OVERRIDES[rung]]
    if args.steps:
      train.append(f"--config.num_steps={int(args.steps)}")
    train += list(args.train_arg or ())
    return [train, _eval_command(vlax, out, os.path.join(out, "eval"), args)]
  source, extra = REUSES[rung]
  ckpt = os.path.join(args.out, source)
  if rung == "probe":
    tasks = "push,pick-place" if args.tasks.strip().lower() == "mt10" else args.tasks
    return [[*vlax, "vision-probe", "--checkpoint", ckpt, "--data-dir", args.data_dir,
             "--tasks", tasks, "--out", os.path.join(out, "probe")]]
  return [_eval_command(vlax, ckpt, os.path.join(out, "eval"), args, extra)]


def _runnable(cmd: Sequence[str]) -> list[str]:
  return [sys.executable, "-m", "vlax.cli", *cmd[1:]] if cmd[0] == "vlax" else list(cmd)


def _eval_command(vlax: list[str], ckpt: str, out: str, args: argparse.Namespace,
                  extra: Sequence[str] = ()) -> list[str]:
  cmd = [*vlax, "eval", "--env", "metaworld", "--tasks", args.tasks, "--checkpoint", ckpt,
         "--out", out, "--episodes", str(args.episodes), "--seed", str(args.seed),
         "--workers", str(args.workers), *extra]
  return cmd + list(args.eval_arg or ())


def _report_path(rung: str, out: str) -> str:
  return os.path.join(out, rung, "probe" if rung == "probe" else "eval", "report.json")


# --------------------------------------------------------------------------- results


def collect(out: str, rungs: Sequence[str]) -> dict[str, Any]:
  """The rungs' report.json files -> {rungs: {rung: {tasks: {T: success}, average} or
  {probe: {T: {tower: {target: R^2}}}}}, missing: [...]}."""
  result: dict[str, Any] = {"rungs": {}, "missing": []}
  for rung in rungs:
    path = _report_path(rung, out)
    if not os.path.isfile(path):
      result["missing"].append(rung)
      continue
    with open(path) as f:
      r = json.load(f)
    if rung == "probe":
      result["rungs"][rung] = {"probe": {
          task: {tower: {t: (by_feat.get("all", next(iter(by_feat.values()))).get(t)
                             or {}).get("r2") for t in PROBE_TARGETS}
                 for tower, by_feat in res.items()}
          for task, res in r["tasks"].items()}}
    else:
      result["rungs"][rung] = {
          "tasks": {t: v["success_rate"] for t, v in r["tasks"].items()},
          "average": r["average_success"],
          "expert": r.get("baselines_average", {}).get("expert")}
  return result


def _fmt(v: Any) -> str:
  return "-" if v is None else f"{v:.2f}"


def markdown(ladder: Mapping[str, Any]) -> str:
  """Success per task (columns) per rung (rows), then the probe's R^2."""
  rows = {r: v for r, v in ladder["rungs"].items() if "tasks" in v}
  tasks = list(dict.fromkeys(t for v in rows.values() for t in v["tasks"]))
  lines = []
  if rows:
    head = ["rung", *(t.removesuffix("-v3") for t in tasks), "average"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for rung, v in rows.items():
      lines.append("| " + " | ".join([rung, *(_fmt(v["tasks"].get(t)) for t in tasks),
                                      _fmt(v["average"])]) + " |")
    expert = next((v["expert"] for v in rows.values() if v.get("expert") is not None), None)
    if expert is not None:
      lines.append(f"\nScripted expert on the same seeds: {expert:.2f} average.")
  probe = ladder["rungs"].get("probe", {}).get("probe")
  if probe:
    lines += ["", "Vision probe (R^2 on held-out demo episodes, all cameras):", "",
              "| task | tower | " + " | ".join(PROBE_TARGETS) + " |",
              "|" + "---|" * (2 + len(PROBE_TARGETS))]
    for task, by_tower in probe.items():
      for tower, r2 in by_tower.items():
        lines.append(f"| {task.removesuffix('-v3')} | {tower} | " +
                     " | ".join(_fmt(r2[t]) for t in PROBE_TARGETS) + " |")
  if ladder.get("missing"):
    lines.append(f"\nNot run yet: {', '.join(ladder['missing'])}.")
  return "\n".join(lines) + "\n"


def plot(ladder: Mapping[str, Any], path: str) -> str:
  """Grouped bars: success per task, one bar per rung (the average as the last group)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  rows = {r: v for r, v in ladder["rungs"].items() if "tasks" in v}
  tasks = list(dict.fromkeys(t for v in rows.values() for t in v["tasks"]))
  groups = [t.removesuffix("-v3") for t in tasks] + ["average"]
  fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(groups) + 2), 4.2))
  width = 0.8 / max(1, len(rows))
  for j, (rung, v) in enumerate(rows.items()):
    y = [v["tasks"].get(t, float("nan")) for t in tasks] + [v["average"]]
    ax.bar([i + j * width for i in range(len(groups))], y, width, label=rung)
  ax.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))])
  ax.set_xticklabels(groups, fontsize=8, rotation=30, ha="right")
  ax.set_ylim(0, 1.05)
  ax.set_ylabel("success rate")
  ax.set_title("Meta-World diagnostic ladder (same demos, same eval seeds)", fontsize=10)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)
  return path


def write_outputs(out: str, rungs: Sequence[str], meta: Mapping[str, Any]) -> dict[str, Any]:
  ladder = {**collect(out, rungs), "metadata": dict(meta)}
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "ladder.json"), "w") as f:
    json.dump(ladder, f, indent=2, sort_keys=True)
  with open(os.path.join(out, "ladder.md"), "w") as f:
    f.write(markdown(ladder))
  if any("tasks" in v for v in ladder["rungs"].values()):
    plot(ladder, os.path.join(out, "ladder.png"))
  return ladder


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  p.add_argument("--data-dir", required=True, help="Meta-World demos (make_metaworld_demos)")
  p.add_argument("--out", required=True, help="one directory per rung, and the ladder files")
  p.add_argument("--tasks", default="push,pick-place,reach",
                 help="mt10 or T1,T2 (trained on and evaluated)")
  p.add_argument("--rungs", default=",".join(RUNGS), help=f"subset of {','.join(RUNGS)}")
  p.add_argument("--steps", type=int, default=None,
                 help="training steps per rung (default: the config's num_steps)")
  p.add_argument("--config", default=DEFAULT_CONFIG)
  p.add_argument("--episodes", type=int, default=20, help="eval episodes per task")
  p.add_argument("--seed", type=int, default=0, help="eval seed (the same for every rung)")
  p.add_argument("--workers", type=int, default=1, help="eval processes")
  p.add_argument("--train-arg", action="append", default=[],
                 help="extra argument for every `vlax train` (repeat), e.g. "
                      "--train-arg=--config.data.augment=True")
  p.add_argument("--eval-arg", action="append", default=[],
                 help="extra argument for every `vlax eval` (repeat), e.g. "
                      "--eval-arg=--temporal-ensemble")
  p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
  args = p.parse_args(argv)
  args.rungs = [r.strip() for r in args.rungs.split(",") if r.strip()]
  bad = [r for r in args.rungs if r not in RUNGS]
  if bad or not args.rungs:
    p.error(f"--rungs: unknown {bad}; use a subset of {','.join(RUNGS)}")
  args.rungs = [r for r in RUNGS if r in args.rungs]  # the ladder's order
  local = lambda x: x if "://" in x else os.path.abspath(x)
  args.out, args.data_dir = local(args.out), local(args.data_dir)
  if not os.path.exists(args.config) and os.path.exists(os.path.join(ROOT, args.config)):
    args.config = os.path.join(ROOT, args.config)  # the default, from another directory
  return args


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(argv)
  plan = [(rung, rung_commands(rung, args)) for rung in args.rungs]
  if args.dry_run:
    for rung, cmds in plan:
      print(f"# {rung}")
      for cmd in cmds:
        print(shlex.join(cmd))
    return 0
  env = {**os.environ, "OPENBLAS_NUM_THREADS": "1",
         "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"),
         "PYTHONPATH": os.pathsep.join([ROOT] + ([os.environ["PYTHONPATH"]]
                                                 if os.environ.get("PYTHONPATH") else []))}
  for rung, cmds in plan:
    if os.path.isfile(_report_path(rung, args.out)):
      print(f"# {rung}: report exists, skipped", flush=True)
      continue
    for cmd in cmds:
      print(f"# {rung}: {shlex.join(cmd)}", flush=True)
      rc = subprocess.call(_runnable(cmd), env=env)
      if rc:
        print(f"error: rung {rung} failed (exit {rc}): {shlex.join(cmd)}", file=sys.stderr)
        write_outputs(args.out, args.rungs, vars(args))
        return rc
  ladder = write_outputs(args.out, args.rungs, vars(args))
  print(markdown(ladder))
  return 0


if __name__ == "__main__":
  sys.exit(main())
