"""Test setup: 8 virtual CPU devices for sharding tests, quiet TensorFlow, one XLA
compilation cache for the session, and `tests/` on sys.path for the shared helpers
(`_train_utils`, `_model_utils`, `_seq_utils`) used by tests/unit and tests/e2e."""

import atexit
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

# Many tests (and the `vlax train` processes they start, which inherit the environment)
# compile the same tiny models; XLA's persistent cache compiles each once per session. It
# lives in a fresh directory removed at exit, so no run sees another run's executables.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache = tempfile.mkdtemp(prefix="vlax-tests-xla-cache-")
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

# Normalization statistics are cached under $VLAX_CACHE_DIR (default ~/.cache/vlax): give the
# session its own, so a run neither reads nor leaves another run's statistics.
if "VLAX_CACHE_DIR" not in os.environ:
  _stats = tempfile.mkdtemp(prefix="vlax-tests-cache-")
  atexit.register(shutil.rmtree, _stats, ignore_errors=True)
  os.environ["VLAX_CACHE_DIR"] = _stats


# The longest test files, started first: with two xdist workers (README's test command) the
# other worker meanwhile runs everything else, so both finish at about the same time.
RUN_FIRST = ("tests/e2e/test_finetune_e2e.py",)


def pytest_collection_modifyitems(config, items):  # pylint: disable=unused-argument
  first = [i for i in items if i.nodeid.split("::")[0] in RUN_FIRST]
  items[:] = first + [i for i in items if i not in first]
