"""Closed-loop learning curve (`vlax eval --env metaworld --all-steps`): step selection,
curve assembly and outputs, with the per-step Meta-World eval replaced by a fake."""

from __future__ import annotations

import argparse
import json
import os

import pytest

from vlax.errors import VlaxError
from vlax.evaluation import metaworld_curve, run

TASKS = ("reach-v3", "push-v3")


def _run_dir(tmp_path, steps=(100, 200, 300), aside=("250.diverged", "275.unreadable")):
  root = tmp_path / "run" / "checkpoints"
  for s in [str(x) for x in steps] + list(aside):
    (root / s / "params").mkdir(parents=True)
  return str(tmp_path / "run")


def _fake_eval(success_by_step, calls=None, fail_steps=()):
  def fn(checkpoint, out, tasks, *, step, print_fn=None, **kwargs):
    del print_fn
    if calls is not None:
      calls.append({"checkpoint": checkpoint, "step": step, **kwargs})
    if step in fail_steps:
      raise VlaxError(f"checkpoint {checkpoint} step {step} is unreadable")
    per = success_by_step[step]
    report = {"tasks": {t: {"success_rate": v} for t, v in zip(TASKS, per)},
              "average_success": sum(per) / len(per), "episodes": kwargs.get("episodes"),
              "metadata": {"checkpoint": checkpoint, "step": step, "seed": kwargs.get("seed")}}
    if out is not None:
      os.makedirs(out, exist_ok=True)
      with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(report, f)
    return report
  return fn


def test_select_and_parse_steps():
  assert metaworld_curve.parse_steps(" 600,300,,300") == [300, 600]
  assert metaworld_curve.parse_steps(None) is None
  with pytest.raises(VlaxError, match="'x'"):
    metaworld_curve.parse_steps("300,x")
  assert metaworld_curve.select_steps([300, 100], None) == [100, 300]
  assert metaworld_curve.select_steps([100, 300], [300]) == [300]
  with pytest.raises(VlaxError, match=r"\[200\] not among"):
    metaworld_curve.select_steps([100, 300], [200])
  with pytest.raises(VlaxError, match="no checkpoint steps"):
    metaworld_curve.select_steps([], None)


def test_assemble_curve_best_step_prefers_earliest_tie():
  reports = {s: {"average_success": m, "tasks": {"reach-v3": {"success_rate": m}}}
             for s, m in [(300, 0.5), (100, 0.2), (200, 0.5)]}
  c = metaworld_curve.assemble_curve(reports)
  assert [x["step"] for x in c["curve"]] == [100, 200, 300]
  assert c["best_step"] == 200
  assert c["curve"][0] == {"step": 100, "mean_success": 0.2, "per_task": {"reach-v3": 0.2}}


def test_all_steps_writes_curve_and_skips_set_aside_steps(tmp_path):
  workdir = _run_dir(tmp_path)
  calls = []
  fake = _fake_eval({100: (0.0, 0.2), 200: (0.6, 0.4), 300: (0.4, 0.4)}, calls)
  out = str(tmp_path / "out")
  report = metaworld_curve.evaluate_curve(workdir, out, ",".join(TASKS), eval_fn=fake,
                                          print_fn=None, progress=False, episodes=5, seed=3)
  assert [c["step"] for c in calls] == [100, 200, 300]  # not 250.diverged / 275.unreadable
  assert {c["seed"] for c in calls} == {3} and {c["episodes"] for c in calls} == {5}
  assert all(c["checkpoint"].endswith(os.path.join("run", "checkpoints")) for c in calls)
  assert report["best_step"] == 200
  with open(os.path.join(out, "report.json")) as f:
    on_disk = json.load(f)
  assert on_disk["curve"][1] == {"step": 200, "mean_success": 0.5,
                                 "per_task": {"reach-v3": 0.6, "push-v3": 0.4}}
  assert on_disk["best_step"] == 200 and on_disk["skipped"] == []
  for s in (100, 200, 300):
    assert os.path.isfile(os.path.join(out, f"step_{s}", "report.json"))
  assert os.path.getsize(os.path.join(out, "metaworld_curve.png")) > 1000


