#!/usr/bin/env python3
"""Create, set up, launch, watch and stop `vlax train` on Cloud TPU VMs and pod slices.

Every command is a thin, inspectable wrapper around `gcloud compute tpus ...`: it builds
the exact argv lists, prints them (`--dry-run`) or runs them one after another. Commands
that touch the workers use `--worker=all`, because on a pod slice every host must run the
same program (JAX discovers the coordinator and the process ids from the TPU metadata, so
no multi-host flags are needed). Standard library only, so it runs from any laptop.

  python tpu_scripts/tpu.py --dry-run launch --name my-tpu --zone us-central2-b \
      --config experiments/pretrain_oxe.py --workdir gs://bucket/run -- --config.num_steps=10

See tpu_scripts/README.md for the full recipe.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from typing import Sequence

# Where things live on every worker. A leading "~/" is expanded by the remote shell.
DEFAULT_REMOTE_DIR = "~/vlax"          # source tree (configs in experiments/ are read here)
DEFAULT_VENV = "~/vlax-venv"           # virtual environment with vlax + jax[tpu]
DEFAULT_LOG_DIR = "~/vlax-logs"        # train-<host>-<time>.log, latest-<host>.log, pid file
DEFAULT_PYTHON = "3.12"                # TPU VM images ship 3.10; vlax needs >= 3.11
REMOTE_TARBALL = "vlax-src.tar.gz"     # name of the uploaded source tree in the home dir
# `--data-dir D` becomes `--config.<DATA_DIR_KEY>=D` on the `vlax train` command line.
DATA_DIR_KEY = "data.data_dir"
UV_INSTALLER = "https://astral.sh/uv/install.sh"

# Default runtime (software) version per TPU generation, by accelerator-type prefix.
RUNTIME_VERSIONS = {
    "v2": "tpu-ubuntu2204-base",
    "v3": "tpu-ubuntu2204-base",
    "v4": "tpu-ubuntu2204-base",
    "v5litepod": "v2-alpha-tpuv5-lite",
    "v5e": "v2-alpha-tpuv5-lite",
    "v5p": "v2-alpha-tpuv5",
    "v6e": "v2-alpha-tpuv6e",
}

# Never shipped to the workers when uploading a local checkout.
TAR_EXCLUDES = (".git", ".venv", "__pycache__", "*.egg-info", ".pytest_cache",
                ".mypy_cache", "*.pyc")

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_GIT_URL = re.compile(r"^(https?://|ssh://|git@|git\+|git://|file://)|\.git/?$")
_WORKER = re.compile(r"^(all|\d+(-\d+)?(,\d+(-\d+)?)*)$")
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


class UsageError(Exception):
  """Bad command-line input; printed as one `error: ...` line, exit status 2."""


# ---------------------------------------------------------------------------------------
# Shell helpers shared with gpu_launch.py.


def rq(path: str) -> str:
  """Quotes a remote path for the remote shell, keeping a leading `~/` expandable."""
  if path == "~":
    return '"$HOME"'
  if path.startswith("~/"):
    return '"$HOME"/' + shlex.quote(path[2:])
  return shlex.quote(path)


def train_command(venv: str, config: str, workdir: str, extra: Sequence[str] = (),
                  multihost: Sequence[str] = ()) -> str:
  """The `vlax train ...` shell command (quoted) that every worker runs."""
  args = ["train"]
  if config:
    args += ["--config", config]
  args += ["--workdir", workdir, *multihost, *extra]
  return f"{rq(venv)}/bin/vlax " + shlex.join(args)


def launch_script(train_cmd: str, remote_dir: str, log_dir: str,
                  env: Sequence[str] = ()) -> str:
  """Remote one-liner: start `train_cmd` detached, log to a per-host file, record the pid.

  Refuses to start a second run while one is alive (the TPU can be opened by one process).
  """
  logs = rq(log_dir)
  pid = f'{logs}/train-"$(hostname)".pid'
  env_prefix = ("env " + shlex.join(env) + " ") if env else ""
  return "; ".join([
      "set -eu",
      f"mkdir -p {logs}",
      f"cd {rq(remote_dir)}",
      f'if [ -f {pid} ] && kill -0 "$(cat {pid})" 2>/dev/null; then '
      f'echo "$(hostname): vlax train is already running (pid $(cat {pid})); '
      f'stop it first" >&2; exit 1; fi',
      f'log={logs}/train-"$(hostname)"-"$(date +%Y%m%d-%H%M%S)".log',
      f'ln -sfn "$log" {logs}/latest-"$(hostname)".log',
      f'nohup {env_prefix}{train_cmd} > "$log" 2>&1 < /dev/null & echo $! > {pid}',
      f'echo "$(hostname): started vlax train (pid $(cat {pid})), log $log"',
  ])


def stop_script(venv: str, log_dir: str, wait_s: int) -> str:
  """Remote one-liner: SIGTERM the run (it checkpoints and exits), SIGKILL after wait_s.

  Finds the process from the pid file and, as a fallback, by its command line
  `<venv>/bin/vlax train` (the `[v]` keeps pgrep from matching this very shell).
  """
  logs = rq(log_dir)
  pid = f'{logs}/train-"$(hostname)".pid'
  return "; ".join([
      f"venv={rq(venv)}",
      f'pids=$( (cat {pid} 2>/dev/null; pgrep -f "$venv/bin/[v]lax train") | sort -u)',
      'alive=""',
      'for p in $pids; do kill -0 "$p" 2>/dev/null && alive="$alive $p"; done',
      f'if [ -z "$alive" ]; then echo "$(hostname): no vlax train process"; '
      f'rm -f {pid}; exit 0; fi',
      'echo "$(hostname): SIGTERM to$alive"',
      "kill -TERM $alive",
      'left="$alive"',
      f"for i in $(seq {5 * int(wait_s)}); do left=\"\"; for p in $alive; do "
      'kill -0 "$p" 2>/dev/null && left="$left $p"; done; '
      '[ -z "$left" ] && break; sleep 0.2; done',
      f'if [ -n "$left" ]; then echo "$(hostname): still alive after {int(wait_s)}s, '
      'SIGKILL to$left"; kill -KILL $left; fi',
      f"rm -f {pid}",
      'echo "$(hostname): stopped"',
  ])


def logs_script(log_dir: str, lines: int, follow: bool) -> str:
  """Remote one-liner: tail this host's latest log."""
  log = f'{rq(log_dir)}/latest-"$(hostname)".log'
  tail = f"tail -n {int(lines)}" + (" -F" if follow else "")
  return (f'if [ ! -e {log} ]; then echo "$(hostname): no log at" {log} '
          f'"(was launch run?)" >&2; exit 1; fi; {tail} {log}')


