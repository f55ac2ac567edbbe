"""tpu_scripts/: dry-run output of every command, and the remote scripts run for real.

No gcloud needed: commands are checked in --dry-run mode, and the shell one-liners that
would run on the workers are executed locally with bash under a fake $HOME, against a
fake `vlax` that records its argv and honours SIGTERM like the real trainer.
"""

import importlib.util
import os
import shlex
import shutil
import socket
import subprocess
import sys
import textwrap
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TPU_PY = os.path.join(ROOT, "tpu_scripts", "tpu.py")
GPU_PY = os.path.join(ROOT, "tpu_scripts", "gpu_launch.py")
BASH = shutil.which("bash")
needs_bash = pytest.mark.skipif(BASH is None or shutil.which("pgrep") is None,
                                reason="needs bash and pgrep")


def _load(name, path):
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


tpu = _load("vlax_tpu_scripts_tpu", TPU_PY)
gpu = _load("vlax_tpu_scripts_gpu_launch", GPU_PY)


def dry(capsys, *argv, module=None):
  """Runs `<module> --dry-run argv` and returns the printed commands as argv lists."""
  module = module or tpu
  rc = module.main(["--dry-run", *argv])
  out = capsys.readouterr().out
  assert rc == 0, out
  return [shlex.split(line) for line in out.strip().splitlines()]


def remote(cmd):
  """The --command=... script of a gcloud ssh argv."""
  scripts = [a[len("--command="):] for a in cmd if a.startswith("--command=")]
  assert len(scripts) == 1, cmd
  return scripts[0]


def assert_bash_syntax(script):
  if BASH:
    r = subprocess.run([BASH, "-n", "-c", script], capture_output=True, text=True)
    assert r.returncode == 0, (r.stderr, script)


NAME, ZONE = "my-tpu", "us-central2-b"
BASE = ["--name", NAME, "--zone", ZONE]


# ---------------------------------------------------------------------------------------
# create / delete / status


def test_create_direct_and_spot(capsys):
  [cmd] = dry(capsys, "create", *BASE, "--accelerator-type", "v4-32", "--project", "proj")
  assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", NAME]
  assert f"--zone={ZONE}" in cmd and "--project=proj" in cmd
  assert "--accelerator-type=v4-32" in cmd
  assert "--version=tpu-ubuntu2204-base" in cmd  # default runtime for v4
  [cmd] = dry(capsys, "create", *BASE, "--accelerator-type", "v5litepod-16", "--spot")
  assert "--version=v2-alpha-tpuv5-lite" in cmd and "--spot" in cmd
  [cmd] = dry(capsys, "create", *BASE, "--accelerator-type", "v4-8", "--version", "rt-x",
              "--preemptible")
  assert "--version=rt-x" in cmd and "--preemptible" in cmd