def test_steps_subset_and_a_failing_step_is_skipped(tmp_path):
  workdir = _run_dir(tmp_path)
  fake = _fake_eval({100: (0.0, 0.0), 300: (1.0, 0.5)}, fail_steps=(100,))
  report = metaworld_curve.evaluate_curve(workdir, None, "reach,push", steps="100,300",
                                          eval_fn=fake, print_fn=None, progress=False)
  assert report["steps"] == [300] and report["best_step"] == 300
  assert report["skipped"][0]["step"] == 100 and "unreadable" in report["skipped"][0]["error"]
  with pytest.raises(VlaxError, match="no step"):
    metaworld_curve.evaluate_curve(workdir, None, "reach", steps="100", eval_fn=fake,
                                   print_fn=None, progress=False)


def test_single_step_dir_is_refused(tmp_path):
  workdir = _run_dir(tmp_path)
  with pytest.raises(VlaxError, match="single step"):
    metaworld_curve.evaluate_curve(os.path.join(workdir, "checkpoints", "100"), None,
                                   "reach", eval_fn=_fake_eval({}), progress=False)


def _args(**kw):
  base = dict(checkpoint=None, out=None, step=None, env="metaworld", tasks="reach",
              episodes=2, seed=0, execute_steps=None, max_steps=None, image_ablation=None,
              baselines="", workers=1, config=None, all_steps=False, steps=None,
              max_batches=None)
  base.update(kw)
  return argparse.Namespace(**base)


def test_cli_dispatch(tmp_path, monkeypatch):
  workdir = _run_dir(tmp_path, steps=(10, 20), aside=())
  calls = []
  monkeypatch.setattr(metaworld_curve.metaworld_eval, "evaluate_metaworld",
                      _fake_eval({10: (0.1,), 20: (0.3,)}, calls))
  out = str(tmp_path / "o")
  report = run.main_eval(_args(checkpoint=workdir, out=out, all_steps=True))
  assert report["best_step"] == 20 and [c["step"] for c in calls] == [10, 20]
  assert os.path.isfile(os.path.join(out, "report.json"))
  assert not os.path.exists(out + ".partial")
  with pytest.raises(VlaxError, match="--step picks one"):
    run.main_eval(_args(checkpoint=workdir, step=10, steps="10"))
  with pytest.raises(VlaxError, match="either --all-steps or --steps"):
    run.main_eval(_args(checkpoint=workdir, all_steps=True, steps="10"))
  with pytest.raises(VlaxError, match="are for --env metaworld"):
    run.main_eval(_args(checkpoint=workdir, env=None, all_steps=True))
  calls.clear()  # --layouts reaches every step's eval; it is refused without --env metaworld
  run.main_eval(_args(checkpoint=workdir, out=str(tmp_path / "t"), all_steps=True,
                      layouts="train"))
  assert [c["layouts"] for c in calls] == ["train", "train"]
  with pytest.raises(VlaxError, match="--layouts is for --env metaworld"):
    run.main_eval(_args(checkpoint=workdir, env="toy_reach", layouts="train"))
  calls.clear()  # so does --proprio-ablation
  run.main_eval(_args(checkpoint=workdir, out=str(tmp_path / "p"), all_steps=True,
                      proprio_ablation="drop"))
  assert [c["proprio_ablation"] for c in calls] == ["drop", "drop"]
  with pytest.raises(VlaxError, match="--proprio-ablation is for --env metaworld"):
    run.main_eval(_args(checkpoint=workdir, env="toy_reach", proprio_ablation="drop"))


def _step_report(step, seed=0, episodes=2, tasks=("reach-v3", "push-v3"), success=0.5):
  return {"tasks": {t: {"success_rate": success} for t in tasks},
          "average_success": success, "episodes": episodes, "baselines_average": {},
          "metadata": {"checkpoint": "elsewhere", "step": step, "seed": seed,
                       "execute_steps": 4, "max_steps": 200, "image_ablation": None,
                       "proprio_ablation": None, "temporal_ensemble": None,
                       "layouts": "eval"}}


