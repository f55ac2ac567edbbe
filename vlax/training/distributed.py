"""Multi-host start-up: one call before any other JAX use.

Three situations, one function:
- single process (the CPU debug run): nothing to do;
- TPU VMs / pods: `jax.distributed.initialize()` discovers the coordinator and the
  process ids from the TPU metadata, so no flags are needed;
- CPU/GPU clusters (and the 2-process CPU test): the coordinator address, the number of
  processes and this process's id must be given explicitly.
"""

from __future__ import annotations

import os

import jax

from vlax.errors import VlaxError

_INITIALIZED = False


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
               *, auto: bool | None = None) -> None:
  """Starts `jax.distributed` when there is more than one process.

  Args:
    coordinator_address: "HOST:PORT" of process 0 (CPU/GPU clusters).
    num_processes: total number of processes.
    process_id: this process's index in [0, num_processes).
    auto: force (True) or forbid (False) TPU auto-discovery; None = auto on TPU VMs.
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
                               num_processes=num_processes, process_id=process_id)
    _INITIALIZED = True
    return
  if auto is None:
    auto = _on_tpu_vm()
  if auto:
    jax.distributed.initialize()
  _INITIALIZED = True


def is_multiprocess() -> bool:
  return jax.process_count() > 1
