"""One writer per workdir: WORKDIR/vlax.lock names the run that trains there.

Two runs on one workdir overwrite each other's checkpoints and metrics (the second one
once set the first's newest step aside as unreadable), so `train()` takes this lock
before it writes anything and stops at once, in one line naming the holder (host, process
id, since when), when another live run holds it.

- Who holds it: process 0 of a run (every process of a multi-host run counts as that one
  writer; the others never touch the file, and process 0 tells them the outcome with one
  broadcast, so a second multi-host run stops on every host).
- Liveness: the holder's thread renews the lease (`renewed`, a counter) every `renew_s`.
  A lock left by a killed run (kill -9, a preempted VM) must not block its restart:
  * same host (and same boot): the holder is alive iff its pid runs and started at the
    recorded time (a reused pid is not the holder); decided at once;
  * another host: alive iff the lease is renewed while we watch; a lease older than
    `stale_s` on our clock is stale at once, a younger one is watched for up to
    `stale_s` (a live holder renews within `renew_s`: the second run stops then).
- Take-over is serialized by an flock on WORKDIR/.vlax.lock.guard where the file system
  has one; the lock file itself is always replaced atomically (write, then rename).
- The lock is released (the file removed) when the run ends, however it ends short of
  SIGKILL; a run that finds its lock taken by another (it was thought dead) says so.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import threading
import time
import uuid
from typing import Any, Callable

import numpy as np
from jax.experimental import multihost_utils

from vlax.errors import VlaxError

LOCK_NAME = "vlax.lock"
RENEW_S = 5.0
STALE_S = 30.0


class WorkdirInUseError(VlaxError):
  """Another live run holds the workdir's lock."""


def _boot_id() -> str:
  try:
    with open("/proc/sys/kernel/random/boot_id") as f:
      return f.read().strip()
  except OSError:
    return ""


def _proc_start(pid: int) -> str | None:
  """The start time of process `pid` (clock ticks since boot), None if it does not run.
  Without /proc: '' while the pid exists (liveness without the pid-reuse check)."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[19]
  except (OSError, IndexError):
    pass
  if os.path.isdir("/proc/self"):
    return None
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return None
  except PermissionError:
    pass
  return ""


def _read(path: str) -> dict[str, Any] | None:
  """The lock's content; None when there is no lock; {} when it does not parse."""
  try:
    with open(path, "rb") as f:
      d = json.loads(f.read().decode("utf-8"))
  except FileNotFoundError:
    return None
  except (OSError, ValueError):
    return {}
  return d if isinstance(d, dict) else {}


def _write(path: str, content: dict[str, Any]) -> None:
  tmp = f"{path}.{os.getpid()}.tmp"
  with open(tmp, "w") as f:
    json.dump(content, f)
  os.replace(tmp, path)


@contextlib.contextmanager
def _guard(path: str):
  """An exclusive flock around check-and-take (released by the kernel if we die);
  nothing where the file system has no flock."""
  try:
    f = open(path, "a")
  except OSError:
    yield
    return
  try:
    try:
      fcntl.flock(f, fcntl.LOCK_EX)
    except OSError:
      pass
    yield
  finally:
    f.close()


def describe(holder: dict[str, Any], now: float | None = None) -> str:
  """'host H, pid P, since 2026-12-04T17:03:12Z (lease renewed 2 s ago)'."""
  age = (now or time.time()) - float(holder.get("renewed", 0) or 0)
  return (f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, since "
          f"{holder.get('started', '?')} (lease renewed {max(age, 0):.0f} s ago)")


