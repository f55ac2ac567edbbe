"""Does web co-training help? The held-out-concept experiment of issue 21, one command.

Trains the stages of `experiments/cotraining_evidence.py` one after another, scores each
on held-out web questions (`vlax eval --web`) and each robot arm in closed loop on the
four colour conditions (`vlax eval --env toy_reach --condition ...`, the same episode
seeds for every arm, so outcomes pair up), then assembles the evidence:

  s0, s0_minus   web-only stage 0s (with / without purple in the web data)
  a1             from s0, robot only            a3   from s0, web weight 0.5
  a2             from s0, web weight 0.25       a4   from s0_minus, web 0.25 without purple

  python benchmarks/cotraining_evidence.py --out /tmp/ce [--arms a1,a2,a3,a4]
      [--steps-s0 1500] [--robot-steps 2000] [--episodes 200] [--seed 0] [--dry-run]

The fine-tuning arms are matched in robot examples: --robot-steps N gives an arm of web
weight w N / (1 - w) steps. Writes OUT/<stage>/ (the workdir, with web/ and loop/ eval
reports), OUT/cotraining.json, OUT/cotraining.md (VQA exact match and multiple choice per
stage with retention R = (acc - chance) / (acc_S0 - chance); follow rate and success per
condition per arm with chance and Wilson 95% intervals; exact McNemar tests on the shared
seeds; the gates and goals of the issue as PASS / FAIL lines) and OUT/cotraining.png.

A step whose output exists is skipped (its final checkpoint for training, its
report.json for an eval); delete OUT/<stage> to redo a stage. After s0's web eval the run
stops when s0 misses the VQA gate (more --steps-s0 in a fresh --out, or --ignore-gates).
Run it on a quiet machine: timings on a loaded one are not comparable.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from typing import Any, Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # `python benchmarks/cotraining_evidence.py` from a checkout
  sys.path.insert(0, ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
from vlax.data.concepts import mentions
from vlax.evaluation import stats
from vlax.evaluation.rollout import CONDITIONS
from vlax.experiments import cotraining_evidence as experiment
# pylint: enable=g-import-not-at-top,wrong-import-position

STAGES = (*experiment.STAGE0, *experiment.ARMS)
DEFAULT_CONFIG = "experiments/cotraining_evidence.py"
CONCEPT = experiment.CONCEPT
EMBODIMENT = "b"  # experiment.ROBOT_DATASET's
WEB_EXAMPLES = 1200
# Thresholds registered before running (issue 21 "Goals"; notes section 4).
S0_VQA_MIN = 0.90  # gate: S0 exact match, overall and on purple questions
SEEN_FOLLOW_MIN = 0.90  # gate: seen-colour follow of A1 and A2 ...
SEEN_FOLLOW_GAP = 0.05  # ... and A2 within this of A1
FORGET_MAX = 0.30  # A1's exact-match retention at most this
RETAIN_MIN = 0.80  # A2's and A3's at least this
TRANSFER_OVER_CHANCE = 0.25  # A2 follows purple at >= chance + this
TRANSFER_OVER_A1 = 0.20  # ... and >= A1 + this, with the paired p below
TRANSFER_P = 0.01
CONTROL_BAND = 0.10  # controls (and A4) within this of chance
# Paired comparisons on novel_target follow: (arm, baseline arm).
PAIRS = (("a2", "a1"), ("a3", "a1"), ("a2", "a4"))
_EPS = 1e-9  # rates are ratios of integers: compare with a hair of slack


# --------------------------------------------------------------------------- plan


def stage_steps(stage: str, args: argparse.Namespace) -> int:
  if stage in experiment.STAGE0:
    return int(args.steps_s0)
  return experiment.arm_steps(int(args.robot_steps), experiment.ARMS[stage][1])


def stage_settings(stage: str) -> dict[str, Any]:
  """What a stage is: where it starts, its web share, whether its web data lacks H."""
  if stage in experiment.STAGE0:
    return {"init": None, "web_weight": 1.0, "web_drop_concept": stage == "s0_minus",
            "robot_datasets": ""}
  init, weight, drop = experiment.ARMS[stage]
  return {"init": init, "web_weight": weight, "web_drop_concept": drop,
          "robot_datasets": experiment.ROBOT_DATASET}


def _paths(out: str, stage: str) -> dict[str, str]:
  d = os.path.join(out, stage)
  return {"workdir": d, "checkpoints": os.path.join(d, "checkpoints"),
          "web": os.path.join(d, "web"), "loop": os.path.join(d, "loop")}


def stage_commands(stage: str, args: argparse.Namespace) -> list[tuple[str, list[str]]]:
  """(path that exists once the step is done, command) of one stage, in order: train,
  web eval, and for the robot arms the closed loop on every condition."""
  p, s = _paths(args.out, stage), stage_settings(stage)
  steps = stage_steps(stage, args)
  # The held-out keys and the web share are the config's; repeated here so that the
  # command says what the stage is.
  train = ["vlax", "train", "--config", f"{args.config}:{stage}", "--workdir", p["workdir"],
           f"--config.num_steps={steps}", f"--config.seed={args.seed}",
           f"--config.data.web_weight={s['web_weight']}",
           f"--config.data.held_out_concept={CONCEPT}",
           f"--config.data.web_drop_concept={s['web_drop_concept']}"]
  if s["init"]:
    train += [f"--config.data.robot_datasets={s['robot_datasets']}",
              f"--config.init_from={_paths(args.out, s['init'])['checkpoints']}"]
  train += list(args.train_arg or ())
  web = ["vlax", "eval", "--web", "--checkpoint", p["checkpoints"], "--out", p["web"],
         "--web-examples", str(args.web_examples)]
  cmds = [(os.path.join(p["checkpoints"], str(steps)), train),
          (os.path.join(p["web"], "report.json"), web)]
  if s["init"]:
    loop = ["vlax", "eval", "--env", "toy_reach", "--checkpoint", p["checkpoints"],
            "--out", p["loop"], "--embodiment", EMBODIMENT, "--episodes",
            str(args.episodes), "--seed", str(args.eval_seed), "--condition",
            ",".join(CONDITIONS), "--concept", CONCEPT, *(args.eval_arg or ())]
    cmds.append((os.path.join(p["loop"], "report.json"), loop))
  return cmds


def _runnable(cmd: Sequence[str]) -> list[str]:
  return [sys.executable, "-m", "vlax.cli", *cmd[1:]] if cmd[0] == "vlax" else list(cmd)


def _check_workdir(stage: str, args: argparse.Namespace) -> None:
  """Refuses to resume a stage trained with other steps, seed or start: its results
  would silently mix two settings."""
  path = os.path.join(_paths(args.out, stage)["workdir"], "config.json")
  if not os.path.isfile(path):
    return
  with open(path) as f:
    saved = json.load(f)
  init = stage_settings(stage)["init"]
  want = {"num_steps": stage_steps(stage, args), "seed": int(args.seed),
          "init_from": _paths(args.out, init)["checkpoints"] if init else ""}
  diff = [f"{k}: {saved.get(k)!r} there, {v!r} now" for k, v in want.items()
          if saved.get(k) != v]
  if diff:
    raise SystemExit(f"error: {os.path.dirname(path)} was trained with other settings "
                     f"({'; '.join(diff)}): delete it or use another --out")


# --------------------------------------------------------------------------- results


def _read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


def _read_jsonl(path: str) -> list[dict[str, Any]]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def involves_concept(record: Mapping[str, Any], concept: str = CONCEPT) -> bool:
  """A web eval record shows or names the concept (the same test as the data filter:
  drawn colours, prompt or answer)."""
  return (concept in (record.get("colors") or ()) or
          mentions(str(record.get("prompt", "")), concept) or
          mentions(str(record.get("answer", "")), concept))


def _score(records: Sequence[Mapping[str, Any]], chance: Mapping[str, float]
           ) -> dict[str, Any]:
  n = len(records)
  if not n:
    return {"n": 0, "exact_match": None, "multiple_choice": None, "chance": None}
  return {"n": n,
          "exact_match": sum(bool(r["exact_match"]) for r in records) / n,
          "multiple_choice": sum(bool(r["mc_correct"]) for r in records) / n,
          "chance": sum(chance[r["type"]] for r in records) / n}


def vqa_summary(report: Mapping[str, Any], records: Sequence[Mapping[str, Any]],
                concept: str = CONCEPT) -> dict[str, Any]:
  """VQA scores of one web eval: the question types with a closed answer set (toy:
  color, position, shape; captions are free text and reported apart), overall
  ("all"), on questions that involve the concept and on the others."""
  types = report["types"]
  vqa_types = {t for t, r in types.items() if r.get("multiple_choice") is not None}
  chance = {t: float(types[t]["chance"]) for t in vqa_types}
  vqa = [r for r in records if r.get("type") in vqa_types]
  held = [r for r in vqa if involves_concept(r, concept)]
  rest = [r for r in vqa if not involves_concept(r, concept)]
  return {"all": _score(vqa, chance), "concept": _score(held, chance),
          "other": _score(rest, chance),
          "caption_exact_match": (types.get("caption") or {}).get("exact_match"),
          "overall_exact_match": report["overall"]["exact_match"],
          "types": sorted(vqa_types)}


def _rate(k: int, n: int) -> dict[str, Any]:
  ci = stats.wilson_interval(k, n)
  return {"k": int(k), "n": int(n), "rate": k / n if n else None,
          "ci": list(ci) if ci else None}


def loop_summary(report: Mapping[str, Any]) -> dict[str, Any]:
  """Per condition: the policy's follow and success rates with Wilson intervals, chance,
  its per-episode follows (for the paired tests) and the random / oracle baselines."""
  out: dict[str, Any] = {}
  results = report["results"]
  for cond in CONDITIONS:
    key = next((k for k in results if k.endswith(f"/{cond}")), None)
    if key is None or "policy" not in results[key]:
      continue
    by = results[key]
    r = by["policy"]
    n = int(r["episodes"])
    out[cond] = {
        "dataset": key.rsplit("/", 1)[0], "episodes": n,
        "follow": _rate(int(r["follows"]), n), "success": _rate(int(r["successes"]), n),
        "follow_chance": float(r["follow_chance"]),
        "follow_per_episode": [bool(x) for x in r["follow_per_episode"]],
        "random_follow": (by.get("random") or {}).get("follow_rate"),
        "oracle_success": (by.get("oracle") or {}).get("success_rate"),
        "invalid_decodes": r.get("invalid_decodes")}
  meta = report.get("metadata") or {}
  return {"conditions": out, "seed": meta.get("seed"), "episodes": meta.get("episodes")}


def web_eval_curve(metrics_path: str) -> list[list[float]]:
  """[[step, exact match], ...] of the periodic held-out web eval in a run's metrics."""
  if not os.path.isfile(metrics_path):
    return []
  return [[int(m["step"]), float(m["web_eval/exact_match"])]
          for m in _read_jsonl(metrics_path) if "web_eval/exact_match" in m]


