"""Multi-host start-up: one call before any other JAX use.

Three situations, one function:
- single process (the CPU debug run): nothing to do;
- TPU VMs / pods: `jax.distributed.initialize()` discovers the coordinator and the
  process ids from the TPU metadata, so no flags are needed;
- CPU/GPU clusters (and the 2-process CPU test): the coordinator address, the number of
  processes and this process's id must be given explicitly.

A process that dies: JAX's coordination service notices its missing heartbeats after
`heartbeat_timeout_s` (config `distributed.heartbeat_timeout_s`, passed to
jax.distributed.initialize) and then aborts every other process with pages of gloo /
coordination-service errors and no word on what to do (its callback for this cannot be
given from Python: jaxlib cannot pass it the status). So vlax runs its own check first
(`_Watchdog`, at half that timeout): while training (`watch`), the survivors print one
line naming the lost process and the checkpoint a restart resumes from, then exit with
PEER_LOST_EXIT. A collective that fails before (gloo notices a closed socket at once)
waits for that verdict (`wait_for_peer_verdict`) rather than reporting the socket error.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys
import threading
import time

import jax
from jax._src import distributed as jax_distributed  # the client (no public accessor)

from vlax.errors import VlaxError

_INITIALIZED = False
PEER_LOST_EXIT = 75  # EX_TEMPFAIL: restart every process to resume
_HEARTBEAT_S: int | None = None
_CHECKPOINT_ROOT: str | None = None
_VERDICT = threading.Event()
_VERDICT_GRACE_S = 30.0  # the watchdog, having given its verdict, is exiting the process


def _on_tpu_vm() -> bool:
  """TPU VM detection without touching the JAX backend (init must come first).

  VLAX_DISTRIBUTED=auto / off forces the answer.
  """
  forced = os.environ.get("VLAX_DISTRIBUTED", "").lower()
  if forced in ("auto", "on", "1", "true"):
    return True
  if forced in ("off", "0", "false", "none"):
    return False
  if any(k in os.environ for k in ("TPU_WORKER_HOSTNAMES", "TPU_ACCELERATOR_TYPE",
                                   "CLOUD_TPU_TASK_ID", "TPU_WORKER_ID", "TPU_NAME")):
    return True
  return os.path.exists("/dev/accel0")  # TPU v4+ VMs expose their chips here


def set_cpu_device_count(n: int) -> None:
  """Asks XLA for `n` virtual CPU devices; must run before JAX initializes its backend.

  Used by tests and CPU debug runs that want a real mesh on one machine.
  """
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  flags.append(f"--xla_force_host_platform_device_count={int(n)}")
  os.environ["XLA_FLAGS"] = " ".join(flags)
  os.environ["JAX_NUM_CPU_DEVICES"] = str(int(n))


def initialize(coordinator_address: str | None = None,
               num_processes: int | None = None,
               process_id: int | None = None,
               *, auto: bool | None = None,
               heartbeat_timeout_s: int | None = None) -> None:
  """Starts `jax.distributed` when there is more than one process.

  Args:
    coordinator_address: "HOST:PORT" of process 0 (CPU/GPU clusters).
    num_processes: total number of processes.
    process_id: this process's index in [0, num_processes).
    auto: force (True) or forbid (False) TPU auto-discovery; None = auto on TPU VMs.
    heartbeat_timeout_s: seconds without heartbeats after which a process counts as dead
      (config `distributed.heartbeat_timeout_s`; None: JAX's default, 100).
  Idempotent; a no-op for a single process without TPU discovery.
  """
  global _INITIALIZED
  explicit = [coordinator_address, num_processes, process_id]
  if any(v is not None for v in explicit):  # bad flags fail even after an earlier start
    if coordinator_address is None or num_processes is None or process_id is None:
      raise VlaxError(
          "multi-host flags: give all of --coordinator_address, --num_processes and "
          f"--process_id (got coordinator_address={coordinator_address!r}, "
          f"num_processes={num_processes!r}, process_id={process_id!r})")
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise VlaxError(f"multi-host flags: process_id={process_id} is not in "
                      f"[0, num_processes={num_processes})")
  if _INITIALIZED:
    return
  if any(v is not None for v in explicit):
    if num_processes == 1:
      _INITIALIZED = True
      return
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id,
                               **_heartbeat(heartbeat_timeout_s))
    _start_watchdog()
    _INITIALIZED = True
    return
  if auto is None:
    auto = _on_tpu_vm()
  if auto:
    jax.distributed.initialize(**_heartbeat(heartbeat_timeout_s))
    _start_watchdog()
  _INITIALIZED = True


def _heartbeat(seconds: int | None) -> dict:
  global _HEARTBEAT_S
  _HEARTBEAT_S = 100 if seconds is None else int(seconds)  # jax's default: 100
  return {} if seconds is None else {"heartbeat_timeout_seconds": int(seconds)}


def resume_from(checkpoint_root: str | None) -> None:
  """The checkpoint directory the peer-lost line names (set by the trainer)."""
  global _CHECKPOINT_ROOT
  _CHECKPOINT_ROOT = checkpoint_root


def _resume_point() -> str:
  """The newest complete step under the checkpoint root: what a restart resumes from."""
  root = _CHECKPOINT_ROOT
  if not root:
    return "no checkpoint known (the run had not started training)"
  try:
    steps = sorted((int(d) for d in os.listdir(root) if d.isdigit()), reverse=True)
  except OSError:
    steps = []
  for s in steps:
    if all(os.path.isdir(os.path.join(root, str(s), d)) for d in ("params", "train_state")):
      return f"{root}/{s}"
  return f"no checkpoint yet in {root} (a restart starts from step 0)"


def peer_lost_line(processes: list[int], why: str) -> str:
  """The one line a survivor prints."""
  who = ", ".join(str(p) for p in processes)
  return (f"vlax: lost process {who} of {jax.process_count()} ({why}; "
          f"distributed.heartbeat_timeout_s={_HEARTBEAT_S}); process "
          f"{jax.process_index()} stops. Restart all processes to resume from "
          f"{_resume_point()}")


class _Watchdog(threading.Thread):
  """vlax's own liveness check over the coordination service's key-value store.

  Every `interval` each process bumps its counter `vlax/alive/<pid>` and reads the
  others'. While the trainer watches (`watch`), a peer whose counter has not moved for
  half the heartbeat timeout, or a coordination service (process 0) unreachable that
  long, is lost: `_lost` prints the line and exits, before JAX's own heartbeat check
  (at the full timeout) would abort the process with pages of errors. A process that
  stops watching writes 'done' (a clean end, never a loss)."""

  MIN_STALE_POLLS = 3

  def __init__(self, client, pid: int, nproc: int, timeout_s: float):
    super().__init__(name="vlax-peer-watchdog", daemon=True)
    self.client, self.pid, self.nproc = client, pid, nproc
    self.limit = max(timeout_s / 2, 1.0)
    self.interval = min(max(timeout_s / 10, 0.1), 5.0)
    self.stop = threading.Event()
    self.watching = self.done = False
    self.seen: dict[int, tuple[str | None, float, int]] = {}

  def arm(self, on: bool) -> None:
    now = time.monotonic()
    self.seen = {q: (None, now, 0) for q in range(self.nproc) if q != self.pid}
    self.watching, self.done = on, not on
    if not on:
      self._set("done")

  def peer_values(self) -> dict[int, str | None]:
    """Each peer's counter as the coordination service holds it now."""
    values = {}
    for q in self.seen:
      try:
        values[q] = self.client.key_value_try_get(f"vlax/alive/{q}")
      except Exception:  # pylint: disable=broad-except  (not written yet)
        values[q] = None
    return values

  def peers_moved_from(self, values: dict[int, str | None]) -> bool:
    """Every peer wrote since `values` were read (or ended cleanly): alive. A dead peer's
    last write lands before its death, so its counter never moves again."""
    now = self.peer_values()
    return all(v == "done" or v != values.get(q) for q, v in now.items())

  def _set(self, value: str) -> None:
    try:
      self.client.key_value_set(f"vlax/alive/{self.pid}", value, allow_overwrite=True)
    except Exception:  # pylint: disable=broad-except
      pass

  def run(self) -> None:
    count, failing_since = 0, None
    while not self.stop.wait(self.interval):
      now = time.monotonic()
      count += 1
      try:
        if not self.done:
          self.client.key_value_set(f"vlax/alive/{self.pid}", str(count),
                                    allow_overwrite=True)
        failing_since = None
      except Exception:  # pylint: disable=broad-except  (the service is gone)
        failing_since = failing_since or now
        if self.watching and now - failing_since > self.limit:
          _lost([0], "the coordination service (process 0) is unreachable")
        continue
      if not self.watching:
        continue
      stale = []
      for q, (value, since, polls) in list(self.seen.items()):
        try:
          v = self.client.key_value_try_get(f"vlax/alive/{q}")
        except Exception:  # pylint: disable=broad-except  (not written yet)
          v = None
        if v == "done":
          continue
        if v != value:
          self.seen[q] = (v, now, 0)
          continue
        self.seen[q] = (value, since, polls + 1)
        # Stale for `limit` seconds *and* over several of our own polls: a stall of this
        # process (a loaded host) must not read as a peer's death.
        if now - since > self.limit and polls + 1 >= self.MIN_STALE_POLLS:
          stale.append(q)
      if stale:
        _lost(stale, f"no sign of life for {self.limit:.0f} s")


_WATCHDOG: _Watchdog | None = None
_COORDINATOR: str | None = None
_ABORT_HANDLER = None  # the ctypes callback, kept alive


def _coordinator_reachable() -> bool:
  host, _, port = (_COORDINATOR or "").rpartition(":")
  try:
    with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
      return True
  except (OSError, ValueError):
    return False


def _on_abort(signum: int) -> None:  # pylint: disable=unused-argument
  """SIGABRT while training: JAX's coordination client aborts the moment the
  coordination service (process 0) goes away, before any Python runs; this C-level
  handler still says what happened in the one line."""
  if _WATCHDOG is None or not _WATCHDOG.watching:
    return  # default: abort as usual
  if jax.process_index() != 0 and not _coordinator_reachable():
    _lost([0], "the coordination service it ran is gone")
  os.write(2, ("vlax: the JAX coordination service stopped this process (a peer process "
               "failed; details above). Restart all processes to resume from "
               f"{_resume_point()}\n").encode())
  os._exit(PEER_LOST_EXIT)  # pylint: disable=protected-access


def _install_abort_handler() -> None:
  global _ABORT_HANDLER
  try:
    libc = ctypes.CDLL(None)
    kind = ctypes.CFUNCTYPE(None, ctypes.c_int)
    handler = kind(_on_abort)
    libc.signal.argtypes = [ctypes.c_int, kind]
    libc.signal.restype = ctypes.c_void_p
    libc.signal(signal.SIGABRT, handler)
    _ABORT_HANDLER = handler
  except (OSError, AttributeError):
    pass  # no libc signal(): JAX's abort stays as it is


def _start_watchdog() -> None:
  global _WATCHDOG
  client = getattr(getattr(jax_distributed, "global_state", None), "client", None)
  if client is None or _WATCHDOG is not None:
    return
  global _COORDINATOR
  _COORDINATOR = jax_distributed.global_state.coordinator_address
  _install_abort_handler()
  _WATCHDOG = _Watchdog(client, jax_distributed.global_state.process_id,
                        jax_distributed.global_state.num_processes, float(_HEARTBEAT_S))
  _WATCHDOG.start()


def watch(checkpoint_root: str | None) -> None:
  """From here on (training), a lost process ends this one with the peer-lost line
  naming the checkpoint under `checkpoint_root` a restart resumes from."""
  resume_from(checkpoint_root)
  if _WATCHDOG is not None:
    _WATCHDOG.arm(True)


def unwatch() -> None:
  """Training ended here (normally or not): peers see a clean end, not a loss."""
  if _WATCHDOG is not None:
    _WATCHDOG.arm(False)


def _lost(processes: list[int], why: str) -> None:
  """The one line on stderr (JAX's and gloo's own log lines stay above it as details),
  then exit with PEER_LOST_EXIT."""
  _VERDICT.set()
  try:
    line = peer_lost_line(processes, why)
  except Exception as e:  # pylint: disable=broad-except
    line = f"vlax: lost process(es) {processes} ({why}; {type(e).__name__}); stopping"
  try:
    sys.stderr.flush()
    sys.stdout.flush()
  finally:
    os.write(2, (line + "\n").encode())
    os._exit(PEER_LOST_EXIT)  # pylint: disable=protected-access


def wait_for_peer_verdict(error: BaseException) -> None:
  """After an error in a multi-process run: waits for the watchdog's verdict, which ends
  this process in `_lost` when a peer is gone, and returns as soon as every peer has
  shown a sign of life since the error (the error is then this run's own). Any error
  type: a peer's death surfaces as a gloo/XLA runtime error, but also as a failed
  checkpoint save or barrier, whichever the main thread was in. Bounded by the heartbeat
  timeout and a margin; returns at once without a watchdog or for Ctrl-C."""
  if _WATCHDOG is None or not _WATCHDOG.watching:
    return
  if isinstance(error, (KeyboardInterrupt, SystemExit)):
    return
  before = _WATCHDOG.peer_values()
  deadline = time.monotonic() + _HEARTBEAT_S + 10
  while time.monotonic() < deadline and not _VERDICT.is_set():
    time.sleep(max(_WATCHDOG.interval, 0.2))
    if not _VERDICT.is_set() and _WATCHDOG.peers_moved_from(before):
      return
  if _VERDICT.is_set():  # the callback is exiting the process
    time.sleep(_VERDICT_GRACE_S)


def is_multiprocess() -> bool:
  return jax.process_count() > 1
