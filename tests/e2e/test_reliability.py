"""Reliability: faults injected into checkpoints, saves, the data state, signals and input.

Each test is a row of the README's "Reliability" table. Training runs use the `tiny`
preset on one device (fast compiles); everything else works on one 4-step base run.
"""

import errno
import json
import os
import shutil
import signal
import subprocess

import jax
import numpy as np
import pytest

from vlax import cli
from vlax.errors import VlaxError
from vlax.training import checkpointing
from vlax.training import data_state
from vlax.training import mesh as mesh_lib
from vlax.training import trainer

import _train_utils as U


def _mesh():
  return mesh_lib.mesh_from_config({"data": 1, "fsdp": 1, "tensor": 1},
                                   devices=jax.devices()[:1])


def _train(workdir, data_fn=None, **overrides):
  config = U.tiny_config(**{"checkpoint_every": 2, **overrides})
  fn = data_fn or U.stateful_data_fn(str(workdir / "served.txt"))
  return trainer.train(config, str(workdir), data_iterator_fn=fn, mesh=_mesh())


def _steps(workdir):
  return sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())


def _params(state):
  return jax.device_get(state.params)


def _assert_same(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  """4 steps, checkpoints (and data states) at 2 and 4; the pristine params of both."""
  workdir = tmp_path_factory.mktemp("base")
  _train(workdir, num_steps=4)
  c = U.tiny_config()
  setup = trainer.ModelSetup(c, trainer.build_model_config(c, U.metadata()), _mesh(),
                             U.make_batch(8), len(U.DATASET_NAMES))
  ckpt = checkpointing.Checkpointer(str(workdir / "checkpoints"))
  pristine = {s: _params(ckpt.restore(s, setup.abstract_state, setup.state_sharding)[0])
              for s in (2, 4)}
  ckpt.close()
  return workdir, setup, pristine


def _copy(base_dir, tmp_path):
  dst = tmp_path / "run"
  shutil.copytree(base_dir, dst)
  return dst


def _truncate(path):
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.truncate(size // 2)


def _largest(directory):
  files = [os.path.join(r, f) for r, _, fs in os.walk(directory) for f in fs]
  return max(files, key=os.path.getsize)


CORRUPTIONS = {
    "params array data truncated": lambda d: _truncate(_largest(d / "params")),
    "params manifest deleted": lambda d: os.remove(d / "params" / "manifest.ocdbt"),
    "opt_state arrays deleted": lambda d: shutil.rmtree(d / "opt_state" / "ocdbt.process_0"),
    "opt_state _METADATA truncated": lambda d: _truncate(d / "opt_state" / "_METADATA"),
    "metadata JSON truncated": lambda d: _truncate(d / "metadata" / "metadata"),
    "train_state deleted": lambda d: shutil.rmtree(d / "train_state"),
    "step _CHECKPOINT_METADATA deleted": lambda d: os.remove(d / "_CHECKPOINT_METADATA"),
}


@pytest.mark.parametrize("fault", sorted(CORRUPTIONS))
def test_restore_walks_back_past_a_corrupt_latest_step(base, tmp_path, fault):
  base_dir, setup, pristine = base
  run = _copy(base_dir, tmp_path)
  CORRUPTIONS[fault](run / "checkpoints" / "4")
  warnings = []
  ckpt = checkpointing.Checkpointer(str(run / "checkpoints"), warn=warnings.append)
  step, state = ckpt.restore_latest(setup.abstract_state, setup.state_sharding)
  ckpt.close()
  # Either the file was not needed (then the values are exact) or step 2 is used, with
  # one warning line naming step 4 and why. Never wrong values.
  assert step in (2, 4)
  _assert_same(_params(state), pristine[step])
  assert int(jax.device_get(state.step)) == step
  if step == 2:
    assert len(warnings) == 1 and "\n" not in warnings[0], warnings
    assert "checkpoints/4 is unreadable (" in warnings[0] and len(warnings[0]) < 400
  else:
    assert not warnings


def test_half_written_async_save_is_never_restored(base, tmp_path):
  """What a host SIGKILLed during an async save leaves (orbax writes the step into
  `<step>.orbax-checkpoint-tmp-<t>` and renames it once every process is done; the real
  two-process kill is tests/e2e/test_host_killed_mid_save.py): some items, no
  commit_success.txt, never renamed. Restore takes the newest complete step, and the
  next start removes the leftover."""
  base_dir, setup, pristine = base
  run = _copy(base_dir, tmp_path)
  half = run / "checkpoints" / "6.orbax-checkpoint-tmp-1796400000000000"
  shutil.copytree(run / "checkpoints" / "4", half)
  os.remove(half / "commit_success.txt")
  shutil.rmtree(half / "train_state")  # still being written when the host died
  shutil.copytree(run / "data_state" / "4", run / "data_state" / "6")  # written before
  ckpt = checkpointing.Checkpointer(str(run / "checkpoints"))
  step, state = ckpt.restore_latest(setup.abstract_state, setup.state_sharding)
  ckpt.close()
  assert step == 4
  _assert_same(_params(state), pristine[4])
  assert sorted(os.listdir(run / "checkpoints")) == ["2", "4"]


def test_a_complete_step_this_run_did_not_skip_is_never_set_aside(base, tmp_path):
  """Issue 24 case 3 behind the lock: a second writer's save of a step that another run
  completed meanwhile stops with one line instead of moving that step aside."""
  base_dir, setup, pristine = base
  run = _copy(base_dir, tmp_path)
  ckpt = checkpointing.Checkpointer(str(run / "checkpoints"))
  state, meta = ckpt.restore(2, setup.abstract_state, setup.state_sharding)
  with pytest.raises(checkpointing.CheckpointSaveError, match="appeared while this run"):
    ckpt.save(4, state, meta)
  step, state = ckpt.restore_latest(setup.abstract_state, setup.state_sharding)
  ckpt.close()
  assert step == 4 and _steps(run) == [2, 4]
  _assert_same(_params(state), pristine[4])


def test_no_readable_step_is_a_short_error(base, tmp_path):
  base_dir, setup, _ = base
  run = _copy(base_dir, tmp_path)
  CORRUPTIONS["params manifest deleted"](run / "checkpoints" / "4")
  CORRUPTIONS["train_state deleted"](run / "checkpoints" / "2")
  ckpt = checkpointing.Checkpointer(str(run / "checkpoints"), warn=lambda m: None)
  with pytest.raises(VlaxError) as e:
    ckpt.restore_latest(setup.abstract_state, setup.state_sharding)
  ckpt.close()
  msg = str(e.value)
  assert msg.startswith("no readable checkpoint in") and "4: " in msg and "2: " in msg
  assert "\n" not in msg and len(msg) < 900
  assert _steps(run) == [2, 4]  # nothing moved or deleted: it may be a config error


@pytest.mark.slow
def test_resume_falls_back_and_saving_does_not_collide(base, tmp_path, capsys):
  """Finding 2-4: latest step incomplete (no train_state/) and the data state of the
  step before truncated: resume from 2 with a fresh input stream; the new save of step
  4 sets the old one aside instead of failing with StepAlreadyExistsError."""
  run = _copy(base[0], tmp_path)
  shutil.rmtree(run / "checkpoints" / "4" / "train_state")
  pos = run / "data_state" / "2" / "process_0" / "pos"
  pos.write_text("")  # truncated
  capsys.readouterr()
  out = _train(run, num_steps=6)
  err = capsys.readouterr()
  assert out["resumed_from"] == 2 and out["step"] == 6
  assert _steps(run) == [2, 4, 6] and (run / "checkpoints" / "4.unreadable").is_dir()
  warnings = [l for l in err.err.splitlines() if l.startswith("warning:")]
  assert len(warnings) == 2, warnings
  assert sum("checkpoints/4 is unreadable" in w for w in warnings) == 1, warnings
  assert sum(w.startswith("warning: data state not restored (") for w in warnings) == 1
  rows = U.read_jsonl(run / "metrics.jsonl")
  assert rows[:2] == U.read_jsonl(base[0] / "metrics.jsonl")[:2]  # history up to 2 kept
  rows = U.read_jsonl(run / "metrics.jsonl")
  assert [r["step"] for r in rows][-4:] == [3, 4, 5, 6]
  assert all(np.isfinite(r["loss"]) for r in rows)


def test_truncated_tf_data_state_falls_back_to_a_fresh_stream(tmp_path, capsys):
  """Finding 4 with the real tf.data iterator state (a truncated file raised IndexError)."""
  import test_data_resume as dr  # pylint: disable=g-import-not-at-top
  from vlax.data import cotrain  # pylint: disable=g-import-not-at-top
  config = dr.data_config()

  def data_fn(config, pid, nproc, start_step):
    return cotrain.make_data_iterator(config, process_index=pid, process_count=nproc,
                                      workdir=str(tmp_path), start_step=start_step)

  it, _ = data_fn(config, 0, 1, 0)
  next(it)
  d = tmp_path / "data_state" / "1" / "process_0"
  ckpt = checkpointing.Checkpointer(str(tmp_path / "checkpoints"))
  data_state.save(it, str(tmp_path), 1, 0, 1, set(ckpt.all_steps()))
  ckpt.close()
  for name in sorted(os.listdir(d)):
    if name.startswith("iterator.data"):
      _truncate(d / name)
  capsys.readouterr()
  fresh, _, restored = data_state.open_data(data_fn, config, str(tmp_path), 1, 0, 1)
  err = capsys.readouterr().err  # a warning line on stderr (was a plain line on stdout)
  assert not restored and err.startswith("warning: data state not restored (")
  assert fresh.batches_read == 0 and next(fresh)["tokens"].shape == (4, config.data.max_len)


@pytest.mark.slow
def test_divergence_keeps_a_good_checkpoint_and_names_it(base, tmp_path):
  """Finding 1, the issue's repro: resume with lr=1e30, a checkpoint every step, keep 1."""
  run = _copy(base[0], tmp_path)
  blowup = {"optimizer.lr": 1e30, "checkpoint_every": 1, "keep_checkpoints": 1}
  with pytest.raises(trainer.TrainingDivergedError,
                     match=r"Last good checkpoint: \S*checkpoints/4\. ") as e:
    _train(run, num_steps=8, **blowup)
  assert "\n" not in str(e.value)
  assert max(_steps(run)) == 4  # the blown-up state was never saved; 4 was not evicted
  # Weights that stay finite but are huge (lr 1e8): the next step's loss shows it; a
  # checkpoint saved from them is set aside, never resumed from.
  with pytest.raises(trainer.TrainingDivergedError,
                     match=r"Last good checkpoint: \S*checkpoints/4\. "):
    _train(run, num_steps=8, **{**blowup, "optimizer.lr": 1e8})
  assert _steps(run) == [4]
  assert all(d.endswith(".diverged") for d in os.listdir(run / "checkpoints")
             if not d.isdigit())
  # The good checkpoint resumes with a sane learning rate.
  out = _train(run, num_steps=5, checkpoint_every=1, keep_checkpoints=1)
  assert out["resumed_from"] == 4 and out["step"] == 5
  assert np.isfinite(out["metrics"]["loss"])
  params = jax.tree.leaves(_params(out["state"]))
  assert max(float(np.abs(p).max()) for p in params) < 100


def _fail_save_at(monkeypatch, fail_step):
  """Injected disk-full: the orbax save of `fail_step` leaves a partial temporary step
  directory behind and raises ENOSPC."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  real = ocp.CheckpointManager.save

  def save(self, step, *args, **kwargs):
    if step == fail_step:
      partial = os.path.join(str(self.directory), f"{step}.orbax-checkpoint-tmp-99")
      os.makedirs(os.path.join(partial, "params"))
      with open(os.path.join(partial, "params", "half_written"), "w") as f:
        f.write("x" * 100)
      raise OSError(errno.ENOSPC, "No space left on device")
    return real(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "save", save)


@pytest.mark.slow
def test_failed_save_stops_at_once_and_keeps_the_last_good(base, tmp_path, monkeypatch):
  """Finding 5 by injection: the save of step 6 fails."""
  base_dir, setup, pristine = base
  run = _copy(base_dir, tmp_path)
  _fail_save_at(monkeypatch, 6)
  with pytest.raises(checkpointing.CheckpointSaveError) as e:
    _train(run, num_steps=10)
  msg = str(e.value)
  assert "\n" not in msg and "No space left on device" in msg
  assert msg.endswith(f"last good checkpoint: {run}/checkpoints/4")
  assert [r["step"] for r in U.read_jsonl(run / "metrics.jsonl")][-1] == 6  # at once
  assert sorted(os.listdir(run / "checkpoints")) == ["2", "4"]  # partial files removed
  assert sorted(os.listdir(run / "data_state")) == ["2", "4"]
  monkeypatch.undo()
  ckpt = checkpointing.Checkpointer(str(run / "checkpoints"))
  step, state = ckpt.restore_latest(setup.abstract_state, setup.state_sharding)
  ckpt.close()
  assert step == 4
  _assert_same(_params(state), pristine[4])


@pytest.fixture
def small_tmpfs(tmp_path):
  mount = tmp_path / "tmpfs"
  mount.mkdir()
  try:
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2600k", "tmpfs", str(mount)],
                          capture_output=True, timeout=20, check=False)
  except (OSError, subprocess.TimeoutExpired):
    done = None
  if done is None or done.returncode != 0:
    pytest.skip("cannot mount a tmpfs here (not root / no CAP_SYS_ADMIN): the "
                "injected-failure test covers disk full")
  try:
    yield mount
  finally:
    subprocess.run(["umount", "-l", str(mount)], capture_output=True, check=False)


@pytest.mark.slow
def test_real_disk_full_on_a_small_tmpfs(small_tmpfs, capfd):
  """Finding 5 for real: async saves into a 2.6 MB filesystem (3 tiny checkpoints)."""
  run = small_tmpfs / "run"
  with pytest.raises(checkpointing.CheckpointSaveError) as e:
    _train(run, num_steps=12, checkpoint_every=1, keep_checkpoints=12, log_every=1)
  msg = str(e.value)
  assert "\n" not in msg and ("No space left" in msg or "RESOURCE_EXHAUSTED" in msg), msg
  err = capfd.readouterr().err
  assert len(err.splitlines()) < 10, err[-3000:]  # no orbax / asyncio tracebacks
  good = _steps(run)
  assert good and msg.endswith(f"last good checkpoint: {run}/checkpoints/{good[-1]}")
  assert not [d for d in os.listdir(run / "checkpoints") if not d.isdigit()]
  assert sorted(int(d) for d in os.listdir(run / "data_state")) == good
  last = U.read_jsonl(run / "metrics.jsonl")[-1]["step"]
  assert last <= good[-1] + 2  # stopped at the check after the failed save


@pytest.mark.slow
def test_sigterm_at_a_random_step_resumes_bit_identical(base, tmp_path):
  """SIGTERM while the batch of a (seeded) random step is read: the run saves at the
  step boundary and exits; the resumed run ends with the uninterrupted run's params."""
  _, _, pristine = base
  stop_at = int(np.random.default_rng(16).integers(1, 3))  # position of the batch
  run = tmp_path / "run"
  served = str(run / "served.txt")
  run.mkdir()

  def data_fn(config, pid, nproc, start_step):
    it, meta = U.stateful_data_fn(served)(config, pid, nproc, start_step)
    real_next = type(it).__next__

    class Signalling(type(it)):
      def __next__(self):
        if self.pos == stop_at:
          os.kill(os.getpid(), signal.SIGTERM)
        return real_next(self)

    it.__class__ = Signalling
    return it, meta

  out = _train(run, data_fn, num_steps=4)
  assert out["preempted"] and out["step"] < 4
  out = _train(run, num_steps=4)
  assert out["resumed_from"] is not None and out["step"] == 4
  _assert_same(_params(out["state"]), pristine[4])
  assert [r["step"] for r in U.read_jsonl(run / "metrics.jsonl")] == [1, 2, 3, 4]


BAD_TRAIN_FLAGS = [
    ("--config.batch_size=0", "batch_size must be > 0"),
    ("--config.batch_size=-8", "batch_size must be > 0"),
    ("--config.num_steps=-5", "num_steps must be > 0"),
    ("--config.optimizer.lr=-0.001", "optimizer.lr must be >= 0"),
    ("--config.optimizer.lr=1e400", "optimizer.lr must be >= 0"),
    ("--config.seed=-1", "seed must be in"),
    (f"--config.seed={2**63}", "seed must be in"),
    ("--config.log_every=0", "log_every must be > 0"),
    ("--config.keep_checkpoints=0", "keep_checkpoints must be > 0"),
    ("--config.optimizer.grad_accum_steps=0", "grad_accum_steps must be > 0"),
    ("--config.optimizer.b2=1.5", "optimizer.b2 must be in [0, 1)"),
    ("--config.mesh.fsdp=0", "mesh.fsdp must be > 0 or -1"),
    ("--config.data.image_size=0", "data.image_size must be > 0"),
]


def _cli(argv, capsys):
  capsys.readouterr()
  rc = cli.main(argv)
  out = capsys.readouterr()
  return rc, out.err.strip().splitlines()


@pytest.mark.parametrize("flag,msg", BAD_TRAIN_FLAGS)
def test_out_of_range_config_is_a_one_line_error(tmp_path, capsys, flag, msg):
  rc, err = _cli(["train", "--workdir", str(tmp_path / "w"), flag], capsys)
  assert rc == 2 and len(err) == 1 and err[0].startswith("error: config."), err
  assert msg in err[0], err
  assert not (tmp_path / "w").exists()  # refused before any set-up


def test_unusable_workdir_and_other_bad_input_are_one_line_errors(tmp_path, capsys):
  a_file = tmp_path / "file"
  a_file.write_text("x")
  cases = [
      (["train", "--workdir", str(a_file)], "is not a directory"),
      (["train", "--workdir", str(a_file / "sub")], "is not writable"),
      (["inspect-data", "--dataset", "toy_reach_a", "--data-dir", str(tmp_path),
        "--batch-size", "0"], "--batch-size must be a positive integer"),
      (["serve", str(tmp_path), "--port", "99999"], "--port must be in 0..65535"),
  ]
  hf = tmp_path / "hf"
  hf.mkdir()
  (hf / "config.json").write_text(json.dumps({
      "model_type": "paligemma", "text_config": {"hidden_size": "big"}}))
  cases.append((["import-paligemma", str(hf), str(tmp_path / "out")],
                "text_config.hidden_size must be a positive integer, got 'big'"))
  hf2 = tmp_path / "hf2"
  hf2.mkdir()
  (hf2 / "config.json").write_text(json.dumps({
      "model_type": "paligemma", "vision_config": {"patch_size": 14.5}}))
  cases.append((["import-paligemma", str(hf2), str(tmp_path / "out2")],
                "vision_config.patch_size must be a positive integer, got 14.5"))
  for argv, msg in cases:
    rc, err = _cli(argv, capsys)
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: "), (argv, err)
    assert msg in err[0], (argv, err)


def test_read_only_workdir_is_a_one_line_error(tmp_path, capsys):
  ro = tmp_path / "ro"
  ro.mkdir()
  if os.geteuid() != 0:
    ro.chmod(0o555)
  else:  # root ignores permissions: a read-only mount instead
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)],
                          capture_output=True, check=False)
    if done.returncode != 0:
      pytest.skip("root without mount: cannot make a read-only directory")
  try:
    rc, err = _cli(["train", "--workdir", str(ro / "w")], capsys)
    assert rc == 2 and len(err) == 1 and "is not writable" in err[0], err
  finally:
    if os.geteuid() == 0:
      subprocess.run(["umount", "-l", str(ro)], capture_output=True, check=False)
    else:
      ro.chmod(0o755)