def collect(out: str, stages: Sequence[str] = STAGES) -> dict[str, Any]:
  """The stages' eval reports -> {stages: {stage: {vqa, loop, curve, settings}},
  missing: ["<stage>/web", "<stage>/loop", ...]}."""
  result: dict[str, Any] = {"stages": {}, "missing": []}
  for stage in stages:
    p = _paths(out, stage)
    entry: dict[str, Any] = {"settings": stage_settings(stage), "vqa": None, "loop": None,
                             "curve": web_eval_curve(os.path.join(p["workdir"],
                                                                  "metrics.jsonl"))}
    web = os.path.join(p["web"], "report.json")
    examples = os.path.join(p["web"], "examples.jsonl")
    if os.path.isfile(web) and os.path.isfile(examples):
      entry["vqa"] = vqa_summary(_read_json(web), _read_jsonl(examples))
    else:
      result["missing"].append(f"{stage}/web")
    if stage in experiment.ARMS:
      loop = os.path.join(p["loop"], "report.json")
      if os.path.isfile(loop):
        entry["loop"] = loop_summary(_read_json(loop))
      else:
        result["missing"].append(f"{stage}/loop")
    result["stages"][stage] = entry
  return result


# --------------------------------------------------------------------------- analysis


def _vqa(res: Mapping[str, Any], stage: str, part: str = "all") -> dict[str, Any] | None:
  v = (res["stages"].get(stage) or {}).get("vqa")
  return v[part] if v else None


