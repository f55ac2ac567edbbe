"""The co-training evidence experiment without training: its statistics against
hand-computed values, the driver's dry-run plan, the arms' configs, and the tables, gates
and goals assembled from fake eval reports."""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib

import pytest

from vlax.config import load_config
from vlax.data.cotrain import held_out_concept, resolve_data_config, robot_entries
from vlax.evaluation import stats
from vlax.training.config import with_defaults
from vlax.training.config_checks import check_train_config

_ROOT = pathlib.Path(__file__).resolve().parents[2]
_CONFIG = str(_ROOT / "experiments" / "cotraining_evidence.py")
_spec = importlib.util.spec_from_file_location(
    "cotraining_evidence_driver", _ROOT / "benchmarks" / "cotraining_evidence.py")
driver = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(driver)
experiment = driver.experiment


# --------------------------------------------------------------------------- stats


def test_wilson_interval_hand_values():
  # p = 0.8, n = 10: centre (0.8 + z^2/20) / (1 + z^2/10), the published (0.490, 0.943).
  lo, hi = stats.wilson_interval(8, 10)
  assert lo == pytest.approx(0.49016, abs=1e-4) and hi == pytest.approx(0.94332, abs=1e-4)
  # No successes: lower bound 0, upper z^2/n / (1 + z^2/n) = 0.38415/1.38415.
  assert stats.wilson_interval(0, 10) == pytest.approx((0.0, 0.27753), abs=1e-4)
  lo, hi = stats.wilson_interval(100, 200)
  assert (lo + hi) / 2 == pytest.approx(0.5) and hi - lo == pytest.approx(0.13728, abs=1e-4)
  assert stats.wilson_interval(0, 0) is None
  with pytest.raises(ValueError):
    stats.wilson_interval(11, 10)


def test_mcnemar_exact_hand_values():
  assert stats.binomial_cdf(2, 4) == pytest.approx(11 / 16)
  # 9 vs 1 discordant: 2 * P(X <= 1 | n=10) = 2 * 11 / 1024.
  assert stats.mcnemar_exact(9, 1) == pytest.approx(22 / 1024)
  assert stats.mcnemar_exact(1, 9) == stats.mcnemar_exact(9, 1)
  assert stats.mcnemar_exact(10, 0) == pytest.approx(2 / 1024)
  # 20 vs 4: 2 * (1 + 24 + 276 + 2024 + 10626) / 2^24.
  assert stats.mcnemar_exact(20, 4) == pytest.approx(2 * 12951 / 2 ** 24)
  assert stats.mcnemar_exact(5, 5) == 1.0 and stats.mcnemar_exact(0, 0) == 1.0


def test_paired_counts_and_retention():
  counts = stats.paired_counts([True, True, False, False, True], [True, False, True, False,
                                                                  False])
  assert counts == {"both": 1, "only_a": 2, "only_b": 1, "neither": 1}
  with pytest.raises(ValueError):
    stats.paired_counts([True], [True, False])
  assert stats.retention(0.5, 0.9, 0.1) == pytest.approx(0.5)
  assert stats.retention(0.1, 0.9, 0.1) == 0.0
  assert stats.retention(0.5, 0.1, 0.1) is None and stats.retention(None, 0.9, 0.1) is None


# --------------------------------------------------------------------------- plan


def _blocks(text: str) -> dict[str, str]:
  return {b.split("\n", 1)[0]: b for b in text.split("\n# ") if b.strip()}