def status_script(log_dir: str) -> str:
  """Remote one-liner: is the run alive on this host, and the last line of its log."""
  logs = rq(log_dir)
  pid = f'{logs}/train-"$(hostname)".pid'
  log = f'{logs}/latest-"$(hostname)".log'
  return (f'if [ -f {pid} ] && kill -0 "$(cat {pid})" 2>/dev/null; then '
          f'echo "$(hostname): running (pid $(cat {pid}))"; '
          f'else echo "$(hostname): not running"; fi; '
          f'if [ -e {log} ]; then echo "  log: $(readlink {log})"; '
          f'tail -n 1 {log} | sed "s/^/  last: /"; fi')


def run_commands(commands: Sequence[Sequence[str]], dry_run: bool,
                 required: Sequence[str] = ("gcloud",)) -> int:
  """Prints (dry run) or runs each argv in order; stops at the first failure."""
  if dry_run:
    for cmd in commands:
      print(shlex.join(cmd))
    sys.stdout.flush()
    return 0
  for tool in required:
    if shutil.which(tool) is None:
      hint = (" (install the Google Cloud SDK: https://cloud.google.com/sdk/docs/install)"
              if tool == "gcloud" else "")
      raise UsageError(f"{tool!r} not found on PATH{hint}; use --dry-run to only print "
                       "the commands")
  for cmd in commands:
    print("+ " + shlex.join(cmd), file=sys.stderr, flush=True)
    try:
      rc = subprocess.run(list(cmd), check=False).returncode
    except KeyboardInterrupt:
      return 130
    except OSError as e:
      raise UsageError(f"cannot run {cmd[0]!r}: {e.strerror}") from None
    if rc != 0:
      print(f"error: {cmd[0]} exited with status {rc}: {shlex.join(cmd)[:200]}",
            file=sys.stderr)
      return rc
  return 0