def _cond(res: Mapping[str, Any], stage: str, cond: str) -> dict[str, Any] | None:
  loop = (res["stages"].get(stage) or {}).get("loop")
  return (loop or {}).get("conditions", {}).get(cond)


def retention_table(res: Mapping[str, Any]) -> dict[str, dict[str, float | None]]:
  """R per arm against its own stage 0, for exact match and multiple choice, on all VQA
  questions and on those involving the concept."""
  out = {}
  for arm, (init, _, _) in experiment.ARMS.items():
    row = {}
    for part in ("all", "concept"):
      a, ref = _vqa(res, arm, part), _vqa(res, init, part)
      for score in ("exact_match", "multiple_choice"):
        row[f"{score}_{part}"] = (stats.retention(a[score], ref[score], a["chance"])
                                  if a and ref else None)
    out[arm] = row
  return out


def paired_tests(res: Mapping[str, Any], condition: str = "novel_target"
                 ) -> list[dict[str, Any]]:
  """Exact McNemar on per-episode follows of `PAIRS` (only when both arms ran the same
  episode seeds and count)."""
  out = []
  for a, b in PAIRS:
    ca, cb = _cond(res, a, condition), _cond(res, b, condition)
    la, lb = (res["stages"].get(a) or {}).get("loop"), (res["stages"].get(b) or {}).get("loop")
    if not (ca and cb):
      continue
    if (la["seed"], la["episodes"]) != (lb["seed"], lb["episodes"]):
      out.append({"a": a, "b": b, "condition": condition, "paired": False,
                  "detail": f"seeds/episodes differ: {la['seed']}/{la['episodes']} vs "
                            f"{lb['seed']}/{lb['episodes']}"})
      continue
    out.append({"a": a, "b": b, "condition": condition, "paired": True,
                "rate_a": ca["follow"]["rate"], "rate_b": cb["follow"]["rate"],
                **_mcnemar(ca, cb)})
  return out


