"""After an error in a multi-process run the trainer asks the peer watchdog whether a
peer is gone (`distributed.wait_for_peer_verdict`): a dead peer must get the one-line
verdict whatever error type surfaced first (a failed save, not only a gloo error); a
live peer must not hold up the run's own error. Driven with an in-memory stand-in for
the coordination service's key-value store: no processes, no JAX distributed."""

import threading
import time

import pytest

from vlax.training import distributed


class _Store:
  def __init__(self):
    self.kv, self.lock = {}, threading.Lock()

  def key_value_set(self, key, value, allow_overwrite=True):
    with self.lock:
      self.kv[key] = value

  def key_value_try_get(self, key):
    with self.lock:
      if key not in self.kv:
        raise KeyError(key)
      return self.kv[key]


@pytest.fixture
def watchdog(monkeypatch):
  store = _Store()
  dog = distributed._Watchdog(store, pid=0, nproc=2, timeout_s=2.0)  # limit 1 s, polls 0.2 s
  verdicts = []

  def lost(processes, why):
    verdicts.append((processes, why))
    distributed._VERDICT.set()
    dog.stop.set()

  monkeypatch.setattr(distributed, "_lost", lost)
  monkeypatch.setattr(distributed, "_WATCHDOG", dog)
  monkeypatch.setattr(distributed, "_HEARTBEAT_S", 2)
  monkeypatch.setattr(distributed, "_VERDICT_GRACE_S", 0.0)
  distributed._VERDICT.clear()
  dog.arm(True)
  dog.start()
  yield store, dog, verdicts
  dog.stop.set()
  dog.join()
  distributed._VERDICT.clear()


def _beat(store, stop, pid=1):
  n = 0
  while not stop.wait(0.1):
    n += 1
    store.key_value_set(f"vlax/alive/{pid}", str(n))


@pytest.mark.parametrize("error", [RuntimeError("checkpoint save failed"), OSError(5, "EIO")])
def test_a_dead_peer_gets_the_verdict_whatever_the_error(watchdog, error):
  store, _, verdicts = watchdog
  store.key_value_set("vlax/alive/1", "7")  # the peer's last beat before it died
  t0 = time.monotonic()
  distributed.wait_for_peer_verdict(error)
  assert verdicts and verdicts[0][0] == [1], verdicts
  assert time.monotonic() - t0 < 6


def test_a_live_peer_lets_the_own_error_through_at_once(watchdog):
  store, _, verdicts = watchdog
  stop = threading.Event()
  beat = threading.Thread(target=_beat, args=(store, stop), daemon=True)
  beat.start()
  try:
    t0 = time.monotonic()
    distributed.wait_for_peer_verdict(ValueError("this run's own error"))
    waited = time.monotonic() - t0
  finally:
    stop.set()
    beat.join()
  assert not verdicts
  assert waited < 1.0, waited  # well under the 1 s staleness limit and the 12 s bound


def test_ctrl_c_does_not_wait(watchdog):
  t0 = time.monotonic()
  distributed.wait_for_peer_verdict(KeyboardInterrupt())
  assert time.monotonic() - t0 < 0.1