def test_create_queued_and_extra_gcloud_flags(capsys):
  [cmd] = dry(capsys, "create", *BASE, "--accelerator-type", "v5p-64", "--spot", "--queued",
              "--", "--network=my net")
  assert cmd[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", NAME]
  assert f"--node-id={NAME}" in cmd
  assert "--runtime-version=v2-alpha-tpuv5" in cmd and "--spot" in cmd
  assert cmd[-1] == "--network=my net"


def test_create_bad_input(capsys):
  assert tpu.main(["--dry-run", "create", *BASE, "--accelerator-type", "x9-8"]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "x9-8" in err and "--version" in err
  assert tpu.main(["--dry-run", "create", *BASE, "--accelerator-type", "v4-8",
                   "--preemptible", "--queued"]) == 2
  assert "--preemptible" in capsys.readouterr().err
  with pytest.raises(SystemExit) as e:  # --spot and --preemptible exclude each other
    tpu.main(["--dry-run", "create", *BASE, "--accelerator-type", "v4-8", "--spot",
              "--preemptible"])
  assert e.value.code == 2


def test_delete_and_status(capsys):
  [cmd] = dry(capsys, "delete", *BASE)
  assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", NAME]
  assert "--quiet" not in cmd  # gcloud asks for confirmation unless --yes
  [cmd] = dry(capsys, "delete", *BASE, "--queued", "--yes")
  assert cmd[3:6] == ["queued-resources", "delete", NAME] and "--force" in cmd
  assert "--quiet" in cmd
  cmds = dry(capsys, "status", "--zone", ZONE)
  assert [c[3:5] for c in cmds] == [["tpu-vm", "list"], ["queued-resources", "list"]]
  cmds = dry(capsys, "status", *BASE)
  assert cmds[0][3:6] == ["tpu-vm", "describe", NAME]
  assert cmds[1][3:6] == ["tpu-vm", "ssh", NAME] and "--worker=all" in cmds[1]
  assert_bash_syntax(remote(cmds[1]))


# ---------------------------------------------------------------------------------------
# setup


def test_setup_local_checkout_uploads_tarball(capsys):
  cmds = dry(capsys, "setup", *BASE, "--project", "proj", "--exclude", "runs")
  tar, scp, ssh = cmds
  assert tar[:2] == ["tar", "-czf"] and tar[-3:] == ["-C", ROOT, "."]
  assert "--exclude=.git" in tar and "--exclude=.venv" in tar and "--exclude=runs" in tar
  assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
  assert scp[5] == tar[2] and scp[6] == f"{NAME}:vlax-src.tar.gz"
  assert "--worker=all" in scp and "--project=proj" in scp
  assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", NAME]
  assert "--worker=all" in ssh and "--project=proj" in ssh
  script = remote(ssh)
  assert 'tar -xzf "$HOME"/vlax-src.tar.gz -C "$HOME"/vlax' in script
  assert "uv venv" in script and '"$HOME"/vlax-venv' in script
  assert 'uv pip install --quiet --python "$HOME"/vlax-venv/bin/python "$HOME"/vlax' in script
  assert "jax[tpu]==" in script  # libtpu pinned to the jax that vlax pulled in
  assert_bash_syntax(script)


def test_setup_git_url_with_ref(capsys):
  url = "https://github.com/example/vlax.git"
  [ssh] = dry(capsys, "setup", *BASE, "--repo", url, "--ref", "v0.1; rm -rf /",
              "--jax-spec", "jax[tpu]==0.10.2", "--python", "3.11")
  script = remote(ssh)
  assert f'git clone --quiet {url} "$HOME"/vlax' in script
  assert "checkout --quiet 'v0.1; rm -rf /'" in script  # user input stays one word
  assert "'jax[tpu]==0.10.2'" in script and "--python 3.11" in script
  assert_bash_syntax(script)


def test_setup_local_ref_and_wheel(capsys, tmp_path):
  archive, scp, _ = dry(capsys, "setup", *BASE, "--ref", "main")
  assert archive[:4] == ["git", "-C", ROOT, "archive"] and archive[-1] == "main"
  assert scp[5] == archive[archive.index("-o") + 1]
  wheel = tmp_path / "vlax-0.1.0-py3-none-any.whl"
  wheel.write_bytes(b"")
  scp, ssh = dry(capsys, "setup", *BASE, "--repo", str(wheel))
  assert scp[5:7] == [str(wheel), f"{NAME}:{wheel.name}"] and "--worker=all" in scp
  assert f'"$HOME"/{wheel.name}' in remote(ssh)
  assert tpu.main(["--dry-run", "setup", *BASE, "--repo", str(tmp_path / "nope")]) == 2
  assert "nope" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------
# launch / logs / stop


LAUNCH = ["launch", *BASE, "--config", "experiments/pretrain_oxe.py",
          "--workdir", "gs://bucket/run"]


def test_launch_command(capsys):
  [ssh] = dry(capsys, *LAUNCH, "--data-dir", "gs://bucket/rlds", "--env", "WANDB_MODE=offline",
              "--", "--config.num_steps=10", "--config.wandb.name=my run")
  assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", NAME]
  assert "--worker=all" in ssh and f"--zone={ZONE}" in ssh
  script = remote(ssh)
  assert ('"$HOME"/vlax-venv/bin/vlax train --config experiments/pretrain_oxe.py '
          "--workdir gs://bucket/run "
          f"--config.{tpu.DATA_DIR_KEY}=gs://bucket/rlds --config.num_steps=10 "
          "'--config.wandb.name=my run'") in script
  assert "nohup env WANDB_MODE=offline " in script
  assert "--coordinator_address" not in script  # TPU VMs discover their peers
  assert 'cd "$HOME"/vlax' in script
  assert_bash_syntax(script)


def test_launch_warns_and_rejects(capsys):
  assert tpu.main(["--dry-run", "launch", *BASE, "--config", "experiments/nope.py",
                   "--workdir", "/tmp/r"]) == 0
  err = capsys.readouterr().err
  assert "gs://" in err and "experiments/nope.py" in err
  assert tpu.main(["--dry-run", *LAUNCH, "--env", "1BAD"]) == 2
  assert "1BAD" in capsys.readouterr().err


def test_logs_stop(capsys):
  [ssh] = dry(capsys, "logs", *BASE)
  assert "--worker=0" in ssh and "tail -n 100 " in remote(ssh)
  [ssh] = dry(capsys, "logs", *BASE, "--worker", "all", "--follow", "--lines", "5")
  assert "--worker=all" in ssh and "tail -n 5 -F" in remote(ssh)
  assert tpu.main(["--dry-run", "logs", *BASE, "--worker", "0;ls"]) == 2
  assert "--worker" in capsys.readouterr().err
  [ssh] = dry(capsys, "stop", *BASE, "--wait", "7", "--iap")
  assert "--worker=all" in ssh and "--tunnel-through-iap" in ssh
  script = remote(ssh)
  assert "kill -TERM" in script and "seq 35" in script and "kill -KILL" in script
  assert_bash_syntax(script)


def test_dry_run_flag_after_command(capsys):
  assert tpu.main(["delete", *BASE, "--dry-run"]) == 0
  assert capsys.readouterr().out.startswith("gcloud compute tpus tpu-vm delete")


# ---------------------------------------------------------------------------------------
# errors


def _run_cli(path, *argv, env_path):
  env = dict(os.environ, PATH=env_path)
  return subprocess.run([sys.executable, path, *argv], capture_output=True, text=True,
                        env=env, timeout=60)


def test_without_gcloud_on_path_fails_clearly(tmp_path):
  r = _run_cli(TPU_PY, "delete", *BASE, env_path=str(tmp_path))
  assert r.returncode == 2
  assert r.stderr.count("\n") == 1 and "gcloud" in r.stderr and "not found on PATH" in r.stderr
  assert r.stdout == ""
  r = _run_cli(TPU_PY, "--dry-run", "delete", *BASE, env_path=str(tmp_path))
  assert r.returncode == 0 and r.stdout.startswith("gcloud ")


def test_bad_arguments(tmp_path):
  r = _run_cli(TPU_PY, "launch", "--zone", ZONE, "--config", "c.py", "--workdir", "w",
               env_path=str(tmp_path))
  assert r.returncode == 2 and "--name" in r.stderr and "Traceback" not in r.stderr
  r = _run_cli(TPU_PY, "stop", *BASE, "--", "--config.x=1", env_path=str(tmp_path))
  assert r.returncode == 2 and "'--'" in r.stderr
  r = _run_cli(TPU_PY, "frobnicate", env_path=str(tmp_path))
  assert r.returncode == 2 and "frobnicate" in r.stderr
  r = _run_cli(TPU_PY, "--help", env_path=str(tmp_path))
  assert r.returncode == 0 and "launch" in r.stdout


# ---------------------------------------------------------------------------------------
# The worker-side scripts, executed for real with a fake gcloud and a fake vlax.

FAKE_VLAX = """\
#!/usr/bin/env bash
for a in "$@"; do printf '%s\\n' "$a"; done > "$HOME/argv.txt"
trap 'echo "SIGTERM: checkpoint saved"; exit 0' TERM
for i in $(seq 1200); do echo "step $i"; sleep 0.05; done  # gives up after ~1 min
"""

# Runs the --command of `gcloud ... ssh` locally; logs every call.
FAKE_GCLOUD = """\
#!/usr/bin/env bash
printf '%s\\n' "$*" >> "$HOME/gcloud_calls.txt"
for a in "$@"; do case "$a" in --command=*) exec bash -c "${a#--command=}";; esac; done
"""


def _fake_worker(tmp_path):
  home = tmp_path / "home"
  (home / "vlax-venv" / "bin").mkdir(parents=True)
  (home / "vlax").mkdir()
  tools = tmp_path / "tools"
  tools.mkdir()
  for path, text in [(home / "vlax-venv" / "bin" / "vlax", FAKE_VLAX),
                     (tools / "gcloud", FAKE_GCLOUD)]:
    path.write_text(textwrap.dedent(text))
    path.chmod(0o755)
  env = dict(os.environ, HOME=str(home), PATH=f"{tools}{os.pathsep}{os.environ['PATH']}")
  return home, env


def _wait_for(predicate, timeout=10.0):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if predicate():
      return True
    time.sleep(0.05)
  return False


@needs_bash
def test_tpu_launch_logs_status_stop_for_real(tmp_path):
  home, env = _fake_worker(tmp_path)
  run = lambda *a: subprocess.run([sys.executable, TPU_PY, *a], capture_output=True,
                                  text=True, env=env, timeout=60, cwd=str(tmp_path))
  extra = ["--config.wandb.name=my run", "--config.note=it's \"$HOME\""]
  r = run(*LAUNCH, "--env", "A=b c", "--", *extra)
  assert r.returncode == 0, r.stderr
  assert "started vlax train" in r.stdout
  argv_file = home / "argv.txt"
  assert _wait_for(argv_file.exists)
  _wait_for(lambda: len(argv_file.read_text().splitlines()) == 7)
  assert argv_file.read_text().splitlines() == [
      "train", "--config", "experiments/pretrain_oxe.py", "--workdir", "gs://bucket/run",
      *extra]
  # A second launch refuses while the first one is alive.
  r = run(*LAUNCH)
  assert r.returncode != 0 and "already running" in r.stderr
  r = run("status", *BASE)
  assert r.returncode == 0 and "running (pid" in r.stdout
  latest = home / "vlax-logs" / f"latest-{socket.gethostname()}.log"
  assert _wait_for(lambda: latest.exists() and latest.read_text().count("step") >= 3)
  r = run("logs", *BASE, "--lines", "2")
  assert r.returncode == 0 and len(r.stdout.splitlines()) == 2
  assert r.stdout.startswith("step "), r.stdout
  r = run("stop", *BASE, "--wait", "10")
  assert r.returncode == 0 and "stopped" in r.stdout, r.stderr
  logs = list((home / "vlax-logs").glob("train-*.log"))
  assert len(logs) == 1
  assert _wait_for(lambda: "SIGTERM: checkpoint saved" in logs[0].read_text())
  r = run("status", *BASE)
  assert "not running" in r.stdout
  calls = (home / "gcloud_calls.txt").read_text()
  assert calls.count("compute tpus tpu-vm ssh my-tpu") >= 6
  assert "--worker=all" in calls


# Stands in for uv: `uv venv DIR` makes a venv whose python is this test's interpreter
# (which has jax and vlax installed); `uv pip install ...` is only recorded.
FAKE_UV = """\
#!/usr/bin/env bash
printf '%s\\n' "$*" >> "$HOME/uv_calls.txt"
if [ "$1" = venv ]; then
  dir="${@: -1}"; mkdir -p "$dir/bin"
  printf '#!/bin/sh\\nexec %s "$@"\\n' "$PYTHON_FOR_TESTS" > "$dir/bin/python"
  printf '#!/bin/sh\\nexit 0\\n' > "$dir/bin/vlax"
  chmod +x "$dir/bin/python" "$dir/bin/vlax"
fi
"""

# gcloud scp: copy LOCAL to $HOME/REMOTE; gcloud ssh: run --command locally.
FAKE_GCLOUD_SCP = """\
#!/usr/bin/env bash
printf '%s\\n' "$*" >> "$HOME/gcloud_calls.txt"
if [ "$4" = scp ]; then cp "$5" "$HOME/${6#*:}"; exit; fi
for a in "$@"; do case "$a" in --command=*) exec bash -c "${a#--command=}";; esac; done
"""


@needs_bash
def test_tpu_setup_for_real(tmp_path):
  home, env = _fake_worker(tmp_path)
  for name, text in [("uv", FAKE_UV), ("gcloud", FAKE_GCLOUD_SCP)]:
    (tmp_path / "tools" / name).write_text(textwrap.dedent(text))
    (tmp_path / "tools" / name).chmod(0o755)
  env["PYTHON_FOR_TESTS"] = sys.executable
  env["TMPDIR"] = str(tmp_path)  # where the local tarball is written
  repo = tmp_path / "checkout"
  (repo / "experiments").mkdir(parents=True)
  (repo / "experiments" / "my_config.py").write_text("CONFIG = 1\n")
  (repo / "pyproject.toml").write_text("[project]\nname = 'vlax'\n")
  (repo / ".git").mkdir()
  (repo / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
  r = subprocess.run([sys.executable, TPU_PY, "setup", *BASE, "--repo", str(repo)],
                     capture_output=True, text=True, env=env, timeout=120, cwd=str(tmp_path))
  assert r.returncode == 0, r.stderr
  assert "installed vlax" in r.stdout
  tree = home / "vlax"
  assert (tree / "experiments" / "my_config.py").read_text() == "CONFIG = 1\n"
  assert not (tree / ".git").exists()
  uv_calls = (home / "uv_calls.txt").read_text().splitlines()
  assert uv_calls[0].startswith("venv --quiet --python 3.12 ")
  assert uv_calls[1].endswith(f"{home}/vlax")
  import jax  # the fake venv's python is this interpreter: jax[tpu] pinned to its jax
  assert uv_calls[2].endswith(f"jax[tpu]=={jax.__version__}")
  calls = (home / "gcloud_calls.txt").read_text()
  assert f"tpu-vm scp {tmp_path}/vlax-src-{NAME}.tar.gz {NAME}:vlax-src.tar.gz" in calls
  assert "tpu-vm ssh" in calls


@needs_bash
def test_gpu_launch_passes_multihost_flags_for_real(tmp_path):
  home, env = _fake_worker(tmp_path)
  fake_ssh = tmp_path / "tools" / "fake-ssh"
  fake_ssh.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$1" >> "$HOME/hosts.txt"\n'
                      'exec bash -c "$2"\n')
  fake_ssh.chmod(0o755)
  hostfile = tmp_path / "hosts"
  hostfile.write_text("# head node first\nalice@node-a.cluster\n")
  run = lambda *a: subprocess.run(
      [sys.executable, GPU_PY, *a[:1], "--hostfile", str(hostfile), "--ssh", str(fake_ssh),
       *a[1:]], capture_output=True, text=True, env=env, timeout=60, cwd=str(tmp_path))
  r = run("launch", "--config", "experiments/pretrain_oxe.py", "--workdir", "/shared/r",
          "--port", "1234", "--", "--config.batch_size=8")
  assert r.returncode == 0, r.stderr
  argv_file = home / "argv.txt"
  assert _wait_for(lambda: argv_file.exists() and
                   len(argv_file.read_text().splitlines()) == 12)
  assert argv_file.read_text().splitlines() == [
      "train", "--config", "experiments/pretrain_oxe.py", "--workdir", "/shared/r",
      "--coordinator_address", "node-a.cluster:1234", "--num_processes", "1",
      "--process_id", "0", "--config.batch_size=8"]
  r = run("stop", "--wait", "10")
  assert r.returncode == 0 and "stopped" in r.stdout, r.stderr
  assert (home / "hosts.txt").read_text().splitlines() == ["alice@node-a.cluster"] * 2


# ---------------------------------------------------------------------------------------
# gpu_launch.py dry run


def test_gpu_launch_dry_run(capsys, tmp_path):
  hostfile = tmp_path / "hosts"
  hostfile.write_text("alice@gpu-0  # coordinator\n\ngpu-1\ngpu-2\n")
  cmds = dry(capsys, "launch", "--hostfile", str(hostfile), "--config", "experiments/x.py",
             "--workdir", "/shared/run", "--", "--config.name=a b", module=gpu)
  assert [c[:4] for c in cmds] == [["ssh", "-o", "BatchMode=yes", h]
                                   for h in ("alice@gpu-0", "gpu-1", "gpu-2")]
  for i, cmd in enumerate(cmds):
    assert len(cmd) == 5
    assert (f"--coordinator_address gpu-0:{gpu.DEFAULT_PORT} --num_processes 3 "
            f"--process_id {i} '--config.name=a b'") in cmd[4]
    assert_bash_syntax(cmd[4])
  cmds = dry(capsys, "launch", "--hostfile", str(hostfile), "--config", "c.py",
             "--workdir", "w", "--coordinator", "10.0.0.1", "--port", "9999", module=gpu)
  assert all("--coordinator_address 10.0.0.1:9999" in c[-1] for c in cmds)
  [cmd] = dry(capsys, "logs", "--hostfile", str(hostfile), "--host", "2", "-f", module=gpu)
  assert cmd[3] == "gpu-2" and "tail -n 100 -F" in cmd[4]
  assert len(dry(capsys, "stop", "--hostfile", str(hostfile), module=gpu)) == 3


def test_gpu_launch_errors(capsys, tmp_path):
  assert gpu.main(["--dry-run", "stop", "--hostfile", str(tmp_path / "missing")]) == 2
  assert "missing" in capsys.readouterr().err
  (tmp_path / "empty").write_text("# nothing\n")
  assert gpu.main(["--dry-run", "stop", "--hostfile", str(tmp_path / "empty")]) == 2
  assert "no hosts" in capsys.readouterr().err
  (tmp_path / "h").write_text("a\nb\n")
  assert gpu.main(["--dry-run", "logs", "--hostfile", str(tmp_path / "h"), "--host", "5"]) == 2
  assert "--host 5" in capsys.readouterr().err
  r = _run_cli(GPU_PY, "stop", "--hostfile", str(tmp_path / "h"), "--ssh", "no-such-ssh",
               env_path=str(tmp_path))
  assert r.returncode == 2 and "no-such-ssh" in r.stderr and "not found on PATH" in r.stderr