def test_dry_run_plan(tmp_path, capsys):
  out = str(tmp_path / "ce")
  assert driver.main(["--out", out, "--robot-steps", "300", "--steps-s0", "700",
                      "--episodes", "200", "--seed", "3", "--dry-run"]) == 0
  text = capsys.readouterr().out
  blocks = _blocks(text.lstrip("# "))
  assert [b for b in blocks if not b[0].isdigit()] == list(driver.STAGES)
  s0 = f"{out}/s0/checkpoints"
  expect = {  # stage: (steps, web weight, drops the concept, init_from)
      "s0": (700, 1.0, False, None), "s0_minus": (700, 1.0, True, None),
      "a1": (300, 0.0, False, s0), "a2": (400, 0.25, False, s0),
      "a3": (600, 0.5, False, s0), "a4": (400, 0.25, True, f"{out}/s0_minus/checkpoints")}
  for stage, (steps, weight, drop, init) in expect.items():
    b = blocks[stage]
    train = next(l for l in b.splitlines() if " train " in l)
    for flag in (f"experiments/cotraining_evidence.py:{stage}", f"--workdir {out}/{stage}",
                 f"--config.num_steps={steps}", "--config.seed=3",
                 f"--config.data.web_weight={weight}",
                 "--config.data.held_out_concept=purple",
                 f"--config.data.web_drop_concept={drop}"):
      assert flag in train, (stage, flag)
    assert (f"--config.init_from={init}" in train) if init else ("init_from" not in train)
    assert ("--config.data.robot_datasets=toy_reach_b" in train) == bool(init)
    assert (f"vlax eval --web --checkpoint {out}/{stage}/checkpoints --out {out}/{stage}/web"
            f" --web-examples 1200") in b
    loops = [l for l in b.splitlines() if "--env toy_reach" in l]
    assert len(loops) == (1 if init else 0)
    for l in loops:  # every arm on the same seeds, conditions and episodes
      for flag in ("--episodes 200", "--seed 0", "--embodiment b", "--concept purple",
                   "--condition seen,novel_target,novel_distractor,nonsense",
                   f"--out {out}/{stage}/loop"):
        assert flag in l, (stage, flag)
  assert "# 3100 training steps in all" in text
  assert not os.path.exists(out)


def test_arms_subset_adds_its_stage0(capsys):
  assert driver.main(["--out", "/o", "--arms", "a4", "--dry-run"]) == 0
  blocks = _blocks(capsys.readouterr().out.lstrip("# "))
  assert [b for b in blocks if not b[0].isdigit()] == ["s0_minus", "a4"]
  with pytest.raises(SystemExit):
    driver.main(["--out", "/o", "--arms", "a5", "--dry-run"])


def test_matched_robot_examples():
  for w in (0.0, 0.25, 0.5):
    steps = experiment.arm_steps(2000, w)
    assert steps * (1 - w) == pytest.approx(2000, abs=1)
  with pytest.raises(ValueError):
    experiment.arm_steps(2000, 1.0)


def test_workdir_trained_otherwise_is_refused(tmp_path):
  args = driver.parse_args(["--out", str(tmp_path), "--robot-steps", "300"])
  os.makedirs(tmp_path / "a2")
  with open(tmp_path / "a2" / "config.json", "w") as f:
    json.dump({"num_steps": 400, "seed": 0,
               "init_from": str(tmp_path / "s0" / "checkpoints")}, f)
  driver._check_workdir("a2", args)  # pylint: disable=protected-access - same settings
  args.robot_steps = 600
  with pytest.raises(SystemExit, match="num_steps"):
    driver._check_workdir("a2", args)  # pylint: disable=protected-access


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize("stage", ["s0", "s0_minus", "a1", "a2", "a3", "a4"])
def test_config_loads_and_passes_checks(stage):
  c = load_config(f"{_CONFIG}:{stage}")
  check_train_config(with_defaults(c))
  d = resolve_data_config(c)
  entries = robot_entries(d.robot_datasets)
  assert held_out_concept(d, entries) == "purple"
  assert d.held_out_robot == "absent" and d.toy_num_blocks == 2
  assert 0.15 <= d.toy_block_size <= 0.2
  assert d.web_drop_concept == (stage in ("s0_minus", "a4"))
  assert [s["kind"] for s in d.web_sources] == ["toy"]  # every stage is scored on it
  if stage.startswith("s0"):
    assert entries == [] and c.num_steps == experiment.S0_STEPS and not c.init_from_required
  else:
    _, weight, _ = experiment.ARMS[stage]
    assert [n for n, _ in entries] == ["toy_reach_b"] and d.web_weight == weight
    assert c.num_steps == experiment.arm_steps(experiment.ROBOT_STEPS, weight)
    assert c.init_from_required and c.reset_optimizer
  with pytest.raises(ValueError, match="unknown arm"):
    load_config(f"{_CONFIG}:a9")


