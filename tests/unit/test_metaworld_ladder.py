"""benchmarks/metaworld_ladder.py: the dry-run's commands and the table / plot assembly
from fake report.json files (nothing is trained or simulated)."""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib

import pytest

_PATH = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "metaworld_ladder.py"
_spec = importlib.util.spec_from_file_location("metaworld_ladder", _PATH)
ladder = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ladder)


def test_dry_run_prints_every_rung(tmp_path, capsys):
  out = str(tmp_path / "L")
  assert ladder.main(["--data-dir", "/d", "--out", out, "--tasks", "push,pick-place",
                      "--steps", "500", "--dry-run", "--eval-arg=--temporal-ensemble"]) == 0
  text = capsys.readouterr().out
  blocks = {b.split("\n", 1)[0]: b for b in text.split("# ")[1:]}
  assert list(blocks) == list(ladder.RUNGS)
  oracle = blocks["state_oracle"]
  for flag in ("--config.data.proprio_source=full_state", "'--config.data.cameras=()'",
               "--config.data.max_len=96",
               "--config.data.proprio_format=action_tokens",
               "--config.data.proprio_noise=0.05", "--config.num_steps=500",
               "--config.data.robot_datasets=metaworld_push,metaworld_pick_place",
               "--config.data.data_dir=/d", f"--workdir {out}/state_oracle"):
    assert flag in oracle, flag
  assert oracle.count("vlax train") == 1 and oracle.count("vlax eval --env metaworld") == 1
  assert "--config.data.proprio_dropout=0" in oracle
  # no_proprio: the image checkpoint, prompts without proprio; no training of its own.
  no_proprio = blocks["no_proprio"]
  assert "vlax train" not in no_proprio and "--proprio-ablation drop" in no_proprio
  assert f"--checkpoint {out}/image " in no_proprio
  shuffle = blocks["shuffle"]
  assert "vlax train" not in shuffle and "--image-ablation shuffle" in shuffle
  assert f"--checkpoint {out}/image " in shuffle and "--temporal-ensemble" in shuffle
  assert f"vlax vision-probe --checkpoint {out}/image" in blocks["probe"]
  # Every eval uses the same seeds and episode count.
  evals = [l for l in text.splitlines() if " eval " in l]
  assert len(evals) == 4 and all("--seed 0 " in l and "--episodes 20 " in l for l in evals)
  assert not os.path.exists(out)


def test_rung_subset_and_bad_rung(capsys):
  assert ladder.main(["--data-dir", "/d", "--out", "/o", "--tasks", "mt10", "--rungs",
                      "probe,image", "--dry-run"]) == 0
  text = capsys.readouterr().out
  assert text.index("# image") < text.index("# probe")
  assert "robot_datasets=metaworld_mt10" in text and "--tasks push,pick-place" in text
  with pytest.raises(SystemExit):
    ladder.main(["--data-dir", "/d", "--out", "/o", "--rungs", "vision", "--dry-run"])


def _write(path, obj):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(obj, f)


def _eval_report(rates):
  return {"tasks": {t: {"success_rate": r} for t, r in rates.items()},
          "average_success": sum(rates.values()) / len(rates),
          "baselines_average": {"expert": 0.95}}


def test_table_and_plot_from_fake_reports(tmp_path):
  out = str(tmp_path)
  _write(f"{out}/state_oracle/eval/report.json", _eval_report({"push-v3": 0.9, "reach-v3": 1.0}))
  _write(f"{out}/image/eval/report.json", _eval_report({"push-v3": 0.5, "reach-v3": 0.7}))
  _write(f"{out}/shuffle/eval/report.json", _eval_report({"push-v3": 0.1, "reach-v3": 0.2}))
  probe = {"trained": {"all": {"object_pos": {"r2": 0.85}, "goal_pos": {"r2": 0.4}}},
           "random": {"all": {"object_pos": {"r2": 0.3}, "goal_pos": {"r2": None}}}}
  _write(f"{out}/probe/probe/report.json", {"tasks": {"push-v3": probe}})
  result = ladder.write_outputs(out, list(ladder.RUNGS), {"tasks": "push,reach"})
  assert result["missing"] == ["no_proprio"]
  assert result["rungs"]["image"] == {"tasks": {"push-v3": 0.5, "reach-v3": 0.7},
                                      "average": pytest.approx(0.6), "expert": 0.95}
  assert result["rungs"]["probe"]["probe"]["push-v3"]["trained"]["object_pos"] == 0.85
  md = open(os.path.join(out, "ladder.md")).read()
  assert "| rung | push | reach | average |" in md
  assert "| state_oracle | 0.90 | 1.00 | 0.95 |" in md
  assert "| shuffle | 0.10 | 0.20 | 0.15 |" in md
  assert "| task | tower | object_pos | object_pos_t0 | goal_pos |" in md
  assert "| push | random | 0.30 | - | - |" in md and "Not run yet: no_proprio" in md
  assert json.load(open(os.path.join(out, "ladder.json")))["metadata"]["tasks"] == "push,reach"
  assert os.path.getsize(os.path.join(out, "ladder.png")) > 1000