class WorkdirLock:
  """The lock of one run on `workdir` (create it cheaply, `acquire()` on every process
  after the config checks, `release()` when the run ends)."""

  def __init__(self, workdir: str, *, renew_s: float = RENEW_S, stale_s: float = STALE_S,
               warn: Callable[[str], None] | None = None):
    self.workdir = workdir
    self.path = os.path.join(workdir, LOCK_NAME)
    self.renew_s, self.stale_s = float(renew_s), float(stale_s)
    self._warn = warn or (lambda m: print(m, file=sys.stderr, flush=True))
    self._token = uuid.uuid4().hex
    self._content: dict[str, Any] | None = None
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None
    self.lost: str | None = None  # set when another run took the lock from us

  # --- taking it -------------------------------------------------------------------

  def acquire(self, process_index: int = 0, process_count: int = 1,
              prepare: Callable[[], None] | None = None) -> None:
    """Process 0: `prepare()` (creates the workdir), then the lock. Every process raises
    WorkdirInUseError (process 0's names the holder) when another live run holds it."""
    error = None
    if process_index == 0:
      try:
        if prepare is not None:
          prepare()
        self._take()
      except OSError as e:
        error = VlaxError(f"workdir {self.workdir} is not writable: {e.strerror or e}")
      except VlaxError as e:
        error = e
    if process_count > 1:
      refused = int(multihost_utils.broadcast_one_to_all(np.int32(error is not None)))
      if refused and error is None:
        raise WorkdirInUseError(f"workdir {self.workdir}: process 0 could not take the "
                                "run's lock (its error names why)")
    if error is not None:
      raise error

  def _take(self) -> None:
    with _guard(os.path.join(self.workdir, f".{LOCK_NAME}.guard")):
      holder = _read(self.path)
      if holder and self._alive(holder):
        raise WorkdirInUseError(
            f"workdir {self.workdir} is in use by another run: {describe(holder)}; stop "
            f"that run or use another --workdir (the lock of a killed run, {self.path}, is "
            "taken over by the next run at once)")
      now = time.time()
      self._content = {
          "host": socket.gethostname(), "pid": os.getpid(), "boot_id": _boot_id(),
          "proc_start": _proc_start(os.getpid()),
          "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
          "renewed": now, "renewals": 0, "renew_s": self.renew_s, "token": self._token}
      _write(self.path, self._content)
    if holder:
      self._warn(f"warning: took over the lock of a run that is gone ({describe(holder)})")
    self._thread = threading.Thread(target=self._renew_loop, name="vlax-workdir-lock",
                                    daemon=True)
    self._thread.start()

  def _alive(self, holder: dict[str, Any]) -> bool:
    """Whether the run that wrote `holder` still runs (see the module docstring)."""
    if (holder.get("host") == socket.gethostname() and holder.get("boot_id") == _boot_id()
        and isinstance(holder.get("pid"), int)):
      if holder["pid"] == os.getpid():
        return False  # a reused pid: the holder is gone (we hold nothing yet)
      start = _proc_start(holder["pid"])
      return start is not None and start in (holder.get("proc_start"), "")
    try:
      renewed = float(holder.get("renewed"))
    except (TypeError, ValueError):
      return False
    if time.time() - renewed > self.stale_s:
      return False
    self._warn(f"waiting up to {self.stale_s:.0f} s to see whether the run holding "
               f"{self.path} is alive ({describe(holder)})")
    deadline = time.monotonic() + self.stale_s
    while time.monotonic() < deadline:
      time.sleep(min(0.5, self.renew_s / 4))
      now = _read(self.path)
      if now is None:
        return False  # released meanwhile
      if now.get("token") != holder.get("token") or now.get("renewed") != renewed:
        holder.update(now)
        return True  # renewed (or taken by a third run): alive
    return False

  # --- keeping and releasing it ------------------------------------------------------

  def _renew_loop(self) -> None:
    while not self._stop.wait(self.renew_s):
      self.renew()

  def renew(self) -> None:
    """One lease renewal (the background thread calls it every `renew_s`)."""
    if self._content is None or self.lost:
      return
    current = _read(self.path)
    if current is not None and current.get("token") != self._token:
      self.lost = describe(current) if current else "unreadable lock"
      self._warn(f"warning: {self.path} was taken over by another run ({self.lost}) "
                 "while this one runs: two runs now write to this workdir")
      return
    self._content["renewed"] = time.time()
    self._content["renewals"] += 1
    try:
      _write(self.path, self._content)
    except OSError:
      pass  # a full disk: the next renewal tries again (the run reports the disk itself)

  def release(self) -> None:
    """Stops renewing and removes the lock if it is still ours."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=10)
      self._thread = None
    if self._content is None:
      return
    self._content = None
    current = _read(self.path)
    if current is not None and current.get("token") == self._token:
      with contextlib.suppress(OSError):
        os.remove(self.path)
