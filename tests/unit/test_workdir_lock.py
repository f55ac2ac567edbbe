"""WorkdirLock: one writer per workdir; a dead holder's lock never blocks a restart."""

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from vlax.training import workdir_lock as wl


def _lock(tmp_path, warnings, **kw):
  return wl.WorkdirLock(str(tmp_path), warn=warnings.append, **kw)


def _holder(tmp_path, **fields):
  content = {"host": socket.gethostname(), "boot_id": wl._boot_id(), "pid": os.getppid(),  # pylint: disable=protected-access
             "proc_start": wl._proc_start(os.getppid()), "started": "2026-12-04T10:00:00Z",  # pylint: disable=protected-access
             "renewed": time.time(), "token": "theirs", **fields}
  (tmp_path / wl.LOCK_NAME).write_text(json.dumps(content))
  return content


def test_acquire_renew_release(tmp_path):
  warnings = []
  lock = _lock(tmp_path, warnings, renew_s=0.05)
  lock.acquire()
  held = json.loads((tmp_path / wl.LOCK_NAME).read_text())
  assert held["host"] == socket.gethostname() and held["pid"] == os.getpid()
  time.sleep(0.4)
  assert json.loads((tmp_path / wl.LOCK_NAME).read_text())["renewals"] >= 2
  lock.release()
  assert not (tmp_path / wl.LOCK_NAME).exists() and not warnings


def test_a_live_holder_on_this_host_stops_the_second_run_at_once(tmp_path):
  _holder(tmp_path)  # our parent process: alive, its real start time
  t = time.monotonic()
  with pytest.raises(wl.WorkdirInUseError) as e:
    _lock(tmp_path, []).acquire()
  assert time.monotonic() - t < 2
  msg = str(e.value)
  assert (f"in use by another run: host {socket.gethostname()}, pid {os.getppid()}, "
          "since 2026-12-04T10:00:00Z") in msg and "\n" not in msg
  assert json.loads((tmp_path / wl.LOCK_NAME).read_text())["token"] == "theirs"


@pytest.mark.parametrize("case", ["dead pid", "reused pid", "our pid", "garbage"])
def test_a_dead_holder_on_this_host_is_taken_over_at_once(tmp_path, case):
  if case == "dead pid":
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    _holder(tmp_path, pid=p.pid, proc_start="1")
  elif case == "reused pid":  # the pid runs, but it is not the process that took the lock
    _holder(tmp_path, proc_start="1")
  elif case == "our pid":  # a restarted container can get the holder's pid
    _holder(tmp_path, pid=os.getpid(), proc_start=wl._proc_start(os.getpid()))  # pylint: disable=protected-access
  else:
    (tmp_path / wl.LOCK_NAME).write_text("{torn")
  warnings = []
  lock = _lock(tmp_path, warnings)
  lock.acquire()
  try:
    assert json.loads((tmp_path / wl.LOCK_NAME).read_text())["pid"] == os.getpid()
    assert case == "garbage" or "took over the lock of a run that is gone" in warnings[-1]
  finally:
    lock.release()


def test_another_hosts_lease(tmp_path):
  """Expired: taken at once. Fresh but never renewed: taken after stale_s. Renewed
  while we watch: that run is alive, the second one stops."""
  _holder(tmp_path, host="other-host", renewed=time.time() - 100)
  lock = _lock(tmp_path, [], renew_s=0.1, stale_s=1.0)
  lock.acquire()
  lock.release()

  _holder(tmp_path, host="other-host")
  t = time.monotonic()
  lock = _lock(tmp_path, [], renew_s=0.1, stale_s=1.0)
  lock.acquire()
  assert time.monotonic() - t >= 1.0
  lock.release()

  holder = _holder(tmp_path, host="other-host")
  stop = threading.Event()

  def renew():
    while not stop.wait(0.1):
      holder["renewed"] = time.time()
      (tmp_path / wl.LOCK_NAME).write_text(json.dumps(holder))

  thread = threading.Thread(target=renew)
  thread.start()
  try:
    with pytest.raises(wl.WorkdirInUseError, match="host other-host"):
      _lock(tmp_path, [], renew_s=0.1, stale_s=5.0).acquire()
  finally:
    stop.set()
    thread.join()


def test_only_process_0_touches_the_lock(tmp_path):
  _lock(tmp_path, []).acquire(process_index=1, process_count=1)
  assert not (tmp_path / wl.LOCK_NAME).exists()


def test_a_run_whose_lock_was_taken_says_so(tmp_path):
  warnings = []
  lock = _lock(tmp_path, warnings, renew_s=30)
  lock.acquire()
  _holder(tmp_path, token="another run")
  lock.renew()
  assert lock.lost and "taken over by another run" in warnings[-1]
  lock.release()
  assert json.loads((tmp_path / wl.LOCK_NAME).read_text())["token"] == "another run"
