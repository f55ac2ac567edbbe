"""metrics.jsonl on resume: no line of history is lost (issue 24)."""

import json
import os

from vlax.training import logging as logging_lib


def _write(path, rows, extra=b""):
  with open(path, "wb") as f:
    f.write(b"".join(json.dumps(r).encode() + b"\n" for r in rows) + extra)


def _logger(workdir, start_step):
  return logging_lib.MetricsLogger(str(workdir), total_steps=10, start_step=start_step,
                                   tensorboard=False, progress=False, is_writer=True)


def test_resume_keeps_lines_up_to_the_step_and_moves_unparsable_ones(tmp_path, capsys):
  rows = [{"step": s, "loss": 1.0 / s} for s in range(1, 5)]
  _write(tmp_path / "metrics.jsonl", rows, b"\xff\xfe not utf-8\n{\"step\": 5, \"lo")
  _logger(tmp_path, 2).close()
  kept = [json.loads(l) for l in open(tmp_path / "metrics.jsonl", encoding="utf-8")]
  assert kept == rows[:2]  # steps after the resumed one are retrained and logged again
  assert (tmp_path / "metrics.jsonl.unreadable").read_bytes() == (
      b"\xff\xfe not utf-8\n{\"step\": 5, \"lo\n")
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("warning: ") and "2 line(s)" in err[0]


def test_a_run_from_step_0_keeps_an_earlier_history(tmp_path, capsys):
  rows = [{"step": 1, "loss": 2.0}]
  _write(tmp_path / "metrics.jsonl", rows)
  logger = _logger(tmp_path, 0)
  logger.write(1, {"loss": 3.0})
  logger.close()
  old = [f for f in os.listdir(tmp_path) if f.endswith(".old")]
  assert len(old) == 1
  assert [json.loads(l) for l in open(tmp_path / old[0])] == rows
  assert [json.loads(l)["loss"] for l in open(tmp_path / "metrics.jsonl")] == [3.0]
  assert "earlier run with no checkpoint" in capsys.readouterr().err