# ---------------------------------------------------------------------------------------
# gcloud command builders.


def _gcloud(args: argparse.Namespace, *verb: str) -> list[str]:
  cmd = ["gcloud", "compute", "tpus", *verb, f"--zone={args.zone}"]
  if args.project:
    cmd.append(f"--project={args.project}")
  return cmd


def _ssh(args: argparse.Namespace, script: str, worker: str = "all") -> list[str]:
  cmd = _gcloud(args, "tpu-vm", "ssh", args.name) + [f"--worker={worker}"]
  if args.internal_ip:
    cmd.append("--internal-ip")
  if args.iap:
    cmd.append("--tunnel-through-iap")
  return cmd + [f"--command={script}"]


def _scp(args: argparse.Namespace, local: str, remote: str) -> list[str]:
  cmd = _gcloud(args, "tpu-vm", "scp", local, f"{args.name}:{remote}") + ["--worker=all"]
  if args.internal_ip:
    cmd.append("--internal-ip")
  if args.iap:
    cmd.append("--tunnel-through-iap")
  return cmd


def runtime_version(accelerator_type: str) -> str:
  """Default runtime version for an accelerator type such as v4-32 or v5litepod-16."""
  prefix = accelerator_type.split("-", 1)[0]
  if prefix not in RUNTIME_VERSIONS:
    raise UsageError(f"--accelerator-type {accelerator_type!r}: no default runtime "
                     f"version for {prefix!r}; pass --version explicitly")
  return RUNTIME_VERSIONS[prefix]


def cmd_create(args: argparse.Namespace, extra: list[str]) -> list[list[str]]:
  """`tpu-vm create`, or `queued-resources create` (waits in a queue for capacity)."""
  version = args.version or runtime_version(args.accelerator_type)
  if args.queued:
    if args.preemptible:
      raise UsageError("--preemptible is not available with --queued; use --spot")
    cmd = _gcloud(args, "queued-resources", "create", args.name)
    cmd += [f"--node-id={args.name}", f"--accelerator-type={args.accelerator_type}",
            f"--runtime-version={version}"]
  else:
    cmd = _gcloud(args, "tpu-vm", "create", args.name)
    cmd += [f"--accelerator-type={args.accelerator_type}", f"--version={version}"]
  if args.spot:
    cmd.append("--spot")
  if args.preemptible:
    cmd.append("--preemptible")
  return [cmd + extra]


def _is_git_url(repo: str) -> bool:
  return bool(_GIT_URL.search(repo)) and not os.path.exists(repo)


