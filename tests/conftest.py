"""Test setup: 8 virtual CPU devices for sharding tests, XLA's CPU backend at -O0 (fast
compiles), quiet TensorFlow, per-session XLA compilation and statistics caches, and
`tests/` on sys.path for the shared helpers (`_train_utils`, `_model_utils`, `_seq_utils`,
`_policy_utils`) of unit/ and e2e/."""

import atexit
import os
import shutil
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# Tests marked `manual` train for many minutes to measure a recipe's quality (README
# "Tests"); CI's 2 cores cannot fit them in its budget, so they run only when asked.
RUN_MANUAL = os.environ.get("VLAX_MANUAL_TESTS") == "1"

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  _flags += " --xla_force_host_platform_device_count=8"
# The suite is compile-bound (tiny models, many programs): LLVM at -O0 compiles ~3x faster
# (the tiny preset's init: 9.1 s -> 3.0 s), and the whole suite took 18 minutes instead of
# 27 on 2 cores (2026-12-08). Programs then differ from -O2 ones by float rounding only.
# `manual` tests (VLAX_MANUAL_TESTS=1) train for minutes and quote numbers measured at the
# default level: they keep it.
if "xla_backend_optimization_level" not in _flags and not RUN_MANUAL:
  _flags += " --xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = _flags.strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def _session_dir(var: str, prefix: str) -> bool:
  """Sets $var to a fresh directory removed at exit, unless it is set; xdist workers and
  the processes tests start inherit it. True when it was made here."""
  if var in os.environ:
    return False
  path = tempfile.mkdtemp(prefix=prefix)
  atexit.register(shutil.rmtree, path, ignore_errors=True)
  os.environ[var] = path
  return True


# Many tests (and the `vlax train` processes they start) compile the same tiny models;
# XLA's persistent cache compiles each once per session, and no run sees another's.
if _session_dir("JAX_COMPILATION_CACHE_DIR", "vlax-tests-xla-cache-"):
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# Normalization statistics are cached under $VLAX_CACHE_DIR (default ~/.cache/vlax): the
# session gets its own, so a run neither reads nor leaves another run's statistics.
_session_dir("VLAX_CACHE_DIR", "vlax-tests-cache-")

# The longest test files, started first: with two xdist workers (README's test command) the
# other worker meanwhile runs everything else, so both finish at about the same time.
RUN_FIRST = ("tests/e2e/test_metaworld.py", "tests/e2e/test_old_checkpoints.py")


def pytest_collection_modifyitems(config, items):  # pylint: disable=unused-argument
  if not RUN_MANUAL:
    skip = pytest.mark.skip(reason="manual quality run: set VLAX_MANUAL_TESTS=1 to run it")
    for item in items:
      if "manual" in item.keywords:
        item.add_marker(skip)
  first = [i for i in items if i.nodeid.split("::")[0] in RUN_FIRST]
  items[:] = first + [i for i in items if i not in first]