# --------------------------------------------------------------------------- results


def _write(path, obj):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    if isinstance(obj, list):
      f.write("".join(json.dumps(r) + "\n" for r in obj))
    else:
      json.dump(obj, f)


def _web(out, stage, correct_em, correct_mc):
  """20 colour questions (10 show purple) + 1 caption; the first `correct_*` right."""
  records = []
  for i in range(20):
    purple = i >= 10
    records.append({"type": "color", "prompt": "what color is the square?",
                    "answer": "purple" if purple else "red",
                    "colors": ["purple"] if purple else ["red"],
                    "exact_match": i < correct_em, "mc_correct": i < correct_mc})
  records.append({"type": "caption", "prompt": "caption en", "answer": "a red square",
                  "colors": ["red"], "exact_match": False, "mc_correct": None})
  report = {"types": {"color": {"chance": 1 / 6, "multiple_choice": correct_mc / 20},
                      "caption": {"chance": 0.01, "multiple_choice": None,
                                  "exact_match": 0.0}},
            "overall": {"exact_match": correct_em / 21}}
  _write(f"{out}/{stage}/web/report.json", report)
  _write(f"{out}/{stage}/web/examples.jsonl", records)


def _loop(out, stage, follows, seed=0):
  """follows: condition -> per-episode follow flags (200 episodes each)."""
  results = {}
  for cond, flags in follows.items():
    results[f"toy_reach_b/{cond}"] = {
        "policy": {"episodes": len(flags), "follows": sum(flags),
                   "follow_rate": sum(flags) / len(flags), "follow_chance": 0.5,
                   "successes": sum(flags) // 2, "follow_per_episode": flags},
        "random": {"follow_rate": 0.5}, "oracle": {"success_rate": 1.0}}
  _write(f"{out}/{stage}/loop/report.json",
         {"results": results, "metadata": {"seed": seed, "episodes": 200}})


def _flags(k, n=200, start=0):
  return [start <= i < start + k for i in range(n)]


def test_summary_gates_and_goals_from_fake_reports(tmp_path):
  out = str(tmp_path)
  _web(out, "s0", 20, 20)
  _web(out, "s0_minus", 10, 10)
  _web(out, "a1", 2, 18)  # format lost, knowledge kept
  _web(out, "a2", 19, 20)
  _web(out, "a3", 18, 20)
  # novel_target: A2 follows episodes 0-159, A1 0-99 (+ 10 of A2's misses): 70 vs 10.
  a1_nt = [i < 90 or 190 <= i for i in range(200)]
  _loop(out, "a1", {"seen": _flags(190), "novel_target": a1_nt,
                    "novel_distractor": _flags(180), "nonsense": _flags(100)})
  _loop(out, "a2", {"seen": _flags(185), "novel_target": _flags(160),
                    "novel_distractor": _flags(184), "nonsense": _flags(110)})
  _loop(out, "a4", {"seen": _flags(185), "novel_target": _flags(130),
                    "novel_distractor": _flags(184), "nonsense": _flags(100)})
  res = driver.write_outputs(out, {"note": "fake"})
  assert sorted(res["missing"]) == ["a3/loop", "a4/web"]

  s0 = res["stages"]["s0"]["vqa"]
  assert s0["all"] == {"n": 20, "exact_match": 1.0, "multiple_choice": 1.0,
                       "chance": pytest.approx(1 / 6)}
  assert s0["concept"]["n"] == 10 and s0["caption_exact_match"] == 0.0
  ret = res["retention"]
  assert ret["a1"]["exact_match_all"] == pytest.approx((0.1 - 1 / 6) / (5 / 6))
  assert ret["a1"]["multiple_choice_all"] == pytest.approx((0.9 - 1 / 6) / (5 / 6))
  assert ret["a1"]["exact_match_concept"] == pytest.approx(-0.2)  # 0/10 purple right
  assert ret["a2"]["exact_match_all"] == pytest.approx((0.95 - 1 / 6) / (5 / 6))
  assert ret["a4"]["exact_match_all"] is None  # a4 not scored, against s0_minus
  nt = res["stages"]["a2"]["loop"]["conditions"]["novel_target"]
  assert nt["follow"]["rate"] == 0.8
  assert nt["follow"]["ci"] == pytest.approx([0.73914, 0.84955], abs=1e-4)
  test = next(t for t in res["paired_tests"] if (t["a"], t["b"]) == ("a2", "a1"))
  assert (test["only_a"], test["only_b"], test["both"]) == (70, 10, 90)
  assert test["p_value"] == pytest.approx(stats.mcnemar_exact(70, 10))
  assert test["p_value"] < 1e-10 and test["difference"] == pytest.approx(0.3)

  # The word's own effect per arm: novel_target vs nonsense on the same scenes.
  words = {t["arm"]: t for t in res["word_tests"]}
  assert set(words) == {"a1", "a2", "a4"}  # a3 has no loop report
  assert (words["a2"]["only_a"], words["a2"]["only_b"], words["a2"]["both"]) == (50, 0, 110)
  assert words["a2"]["difference"] == pytest.approx(0.25)
  assert words["a2"]["p_value"] == pytest.approx(stats.mcnemar_exact(50, 0))
  assert words["a1"]["difference"] == pytest.approx(0.0)  # 90 + 10 vs the first 100

  assert [g["status"] for g in res["gates"]] == ["pass"] * 4
  goals = [(c["name"], c["status"]) for c in res["goals"]]
  assert [s for _, s in goals] == ["pass", "pass", "pass", "pass", "pass", "pass", "pass",
                                   "fail"]
  assert "A4" in goals[-1][0]
  assert any("alignment forgetting" in n for n in res["notes"])

  md = open(os.path.join(out, "cotraining.md")).read()
  assert "| a2 | novel_target | 0.800 [0.74, 0.85] | 0.500 | 0.400 [0.33, 0.47] |" in md
  assert "| a1 | 0 | 0.100 | 0.900 | 0.167 | 0.000 | 0.800 | -0.08 | 0.88 | -0.20 | 0.000 |" \
      in md
  assert "| a2 vs a1 | 0.800 | 0.500 | +0.300 | 70 | 10 |" in md
  assert "| a2 | 0.800 | 0.550 | +0.250 | 50 | 0 |" in md
  assert "- **PASS** S0 VQA exact match >= 0.90, overall and on purple questions: " \
         "overall 1.000, purple 1.000" in md
  assert "- **FAIL** Control: A4" in md and "Not run yet: a3/loop, a4/web." in md
  saved = json.load(open(os.path.join(out, "cotraining.json")))
  assert saved["metadata"] == {"note": "fake"} and saved["gates"] == res["gates"]
  assert os.path.getsize(os.path.join(out, "cotraining.png")) > 0


def test_gate_failures_and_missing(tmp_path):
  out = str(tmp_path)
  _web(out, "s0", 18, 20)  # 10/10 other, 8/10 purple: overall 0.9, purple 0.8
  assert driver.s0_gate(driver.analyze(driver.collect(out))) is False
  res = driver.analyze(driver.collect(out))
  assert res["gates"][0]["detail"] == "overall 0.900, purple 0.800"
  assert [g["status"] for g in res["gates"][1:]] == ["missing"] * 3
  assert all(g["status"] == "missing" for g in res["goals"])
  _loop(out, "a1", {"seen": _flags(190)})
  _loop(out, "a2", {"seen": _flags(170)}, seed=1)
  res = driver.analyze(driver.collect(out))
  assert [g["status"] for g in res["gates"]] == ["fail", "pass", "fail", "fail"]
  assert driver.s0_gate(driver.analyze(driver.collect(str(tmp_path / "none")))) is None