def _mcnemar(ca: Mapping[str, Any], cb: Mapping[str, Any]) -> dict[str, Any]:
  """Follow-rate difference, discordant counts and exact McNemar p of two paired
  condition summaries (the same episode seeds)."""
  counts = stats.paired_counts(ca["follow_per_episode"], cb["follow_per_episode"])
  return {"difference": ca["follow"]["rate"] - cb["follow"]["rate"], **counts,
          "p_value": stats.mcnemar_exact(counts["only_a"], counts["only_b"])}


def word_tests(res: Mapping[str, Any]) -> list[dict[str, Any]]:
  """Per arm, exact McNemar of novel_target against nonsense follows. Both conditions show
  the same scenes (a purple target among seen colours) and differ only in the word ('purple'
  or 'zorp'), so the difference is what the word itself does, with the "go to the
  new-looking block" heuristic common to both cancelled. Reported, not a registered goal."""
  out = []
  for arm in experiment.ARMS:
    nt, ns = _cond(res, arm, "novel_target"), _cond(res, arm, "nonsense")
    if not (nt and ns) or len(nt["follow_per_episode"]) != len(ns["follow_per_episode"]):
      continue
    out.append({"arm": arm, "rate_word": nt["follow"]["rate"],
                "rate_nonsense": ns["follow"]["rate"], **_mcnemar(nt, ns)})
  return out


def _check(name: str, ok: bool | None, detail: str) -> dict[str, Any]:
  return {"name": name, "status": "missing" if ok is None else ("pass" if ok else "fail"),
          "detail": detail}


def _f(v: float | None, digits: int = 3) -> str:
  return "-" if v is None else f"{v:.{digits}f}"


def gates(res: Mapping[str, Any]) -> list[dict[str, Any]]:
  """The issue's gates: without them passing, the run says nothing."""
  s0, s0c = _vqa(res, "s0"), _vqa(res, "s0", "concept")
  em = s0 and s0["exact_match"]
  emc = s0c and s0c["exact_match"]
  out = [_check(f"S0 VQA exact match >= {S0_VQA_MIN:.2f}, overall and on {CONCEPT} "
                "questions", None if em is None or emc is None else
                em >= S0_VQA_MIN - _EPS and emc >= S0_VQA_MIN - _EPS,
                f"overall {_f(em)}, {CONCEPT} {_f(emc)}")]
  seen = {a: _cond(res, a, "seen") for a in ("a1", "a2")}
  rate = {a: c["follow"]["rate"] if c else None for a, c in seen.items()}
  for a in ("a1", "a2"):
    out.append(_check(f"{a.upper()} seen-colour follow >= {SEEN_FOLLOW_MIN:.2f}",
                      None if rate[a] is None else rate[a] >= SEEN_FOLLOW_MIN - _EPS,
                      _f(rate[a])))
  both = None not in rate.values()
  out.append(_check(f"A2 seen-colour follow within {SEEN_FOLLOW_GAP * 100:.0f} points "
                    "of A1", abs(rate["a2"] - rate["a1"]) <= SEEN_FOLLOW_GAP + _EPS
                    if both else None,
                    f"A2 - A1 = {rate['a2'] - rate['a1']:+.3f}" if both else "-"))
  return out