def cmd_setup(args: argparse.Namespace, extra: list[str]) -> list[list[str]]:
  """Ships the source (or a wheel/sdist) to every worker and installs vlax + jax[tpu]."""
  del extra
  repo = args.repo or _REPO_ROOT
  remote_dir, venv = rq(args.remote_dir), rq(args.venv)
  py = f"{venv}/bin/python"
  commands: list[list[str]] = []
  fetch: list[str] = []
  if _is_git_url(repo):
    fetch = [f"rm -rf {remote_dir}",
             f"git clone --quiet {shlex.quote(repo)} {remote_dir}"]
    if args.ref:
      fetch.append(f"git -C {remote_dir} checkout --quiet {shlex.quote(args.ref)}")
    package = remote_dir
  elif os.path.isdir(repo):
    local_tar = os.path.join(tempfile.gettempdir(), f"vlax-src-{args.name}.tar.gz")
    if args.ref:
      commands.append(["git", "-C", repo, "archive", "--format=tar.gz", "-o", local_tar,
                       args.ref])
    else:
      excludes = [f"--exclude={p}" for p in (*TAR_EXCLUDES, *args.exclude)]
      commands.append(["tar", "-czf", local_tar, *excludes, "-C", repo, "."])
    commands.append(_scp(args, local_tar, REMOTE_TARBALL))
    fetch = [f"rm -rf {remote_dir}", f"mkdir -p {remote_dir}",
             f'tar -xzf "$HOME"/{REMOTE_TARBALL} -C {remote_dir}']
    package = remote_dir
  elif os.path.isfile(repo) and repo.endswith((".whl", ".tar.gz", ".zip")):
    if args.ref:
      raise UsageError(f"--ref {args.ref!r} only applies to a git URL or a local checkout, "
                       f"not to the file {repo!r}")
    base = os.path.basename(repo)
    commands.append(_scp(args, repo, base))
    package = f'"$HOME"/{shlex.quote(base)}'
  else:
    raise UsageError(f"--repo {repo!r} is neither a git URL, a local directory, nor a "
                     ".whl/.tar.gz file")
  jax_spec = (shlex.quote(args.jax_spec) if args.jax_spec else
              f"\"jax[tpu]==$({py} -c 'import jax; print(jax.__version__)')\"")
  script = "; ".join([
      "set -eu",
      'export PATH="$HOME/.local/bin:$HOME/.cargo/bin:$PATH"',
      f"command -v uv >/dev/null 2>&1 || curl -LsSf {UV_INSTALLER} | sh",
      *fetch,
      f"rm -rf {venv}",
      f"uv venv --quiet --python {shlex.quote(args.python)} {venv}",
      f"uv pip install --quiet --python {py} {package}",
      # libtpu must match jax exactly: pin jax[tpu] to the jax that vlax pulled in.
      f"uv pip install --quiet --python {py} {jax_spec}",
      f"{venv}/bin/vlax --help > /dev/null",
      f"printf '%s: ' \"$(hostname)\"",
      f"{py} -c 'import importlib.metadata as m; "
      "print(\"installed vlax\", m.version(\"vlax\"), \"jax\", m.version(\"jax\"))'",
  ])
  commands.append(_ssh(args, script))
  return commands


def cmd_launch(args: argparse.Namespace, extra: list[str]) -> list[list[str]]:
  """Starts `vlax train` in the background on every worker (same command everywhere)."""
  for kv in args.env:
    if not _ENV.match(kv):
      raise UsageError(f"--env {kv!r}: expected KEY=VALUE")
  if not args.workdir.startswith("gs://"):
    print(f"warning: --workdir {args.workdir!r} is not a gs:// path; on a multi-host slice "
          "every worker must write to the same shared directory", file=sys.stderr)
  local_config = os.path.join(_REPO_ROOT, args.config.split(":", 1)[0])
  if not os.path.isabs(args.config) and not os.path.exists(local_config):
    print(f"warning: --config {args.config!r} is not in the local checkout; it must exist "
          f"under {args.remote_dir} on every worker", file=sys.stderr)
  train_extra = list(extra)
  if args.data_dir:
    train_extra.insert(0, f"--config.{DATA_DIR_KEY}={args.data_dir}")
  train = train_command(args.venv, args.config, args.workdir, train_extra)
  return [_ssh(args, launch_script(train, args.remote_dir, args.log_dir, args.env))]


