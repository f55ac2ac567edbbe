#!/usr/bin/env python3
"""Launch, watch and stop `vlax train` on N GPU (or CPU) hosts over plain ssh.

Unlike TPU VMs, GPU clusters have no metadata server from which JAX could discover its
peers, so every process gets explicit flags: `--coordinator_address HOST:PORT` (process
0's host), `--num_processes N` and its own `--process_id I` (the host's line in the
hostfile). One process per host; each process drives all of its host's local GPUs.

  python tpu_scripts/gpu_launch.py --dry-run launch --hostfile hosts.txt \
      --config experiments/pretrain_oxe.py --workdir /shared/runs/oxe -- --config.num_steps=10

Hostfile: one `[user@]host` per line; `#` starts a comment; line order = process id.
Standard library only; reuses the remote scripts of tpu.py (same log/pid layout).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tpu import (DEFAULT_LOG_DIR, DEFAULT_REMOTE_DIR, DEFAULT_VENV, UsageError,  # noqa: E402
                 launch_script, logs_script, run_commands, status_script, stop_script,
                 train_command)

DEFAULT_PORT = 8476
DEFAULT_SSH = "ssh -o BatchMode=yes"


def read_hostfile(path: str) -> list[str]:
  """Hosts in process-id order; comments and blank lines ignored."""
  try:
    with open(path) as f:
      lines = f.read().splitlines()
  except OSError as e:
    raise UsageError(f"--hostfile {path!r}: {e.strerror}") from None
  hosts = [line.split("#", 1)[0].strip() for line in lines]
  hosts = [h for h in hosts if h]
  if not hosts:
    raise UsageError(f"--hostfile {path!r}: no hosts (one [user@]host per line)")
  for h in hosts:
    if len(h.split()) != 1:
      raise UsageError(f"--hostfile {path!r}: bad line {h!r} (one [user@]host per line)")
  if len(set(hosts)) != len(hosts):
    raise UsageError(f"--hostfile {path!r}: a host appears twice")
  return hosts


def _ssh(args: argparse.Namespace, host: str, script: str) -> list[str]:
  return shlex.split(args.ssh) + [host, script]


def cmd_launch(args: argparse.Namespace, extra: list[str]) -> list[list[str]]:
  """One `vlax train` per host, with explicit coordinator / process flags."""
  hosts = read_hostfile(args.hostfile)
  for kv in args.env:
    if "=" not in kv or kv.startswith("="):
      raise UsageError(f"--env {kv!r}: expected KEY=VALUE")
  coordinator = args.coordinator or hosts[0].rsplit("@", 1)[-1]
  address = f"{coordinator}:{args.port}"
  commands = []
  for i, host in enumerate(hosts):
    multihost = ["--coordinator_address", address, "--num_processes", str(len(hosts)),
                 "--process_id", str(i)]
    train = train_command(args.venv, args.config, args.workdir, extra, multihost)
    commands.append(_ssh(args, host, launch_script(train, args.remote_dir, args.log_dir,
                                                   args.env)))
  return commands


def cmd_stop(args: argparse.Namespace, extra: list[str]) -> list[list[str]]:
  """SIGTERM on every host (vlax checkpoints on SIGTERM), SIGKILL after --wait s."""
  del extra
  script = stop_script(args.venv, args.log_dir, args.wait)
  return [_ssh(args, h, script) for h in read_hostfile(args.hostfile)]


def cmd_logs(args: argparse.Namespace, extra: list[str]) -> list[list[str]]:
  """Tails the latest log of one host (by its line index in the hostfile)."""
  del extra
  hosts = read_hostfile(args.hostfile)
  if not 0 <= args.host < len(hosts):
    raise UsageError(f"--host {args.host}: the hostfile has {len(hosts)} hosts")
  return [_ssh(args, hosts[args.host], logs_script(args.log_dir, args.lines, args.follow))]


def cmd_status(args: argparse.Namespace, extra: list[str]) -> list[list[str]]:
  """Whether training runs on each host, and the last log line."""
  del extra
  script = status_script(args.log_dir)
  return [_ssh(args, h, script) for h in read_hostfile(args.hostfile)]


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="gpu_launch.py",
      description="Run vlax train on GPU hosts over ssh with explicit multi-host flags. "
                  "Extra `vlax train` arguments (launch) go after `--`.")
  parser.add_argument("--dry-run", action="store_true",
                      help="print the commands (shell-quoted, one per line); run nothing")
  sub = parser.add_subparsers(dest="command", metavar="COMMAND")
  sub.required = True

  def add(name: str, help_: str, fn) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_, description=fn.__doc__)
    p.add_argument("--dry-run", action="store_true", default=argparse.SUPPRESS,
                   help="print the commands; run nothing")
    p.add_argument("--hostfile", required=True,
                   help="one [user@]host per line; line i runs process i (0 = coordinator)")
    p.add_argument("--ssh", default=DEFAULT_SSH,
                   help="ssh command and options (default: %(default)r)")
    p.add_argument("--log-dir", default=DEFAULT_LOG_DIR,
                   help="log and pid directory on the hosts (default: %(default)s)")
    p.add_argument("--venv", default=DEFAULT_VENV,
                   help="virtualenv with vlax on the hosts (default: %(default)s)")
    p.set_defaults(fn=fn)
    return p

  p = add("launch", "start vlax train on every host", cmd_launch)
  p.add_argument("--config", required=True, help="config path relative to --remote-dir")
  p.add_argument("--workdir", required=True,
                 help="output directory shared by all hosts (NFS path or gs://)")
  p.add_argument("--coordinator", default=None,
                 help="address of the first host as the others reach it (default: its "
                      "hostfile name)")
  p.add_argument("--port", type=int, default=DEFAULT_PORT,
                 help="coordinator port, open between hosts (default: %(default)s)")
  p.add_argument("--remote-dir", default=DEFAULT_REMOTE_DIR,
                 help="source tree on the hosts; the run starts there (default: %(default)s)")
  p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                 help="environment variable for the training process (repeatable)")

  p = add("stop", "stop vlax train on every host", cmd_stop)
  p.add_argument("--wait", type=int, default=120,
                 help="seconds to let SIGTERM checkpoint before SIGKILL (default: %(default)s)")

  p = add("logs", "tail one host's log", cmd_logs)
  p.add_argument("--host", type=int, default=0, help="hostfile line index (default: 0)")
  p.add_argument("--lines", type=int, default=100)
  p.add_argument("--follow", "-f", action="store_true")

  add("status", "is training running on each host", cmd_status)
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  """Entry point; returns the exit status (2 for bad input)."""
  argv = list(sys.argv[1:] if argv is None else argv)
  extra: list[str] = []
  if "--" in argv:
    i = argv.index("--")
    argv, extra = argv[:i], argv[i + 1:]
  args = build_parser().parse_args(argv)
  try:
    if not shlex.split(args.ssh):
      raise UsageError("--ssh: empty ssh command")
    if extra and args.command != "launch":
      raise UsageError(f"{args.command}: arguments after '--' are only accepted by launch")
    commands = args.fn(args, extra)
    return run_commands(commands, args.dry_run, required=(shlex.split(args.ssh)[0],))
  except UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