def _write_step(directory, step, report):
  """A finished curve step as the curve writes it: DIR/step_<N>/report.json."""
  os.makedirs(os.path.join(directory, f"step_{step}"))
  with open(os.path.join(directory, f"step_{step}", "report.json"), "w") as f:
    json.dump(report, f)


def test_a_step_already_evaluated_with_the_same_settings_is_read_not_rerun(tmp_path):
  workdir = _run_dir(tmp_path)
  out = str(tmp_path / "out")
  for step, report in ((300, _step_report(300, success=0.9)),      # same settings: reused
                       (200, _step_report(200, seed=7)),           # other seed: re-run
                       (100, _step_report(100, tasks=("reach-v3",)))):  # other tasks
    _write_step(out, step, report)
  calls = []
  fake = _fake_eval({100: (0.0, 0.2), 200: (0.6, 0.4), 300: (0.0, 0.0)}, calls)
  report = metaworld_curve.evaluate_curve(workdir, out, "reach,push", eval_fn=fake,
                                          print_fn=None, progress=False, episodes=2,
                                          seed=0, baselines=())
  assert [c["step"] for c in calls] == [100, 200]
  assert report["curve"][2]["mean_success"] == 0.9 and report["best_step"] == 300
  calls.clear()  # a baseline the stored report lacks: run again
  metaworld_curve.evaluate_curve(workdir, out, "reach,push", steps="300", eval_fn=fake,
                                 print_fn=None, progress=False, episodes=2, seed=0,
                                 baselines=("expert",))
  assert [c["step"] for c in calls] == [300]


def test_an_interrupted_cli_curve_keeps_its_finished_steps_and_resumes(tmp_path,
                                                                         monkeypatch):
  """`vlax eval --all-steps` stages OUT.partial; stopped at step 300, the steps it
  finished land in OUT, and the same command then evaluates step 300 alone."""
  workdir = _run_dir(tmp_path)
  calls = []

  def fake(checkpoint, out, tasks, *, step, print_fn=None, **kwargs):
    del checkpoint, tasks, print_fn, kwargs
    calls.append(step)
    if step == 300 and len(calls) == 3:
      raise RuntimeError("stopped")
    report = _step_report(step, tasks=("reach-v3",))
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "report.json"), "w") as f:
      json.dump(report, f)
    return report

  monkeypatch.setattr(metaworld_curve.metaworld_eval, "evaluate_metaworld", fake)
  out = str(tmp_path / "curve")
  with pytest.raises(RuntimeError, match="stopped"):
    run.main_eval(_args(checkpoint=workdir, out=out, all_steps=True))
  assert sorted(os.listdir(out)) == ["step_100", "step_200"]
  assert not os.path.exists(out + ".partial")
  report = run.main_eval(_args(checkpoint=workdir, out=out, all_steps=True))
  assert calls == [100, 200, 300, 300] and report["steps"] == [100, 200, 300]
  assert os.path.isfile(os.path.join(out, "report.json"))


def test_a_curve_killed_past_its_cleanup_keeps_its_finished_steps(tmp_path, monkeypatch):
  """SIGKILL skips the cleanup: the finished steps stay in OUT.partial, and the next run
  takes them back into OUT instead of deleting them with the stale staging directory."""
  workdir = _run_dir(tmp_path)
  out = str(tmp_path / "curve")
  for step in (100, 200):  # what a killed run leaves: its finished steps, staged
    _write_step(out + ".partial", step, _step_report(step, tasks=("reach-v3",)))
  calls = []
  monkeypatch.setattr(metaworld_curve.metaworld_eval, "evaluate_metaworld",
                      _fake_eval({300: (0.7,)}, calls))
  report = run.main_eval(_args(checkpoint=workdir, out=out, all_steps=True))
  assert [c["step"] for c in calls] == [300] and report["steps"] == [100, 200, 300]
  assert sorted(n for n in os.listdir(out) if n.startswith("step_")) == [
      "step_100", "step_200", "step_300"]
  assert not os.path.exists(out + ".partial")