def cmd_logs(args: argparse.Namespace, extra: list[str]) -> list[list[str]]:
  """Tails the latest log of one worker (or all)."""
  del extra
  if not _WORKER.match(args.worker):
    raise UsageError(f"--worker {args.worker!r}: expected 'all', an index, or a list "
                     "like 0,2-3")
  return [_ssh(args, logs_script(args.log_dir, args.lines, args.follow), args.worker)]


def cmd_stop(args: argparse.Namespace, extra: list[str]) -> list[list[str]]:
  """SIGTERM on every worker (vlax checkpoints on SIGTERM), SIGKILL after --wait s."""
  del extra
  return [_ssh(args, stop_script(args.venv, args.log_dir, args.wait))]


def cmd_delete(args: argparse.Namespace, extra: list[str]) -> list[list[str]]:
  """Deletes the TPU VM (or the queued resource and its node)."""
  del extra
  if args.queued:
    cmd = _gcloud(args, "queued-resources", "delete", args.name) + ["--force"]
  else:
    cmd = _gcloud(args, "tpu-vm", "delete", args.name)
  if args.yes:
    cmd.append("--quiet")
  return [cmd]


def cmd_status(args: argparse.Namespace, extra: list[str]) -> list[list[str]]:
  """Without --name: list TPUs (and queued resources). With it: describe + per-worker run."""
  del extra
  if not args.name:
    return [_gcloud(args, "tpu-vm", "list"), _gcloud(args, "queued-resources", "list")]
  commands = []
  if args.queued:
    commands.append(_gcloud(args, "queued-resources", "describe", args.name))
  commands.append(_gcloud(args, "tpu-vm", "describe", args.name)
                  + ["--format=table(name.basename(),acceleratorType,state,health)"])
  commands.append(_ssh(args, status_script(args.log_dir)))
  return commands


