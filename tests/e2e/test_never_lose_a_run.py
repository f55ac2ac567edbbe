"""Issue 24, on the real CLI: resume never starts over silently, one writer per workdir,
and the last tracebacks (metrics that are not UTF-8, VLAX_DATASETS, HF config types,
SIGTERM to serve / eval) are one line. Rows of the README's "Reliability" table.

One 4-step `vlax train` run (checkpoints 2 and 4) is trained once per module and copied
per case; only two cases train further (a fallback resume, an explicit restart).
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from vlax import cli
from vlax.data.oxe import registry

import _train_utils as U

TINY = ["--config.model.preset=tiny", "--config.data.image_size=32",
        "--config.data.toy_episodes=6", "--config.batch_size=8", "--config.log_every=1",
        "--config.checkpoint_every=2", "--config.data.shuffle_buffer=16",
        "--config.logging.progress=False", "--config.logging.tensorboard=False",
        "--config.eval_every=0"]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cli(argv, capsys):
  capsys.readouterr()
  rc = cli.main(argv)
  out = capsys.readouterr()
  return rc, out.out, [l for l in out.err.splitlines() if l.startswith(("error", "warning"))]


def _train(workdir, capsys, *extra, steps=4):
  return _cli(["train", "--workdir", str(workdir), *TINY, f"--config.num_steps={steps}",
               *extra], capsys)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("never_lose") / "run"
  assert cli.main(["train", "--workdir", str(workdir), *TINY, "--config.num_steps=4"]) == 0
  return workdir


def _copy(trained, tmp_path):
  dst = tmp_path / "run"
  shutil.copytree(trained, dst)
  return dst


def _listing(run):
  return sorted(os.listdir(run / "checkpoints")), sorted(os.listdir(run))


def _env():
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
  env.pop("XLA_FLAGS", None)
  return env


@pytest.mark.parametrize("remove", [("2/train_state", "4/train_state"),
                                    ("2", "4/train_state")])
def test_no_restorable_step_stops_and_moves_nothing(trained, tmp_path, capsys, remove):
  """Issue cases 1 and 2: every step incomplete (or one incomplete, the others gone)
  was a silent fresh start that truncated metrics.jsonl and set the steps aside."""
  run = _copy(trained, tmp_path)
  for r in remove:
    shutil.rmtree(run / "checkpoints" / r)
  before, history = _listing(run), (run / "metrics.jsonl").read_bytes()
  rc, _, err = _train(run, capsys)
  assert rc == 2 and len(err) == 1, err
  assert err[0].startswith("error: no readable checkpoint in") and "4: incomplete" in err[0]
  assert ("2: incomplete" in err[0]) == (remove[0] == "2/train_state")
  assert "--config.restart_over_unreadable=True" in err[0]
  assert _listing(run) == before and (run / "metrics.jsonl").read_bytes() == history


def test_restart_over_unreadable_is_explicit_and_keeps_everything(trained, tmp_path,
                                                                  capsys):
  run = _copy(trained, tmp_path)
  for s in ("2", "4"):
    shutil.rmtree(run / "checkpoints" / s / "train_state")
  history = (run / "metrics.jsonl").read_bytes()
  rc, out, err = _train(run, capsys, "--config.restart_over_unreadable=True", steps=2)
  assert rc == 0 and json.loads(out.splitlines()[-1])["resumed_from"] is None
  assert len(err) == 1 and "restart_over_unreadable: starting from step 0" in err[0], err
  assert sorted(os.listdir(run / "checkpoints")) == ["2", "2.unreadable", "4.unreadable"]
  old = [f for f in os.listdir(run) if f.startswith("metrics.jsonl.") and f.endswith(".old")]
  assert len(old) == 1 and (run / old[0]).read_bytes() == history
  assert [r["step"] for r in U.read_jsonl(run / "metrics.jsonl")] == [1, 2]


def test_fallback_keeps_history_and_bytes_that_are_not_utf8(trained, tmp_path, capsys):
  """Resume from step 2 (4 incomplete): metrics rows 1-2 stay as they were; a line of
  non-UTF-8 bytes (was a UnicodeDecodeError traceback) is moved aside with a warning."""
  run = _copy(trained, tmp_path)
  shutil.rmtree(run / "checkpoints" / "4" / "train_state")
  rows = U.read_jsonl(run / "metrics.jsonl")
  with open(run / "metrics.jsonl", "ab") as f:
    f.write(b"\xff\xfe garbage \x80\n")
  rc, out, err = _train(run, capsys)
  assert rc == 0 and json.loads(out.splitlines()[-1])["resumed_from"] == 2, err
  assert any("checkpoints/4 is unreadable" in l for l in err), err
  assert any("not JSON metrics" in l and "metrics.jsonl.unreadable" in l for l in err), err
  assert (run / "metrics.jsonl.unreadable").read_bytes() == b"\xff\xfe garbage \x80\n"
  new = U.read_jsonl(run / "metrics.jsonl")
  assert [r["step"] for r in new] == [1, 2, 3, 4] and new[:2] == rows[:2]


HOLDER = ("import sys, time\n"
          "from vlax.training.workdir_lock import WorkdirLock\n"
          "WorkdirLock(sys.argv[1]).acquire()\n"
          "print('held', flush=True)\n"
          "time.sleep(300)\n")


def test_a_second_run_stops_and_a_killed_runs_lock_is_taken_over(trained, tmp_path,
                                                                 capsys):
  """Issue case 3: a live run's lock stops a second `vlax train` at once, naming the
  holder, before it writes anything; once the holder is SIGKILLed the next run takes
  the lock over and resumes."""
  run = _copy(trained, tmp_path)
  holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], env=_env(),
                            stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    before = {f: (run / f).read_bytes() for f in ("config.json", "metrics.jsonl")}
    rc, _, err = _train(run, capsys)
    assert rc == 2 and len(err) == 1, err
    assert (f"is in use by another run: host {socket.gethostname()}, pid {holder.pid}, "
            "since ") in err[0], err
    assert {f: (run / f).read_bytes() for f in before} == before
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
  finally:
    if holder.poll() is None:
      holder.kill()
    holder.stdout.close()
  rc, out, err = _train(run, capsys)
  assert rc == 0 and json.loads(out.splitlines()[-1])["resumed_from"] == 4, err
  assert any("took over the lock of a run that is gone" in l for l in err), err
  assert not (run / "vlax.lock").exists()  # released at the end


def test_bad_input_is_one_line(tmp_path, capsys, monkeypatch):
  """VLAX_DATASETS entries and HF config.json types that were tracebacks."""
  (tmp_path / "raising_datasets.py").write_text("raise RuntimeError('no such robot')\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  for entry, msg in [(".", "is neither a module name"), (".foo", "is neither a module"),
                     ("raising_datasets", "module 'raising_datasets' failed to load: "
                      "RuntimeError: no such robot")]:
    monkeypatch.setenv("VLAX_DATASETS", entry)
    monkeypatch.setattr(registry, "_catalog_loaded", False)
    rc, _, err = _cli(["stats", "--dataset", "toy_reach_a", "--data-dir", str(tmp_path)],
                      capsys)
    assert rc == 2 and len(err) == 1 and msg in err[0], (entry, err)
  monkeypatch.delenv("VLAX_DATASETS")
  for name, text, msg in [
      ("rope", {"rope_scaling": "linear"}, "text_config.rope_scaling must be an object"),
      ("list", [1, 2], "text_config must be an object, got list"),
      ("big", {"hidden_size": "big"}, "text_config.hidden_size must be a positive")]:
    hf = tmp_path / name
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "paligemma",
                                                "text_config": text}))
    rc, _, err = _cli(["import-paligemma", str(hf), str(tmp_path / f"{name}_out")], capsys)
    assert rc == 2 and len(err) == 1 and msg in err[0], err
    assert err[0].count("config.json") == 1, err  # the path once


def _start(argv, tmp_path, name):
  log = open(tmp_path / f"{name}.log", "w+")
  proc = subprocess.Popen([sys.executable, "-m", "vlax.cli", *argv], env=_env(),
                          stdout=log, stderr=subprocess.STDOUT, text=True)
  return proc, log


def _wait_for(cond, proc, timeout=120):
  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None and not cond():
    time.sleep(0.1)
  assert proc.poll() is None and cond()


def test_sigterm_to_serve_and_eval_is_one_line_and_leaves_no_partial_out(trained,
                                                                          tmp_path):
  ckpt = str(trained / "checkpoints")
  serve, log = _start(["serve", ckpt, "--port", "0", "--no-warmup"], tmp_path, "serve")
  out = tmp_path / "eval_out"
  try:
    _wait_for(lambda: "serving Policy" in (tmp_path / "serve.log").read_text(), serve)
    serve.send_signal(signal.SIGTERM)
    assert serve.wait(timeout=60) == 0
    text = (tmp_path / "serve.log").read_text()
    assert text.rstrip().endswith("server stopped (SIGTERM)"), text[-2000:]
    assert "Traceback" not in text and "***" not in text
    ev, _ = _start(["eval", "--checkpoint", ckpt, "--out", str(out)], tmp_path, "eval")
    _wait_for(lambda: os.path.isdir(f"{out}.partial"), ev)  # results are staged there
    ev.send_signal(signal.SIGTERM)
    assert ev.wait(timeout=60) == 143
  finally:
    for p in (serve, locals().get("ev")):
      if p is not None and p.poll() is None:
        p.kill()
    log.close()
  text = (tmp_path / "eval.log").read_text()
  assert text.rstrip().splitlines()[-1] == (
      f"error: terminated (SIGTERM); no report written, {out} left as it was"), text[-2000:]
  assert "Traceback" not in text and "***" not in text
  assert not out.exists() and not os.path.exists(f"{out}.partial")