def s0_gate(res: Mapping[str, Any]) -> bool | None:
  """Whether S0 passed its VQA gate (None: not measured yet)."""
  status = gates(res)[0]["status"]
  return None if status == "missing" else status == "pass"



def _near_chance(what: str, cond: Mapping[str, Any] | None) -> Any:
  """A control's check: its follow rate within CONTROL_BAND of chance (None: not run)."""
  ok = None if cond is None else (
      abs(cond["follow"]["rate"] - cond["follow_chance"]) <= CONTROL_BAND + _EPS)
  return _check(f"{what} within {CONTROL_BAND * 100:.0f} points of chance", ok,
                f"{_f(cond and cond['follow']['rate'])} (chance "
                f"{_f(cond and cond['follow_chance'])})")

def goals(res: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
  """(the issue's retention and transfer goals as checks, notes on how to read them)."""
  ret = retention_table(res)
  out, notes = [], []
  r1 = ret["a1"]["exact_match_all"]
  out.append(_check(f"Retention: A1 exact-match R <= {FORGET_MAX:.1f}",
                    None if r1 is None else r1 <= FORGET_MAX + _EPS, f"R = {_f(r1, 2)}"))
  for arm in ("a2", "a3"):
    r = ret[arm]["exact_match_all"]
    out.append(_check(f"Retention: {arm.upper()} exact-match R >= {RETAIN_MIN:.1f}",
                      None if r is None else r >= RETAIN_MIN - _EPS, f"R = {_f(r, 2)}"))
  mc1 = ret["a1"]["multiple_choice_all"]
  if r1 is not None and mc1 is not None:
    kind = ("the answer format, not the knowledge (alignment forgetting)"
            if r1 <= FORGET_MAX + _EPS and mc1 >= RETAIN_MIN - _EPS else
            "the knowledge too" if mc1 <= FORGET_MAX + _EPS else "part of the knowledge")
    notes.append(f"A1 exact-match R {r1:.2f}, multiple-choice R {mc1:.2f}: robot-only "
                 f"fine-tuning lost {kind}." if r1 < RETAIN_MIN else
                 f"A1 exact-match R {r1:.2f}, multiple-choice R {mc1:.2f}: robot-only "
                 f"fine-tuning kept its VQA.")

  nt = {a: _cond(res, a, "novel_target") for a in ("a1", "a2", "a4")}
  a2 = nt["a2"]
  a2_rate = a2["follow"]["rate"] if a2 else None
  chance = a2["follow_chance"] if a2 else None
  out.append(_check(f"Transfer: A2 follows '{CONCEPT}' >= chance + "
                    f"{TRANSFER_OVER_CHANCE * 100:.0f} points",
                    None if a2 is None else a2_rate >= chance + TRANSFER_OVER_CHANCE - _EPS,
                    f"{_f(a2_rate)} (chance {_f(chance)})"))
  test = next((t for t in paired_tests(res) if (t["a"], t["b"]) == ("a2", "a1")), None)
  ok = None
  detail = "-"
  if test and test["paired"]:
    ok = (test["difference"] >= TRANSFER_OVER_A1 - _EPS and test["p_value"] < TRANSFER_P)
    detail = (f"A2 - A1 = {test['difference']:+.3f}, exact McNemar p = "
              f"{test['p_value']:.2g} ({test['only_a']} vs {test['only_b']} discordant)")
  elif test:
    detail = test["detail"]
  out.append(_check(f"Transfer: A2 >= A1 + {TRANSFER_OVER_A1 * 100:.0f} points on "
                    f"'{CONCEPT}', paired p < {TRANSFER_P}", ok, detail))
  nd, ns = _cond(res, "a2", "novel_distractor"), _cond(res, "a2", "nonsense")
  out.append(_check(f"Control: A2 follows a seen target beside a {CONCEPT} distractor "
                    f">= {SEEN_FOLLOW_MIN:.2f} (not drawn to the new colour)",
                    None if nd is None else nd["follow"]["rate"] >= SEEN_FOLLOW_MIN - _EPS,
                    _f(nd and nd["follow"]["rate"])))
  out.append(_near_chance(f"Control: A2 picks {CONCEPT} for a nonsense word", ns))
  out.append(_near_chance(f"Control: A4 (no {CONCEPT} in any data) follows '{CONCEPT}'",
                          nt["a4"]))
  a1 = nt["a1"]
  if a1 and a1["follow"]["rate"] >= a1["follow_chance"] + TRANSFER_OVER_CHANCE - _EPS:
    notes.append(f"A1 also follows '{CONCEPT}' ({a1['follow']['rate']:.2f}): the concept "
                 "survived robot-only fine-tuning at this scale; run A1 longer to see "
                 "whether it decays.")
  return out, notes


def analyze(res: dict[str, Any]) -> dict[str, Any]:
  """Adds retention, paired tests, gates, goals and notes to `collect`'s result."""
  res["retention"] = retention_table(res)
  res["paired_tests"] = paired_tests(res)
  res["word_tests"] = word_tests(res)
  res["gates"] = gates(res)
  res["goals"], res["notes"] = goals(res)
  return res


# --------------------------------------------------------------------------- outputs


def _ci(r: Mapping[str, Any] | None) -> str:
  if not r or r["rate"] is None:
    return "-"
  lo, hi = r["ci"]
  return f"{r['rate']:.3f} [{lo:.2f}, {hi:.2f}]"


def _line(check: Mapping[str, Any]) -> str:
  return f"- **{check['status'].upper()}** {check['name']}: {check['detail']}"


def markdown(res: Mapping[str, Any]) -> str:
  """VQA per stage, closed loop per arm and condition, paired tests, gates and goals."""
  lines = [f"VQA on held-out toy questions (exact match after generation / multiple "
           f"choice; color, position and shape questions; '{CONCEPT}' = questions that "
           f"show or name it). R = (acc - chance) / (acc of the arm's stage 0 - chance).",
           "", "| stage | web weight | exact | mc | chance | exact " + CONCEPT + " | mc " +
           CONCEPT + " | R exact | R mc | R exact " + CONCEPT + " | caption exact |",
           "|" + "---|" * 11]
  ret = res.get("retention", {})
  for stage, e in res["stages"].items():
    v = e.get("vqa")
    if not v:
      continue
    r = ret.get(stage, {})
    a, c = v["all"], v["concept"]
    lines.append("| " + " | ".join([
        stage, f"{e['settings']['web_weight']:g}"
        + (f" (no {CONCEPT})" if e["settings"]["web_drop_concept"] else ""),
        _f(a["exact_match"]), _f(a["multiple_choice"]), _f(a["chance"]),
        _f(c["exact_match"]), _f(c["multiple_choice"]),
        _f(r.get("exact_match_all"), 2), _f(r.get("multiple_choice_all"), 2),
        _f(r.get("exact_match_concept"), 2), _f(v["caption_exact_match"])]) + " |")
  loops = {s: e["loop"] for s, e in res["stages"].items() if e.get("loop")}
  if loops:
    lines += ["", "Closed loop (toy embodiment b, 2 blocks; the same episode seeds for "
              "every arm): rate [Wilson 95%].", "",
              "| arm | condition | follow | chance | success | random follow | "
              "oracle success |", "|" + "---|" * 7]
    for stage, loop in loops.items():
      for cond, c in loop["conditions"].items():
        lines.append("| " + " | ".join([
            stage, cond, _ci(c["follow"]), _f(c["follow_chance"]), _ci(c["success"]),
            _f(c["random_follow"]), _f(c["oracle_success"])]) + " |")
  tests = [t for t in res.get("paired_tests", []) if t.get("paired")]
  if tests:
    lines += ["", "Paired tests on novel_target follow (exact McNemar, two-sided):", "",
              "| A vs B | A | B | A - B | only A | only B | p |", "|" + "---|" * 7]
    for t in tests:
      lines.append(f"| {t['a']} vs {t['b']} | {t['rate_a']:.3f} | {t['rate_b']:.3f} | "
                   f"{t['difference']:+.3f} | {t['only_a']} | {t['only_b']} | "
                   f"{t['p_value']:.2g} |")
  words = res.get("word_tests", [])
  if words:
    lines += ["", f"The word itself (reported, not a registered goal): the same scenes, a "
              f"{CONCEPT} block among seen ones, with 'move to the {CONCEPT} block' "
              f"(novel_target) or 'move to the zorp block' (nonsense); follow = went to the "
              f"{CONCEPT} block; exact McNemar, two-sided:", "",
              f"| arm | '{CONCEPT}' | 'zorp' | difference | only '{CONCEPT}' | only 'zorp' "
              "| p |", "|" + "---|" * 7]
    for t in words:
      lines.append(f"| {t['arm']} | {t['rate_word']:.3f} | {t['rate_nonsense']:.3f} | "
                   f"{t['difference']:+.3f} | {t['only_a']} | {t['only_b']} | "
                   f"{t['p_value']:.2g} |")
  lines += ["", "Gates (if one fails, the run says nothing):"]
  lines += [_line(g) for g in res.get("gates", [])]
  lines += ["", "Goals:"] + [_line(g) for g in res.get("goals", [])]
  lines += [f"- {n}" for n in res.get("notes", [])]
  if res.get("missing"):
    lines.append(f"\nNot run yet: {', '.join(res['missing'])}.")
  return "\n".join(lines) + "\n"


def plot(res: Mapping[str, Any], path: str) -> str:
  """Three panels: VQA per stage (with chance), follow rate per condition per arm (Wilson
  intervals, chance), and the periodic held-out exact match during training."""
  fig = Figure(figsize=(15, 4.2))
  axes = [fig.add_subplot(1, 3, i + 1) for i in range(3)]
  stages = [(s, e) for s, e in res["stages"].items() if e.get("vqa")]
  ax = axes[0]
  for j, (key, part, label) in enumerate((("exact_match", "all", "exact"),
                                          ("exact_match", "concept", f"exact {CONCEPT}"),
                                          ("multiple_choice", "all", "mc"))):
    y = [e["vqa"][part][key] if e["vqa"][part][key] is not None else float("nan")
         for _, e in stages]
    ax.bar([i + (j - 1) * 0.27 for i in range(len(stages))], y, 0.27, label=label)
  for i, (_, e) in enumerate(stages):
    ch = e["vqa"]["all"]["chance"]
    if ch is not None:
      ax.hlines(ch, i - 0.4, i + 0.4, colors="black", lw=1.2)
  ax.set_xticks(range(len(stages)))
  ax.set_xticklabels([s for s, _ in stages])
  ax.set_ylim(0, 1.05)
  ax.set_title("held-out VQA (black: chance)", fontsize=10)
  ax.legend(fontsize=8)
  ax = axes[1]
  loops = [(s, e["loop"]) for s, e in res["stages"].items() if e.get("loop")]
  width = 0.8 / max(1, len(loops))
  for j, (stage, loop) in enumerate(loops):
    cs = [loop["conditions"].get(c) for c in CONDITIONS]
    y = [c["follow"]["rate"] if c else float("nan") for c in cs]
    err = [[(c["follow"]["rate"] - c["follow"]["ci"][0]) if c else 0 for c in cs],
           [(c["follow"]["ci"][1] - c["follow"]["rate"]) if c else 0 for c in cs]]
    ax.bar([i + j * width for i in range(len(CONDITIONS))], y, width, yerr=err,
           capsize=2, label=stage)
  chance = next((c["follow_chance"] for _, l in loops for c in l["conditions"].values()),
                None)
  if chance is not None:
    ax.axhline(chance, color="black", lw=1, ls="--", label="chance")
  ax.set_xticks([i + 0.4 - width / 2 for i in range(len(CONDITIONS))])
  ax.set_xticklabels(CONDITIONS, fontsize=8)
  ax.set_ylim(0, 1.05)
  ax.set_title("closed-loop follow rate (Wilson 95%)", fontsize=10)
  ax.legend(fontsize=8)
  ax = axes[2]
  for stage, e in res["stages"].items():
    if e.get("curve"):
      xs, ys = zip(*e["curve"])
      ax.plot(xs, ys, marker="o", ms=3, label=stage)
  ax.set_ylim(0, 1.05)
  ax.set_xlabel("training step")
  ax.set_title("held-out exact match during training (captions incl.)", fontsize=10)
  if ax.get_lines():
    ax.legend(fontsize=8)
  fig.tight_layout()
  FigureCanvasAgg(fig)
  fig.savefig(path, dpi=80)
  return path


def write_outputs(out: str, meta: Mapping[str, Any]) -> dict[str, Any]:
  """OUT/cotraining.json, OUT/cotraining.md and OUT/cotraining.png from what is on disk."""
  res = analyze(collect(out))
  res["metadata"] = dict(meta)
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "cotraining.json"), "w") as f:
    json.dump(res, f, indent=2, sort_keys=True, allow_nan=False)
  with open(os.path.join(out, "cotraining.md"), "w") as f:
    f.write(markdown(res))
  if any(e.get("vqa") or e.get("loop") for e in res["stages"].values()):
    plot(res, os.path.join(out, "cotraining.png"))
  return res


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  p.add_argument("--out", required=True, help="one directory per stage, and the results")
  p.add_argument("--arms", default=",".join(experiment.ARMS),
                 help=f"subset of {','.join(STAGES)}; the stage 0s they start from are "
                      "added")
  p.add_argument("--steps-s0", type=int, default=experiment.S0_STEPS,
                 help="web-only steps of s0 and s0_minus")
  p.add_argument("--robot-steps", type=int, default=experiment.ROBOT_STEPS,
                 help="N: every arm sees N steps' worth of robot examples (N / (1 - w) "
                      "steps at web weight w)")
  p.add_argument("--episodes", type=int, default=200, help="closed-loop episodes per "
                 "condition")
  p.add_argument("--seed", type=int, default=0, help="training seed of every stage")
  p.add_argument("--eval-seed", type=int, default=0,
                 help="closed-loop episode seed (the same for every arm and --seed)")
  p.add_argument("--web-examples", type=int, default=WEB_EXAMPLES,
                 help="held-out web questions per stage")
  p.add_argument("--config", default=DEFAULT_CONFIG)
  p.add_argument("--train-arg", action="append", default=[],
                 help="extra argument for every `vlax train` (repeat)")
  p.add_argument("--eval-arg", action="append", default=[],
                 help="extra argument for every closed-loop `vlax eval` (repeat)")
  p.add_argument("--ignore-gates", action="store_true",
                 help="go on to the arms when s0 misses its VQA gate")
  p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
  args = p.parse_args(argv)
  chosen = [a.strip().lower() for a in args.arms.split(",") if a.strip()]
  bad = [a for a in chosen if a not in STAGES]
  if bad or not chosen:
    p.error(f"--arms: unknown {bad}; use a subset of {','.join(STAGES)}")
  needed = set(chosen) | {experiment.ARMS[a][0] for a in chosen if a in experiment.ARMS}
  args.stages = [s for s in STAGES if s in needed]  # stage 0s first
  for name in ("steps_s0", "robot_steps", "episodes", "web_examples"):
    if getattr(args, name) < 1:
      p.error(f"--{name.replace('_', '-')} must be >= 1")
  local = lambda x: x if "://" in x else os.path.abspath(x)
  args.out = local(args.out)
  if not os.path.exists(args.config) and os.path.exists(os.path.join(ROOT, args.config)):
    args.config = os.path.join(ROOT, args.config)  # the default, from another directory
  return args


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(argv)
  plan = [(stage, stage_commands(stage, args)) for stage in args.stages]
  if args.dry_run:
    for stage, cmds in plan:
      print(f"# {stage}")
      for _, cmd in cmds:
        print(shlex.join(cmd))
    total = sum(stage_steps(s, args) for s in args.stages)
    print(f"# {total} training steps in all")
    return 0
  env = {**os.environ, "OPENBLAS_NUM_THREADS": "1",
         "PYTHONPATH": os.pathsep.join([ROOT] + ([os.environ["PYTHONPATH"]]
                                                 if os.environ.get("PYTHONPATH") else []))}
  meta = {k: v for k, v in vars(args).items() if k != "dry_run"}
  for stage, cmds in plan:
    _check_workdir(stage, args)
    for done, cmd in cmds:
      if os.path.exists(done):
        print(f"# {stage}: {os.path.relpath(done, args.out)} exists, skipped", flush=True)
        continue
      print(f"# {stage}: {shlex.join(cmd)}", flush=True)
      rc = subprocess.call(_runnable(cmd), env=env)
      if rc:
        print(f"error: stage {stage} failed (exit {rc}): {shlex.join(cmd)}",
              file=sys.stderr)
        write_outputs(args.out, meta)
        return rc
    if stage == "s0" and not args.ignore_gates:
      res = write_outputs(args.out, meta)
      if s0_gate(res) is False:
        print(f"error: s0 missed its gate ({res['gates'][0]['detail']}): train it longer "
              f"(--steps-s0 in a fresh --out) or pass --ignore-gates", file=sys.stderr)
        return 3
  res = write_outputs(args.out, meta)
  print(markdown(res))
  return 0


if __name__ == "__main__":
  sys.exit(main())