# ---------------------------------------------------------------------------------------
# Command line.


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="tpu.py",
      description="Create, set up, launch, watch and stop vlax training on Cloud TPU VMs. "
                  "Put extra arguments for `vlax train` (launch) or `gcloud ... create` "
                  "(create) after `--`.")
  parser.add_argument("--dry-run", action="store_true",
                      help="print the commands (shell-quoted, one per line); run nothing")
  sub = parser.add_subparsers(dest="command", metavar="COMMAND")
  sub.required = True

  def add(name: str, help_: str, fn, name_required: bool = True) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_, description=fn.__doc__)
    p.add_argument("--dry-run", action="store_true", default=argparse.SUPPRESS,
                   help="print the commands; run nothing")
    p.add_argument("--name", required=name_required, help="TPU VM name")
    p.add_argument("--zone", required=True, help="e.g. us-central2-b")
    p.add_argument("--project", default=None, help="GCP project (default: gcloud's)")
    p.set_defaults(fn=fn)
    return p

  def add_ssh_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--internal-ip", action="store_true",
                   help="ssh to the workers' internal IPs (from inside the VPC)")
    p.add_argument("--iap", action="store_true",
                   help="ssh through Identity-Aware Proxy (workers without external IPs)")

  def add_dirs(p: argparse.ArgumentParser, log: bool = True, src: bool = False) -> None:
    if src:
      p.add_argument("--remote-dir", default=DEFAULT_REMOTE_DIR,
                     help="source tree on the workers (default: %(default)s)")
      p.add_argument("--venv", default=DEFAULT_VENV,
                     help="virtualenv on the workers (default: %(default)s)")
    if log:
      p.add_argument("--log-dir", default=DEFAULT_LOG_DIR,
                     help="log and pid directory on the workers (default: %(default)s)")

  p = add("create", "create a TPU VM / pod slice", cmd_create)
  p.add_argument("--accelerator-type", required=True, help="e.g. v4-32, v5litepod-16, v5p-64")
  p.add_argument("--version", default=None,
                 help="TPU runtime version (default: by generation, e.g. v4 -> "
                      f"{RUNTIME_VERSIONS['v4']}, v5litepod -> {RUNTIME_VERSIONS['v5litepod']})")
  kind = p.add_mutually_exclusive_group()
  kind.add_argument("--spot", action="store_true", help="Spot VM (preemptible, no 24 h limit)")
  kind.add_argument("--preemptible", action="store_true", help="legacy preemptible TPU")
  p.add_argument("--queued", action="store_true",
                 help="request through `queued-resources create` (waits for capacity; "
                      "the recommended way for --spot and large slices)")

  p = add("setup", "install vlax and jax[tpu] on every worker", cmd_setup)
  p.add_argument("--repo", default=None,
                 help="git URL, local checkout (uploaded as a tarball), or a .whl/.tar.gz "
                      "(default: this checkout)")
  p.add_argument("--ref", default=None,
                 help="git ref: checked out on the workers (git URL) or archived locally "
                      "with `git archive` (local checkout; default: the working tree)")
  p.add_argument("--python", default=DEFAULT_PYTHON,
                 help="Python version for the venv, installed by uv (default: %(default)s)")
  p.add_argument("--jax-spec", default=None,
                 help="pip requirement for JAX (default: jax[tpu] pinned to the jax "
                      "version vlax installed)")
  p.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                 help="extra tar --exclude pattern for a local checkout (repeatable)")
  add_dirs(p, log=False, src=True)
  add_ssh_flags(p)

  p = add("launch", "run `vlax train` on every worker in the background", cmd_launch)
  p.add_argument("--config", required=True,
                 help="config path relative to --remote-dir, e.g. experiments/pretrain_oxe.py")
  p.add_argument("--workdir", required=True, help="output directory, e.g. gs://bucket/run")
  p.add_argument("--data-dir", default=None,
                 help=f"RLDS data_dir (passed as --config.{DATA_DIR_KEY}=...)")
  p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                 help="environment variable for the training process (repeatable)")
  add_dirs(p, src=True)
  add_ssh_flags(p)

  p = add("logs", "tail the training log of a worker", cmd_logs)
  p.add_argument("--worker", default="0", help="worker index, list, or 'all' (default: 0)")
  p.add_argument("--lines", type=int, default=100, help="lines to show (default: 100)")
  p.add_argument("--follow", "-f", action="store_true", help="keep following (Ctrl-C ends)")
  add_dirs(p)
  add_ssh_flags(p)

  p = add("stop", "stop the training processes on every worker", cmd_stop)
  p.add_argument("--wait", type=int, default=120,
                 help="seconds to let SIGTERM write its checkpoint before SIGKILL "
                      "(default: %(default)s)")
  add_dirs(p, src=True)
  add_ssh_flags(p)

  p = add("delete", "delete the TPU VM", cmd_delete)
  p.add_argument("--queued", action="store_true",
                 help="delete the queued resource (created with create --queued) and its node")
  p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")

  p = add("status", "list TPUs, or describe one and show whether training runs",
          cmd_status, name_required=False)
  p.add_argument("--queued", action="store_true", help="also describe the queued resource")
  add_dirs(p)
  add_ssh_flags(p)
  return parser


# Commands that accept arguments after `--`.
_TAKES_EXTRA = ("create", "launch")


def main(argv: Sequence[str] | None = None) -> int:
  """Entry point; returns the exit status (2 for bad input)."""
  argv = list(sys.argv[1:] if argv is None else argv)
  extra: list[str] = []
  if "--" in argv:
    i = argv.index("--")
    argv, extra = argv[:i], argv[i + 1:]
  parser = build_parser()
  args = parser.parse_args(argv)
  try:
    if extra and args.command not in _TAKES_EXTRA:
      raise UsageError(f"{args.command}: arguments after '--' ({shlex.join(extra)}) are "
                       f"only accepted by {' and '.join(_TAKES_EXTRA)}")
    commands = args.fn(args, extra)
    return run_commands(commands, args.dry_run)
  except UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
