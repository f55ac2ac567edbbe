"""The training mesh (from `config.mesh`) and how a batch is laid out on it.

The mesh itself is built by `vlax.models.sharding.make_mesh` (the one builder).

Params are sharded by the model's logical rules (vlax.models.sharding); the batch is
split along its leading dimension over `('data', 'fsdp')` and replicated over `tensor`.
Each host feeds only its own slice of the global batch; `global_batch` stitches the
per-host numpy arrays into one global `jax.Array` without any cross-host copy.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vlax.errors import VlaxError
from vlax.models import sharding as sharding_lib

AXES = sharding_lib.MESH_AXES
BATCH_AXES = ("data", "fsdp")


def mesh_from_config(mesh_config: Mapping[str, Any],
                     devices: Sequence[jax.Device] | None = None) -> Mesh:
  """`mesh_config` has keys data, fsdp, tensor (-1 = the rest); missing keys take
  `make_mesh`'s defaults (the training config's)."""
  sizes = {k: mesh_config[k] for k in AXES if mesh_config.get(k) is not None}
  return sharding_lib.make_mesh(**sizes, devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dim over (data, fsdp); everything else replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_parallelism(mesh: Mesh) -> int:
  return mesh.shape["data"] * mesh.shape["fsdp"]


def check_batch_size(global_batch_size: int, mesh: Mesh, grad_accum_steps: int = 1) -> None:
  """The global batch must split evenly over hosts, batch shards and microbatches."""
  n = batch_parallelism(mesh)
  if global_batch_size % (n * grad_accum_steps):
    raise VlaxError(
        f"batch_size={global_batch_size} must be a multiple of mesh.data*mesh.fsdp "
        f"({n}) times optimizer.grad_accum_steps ({grad_accum_steps})")
  if global_batch_size % jax.process_count():
    raise VlaxError(f"batch_size={global_batch_size} must be a multiple of the number of "
                    f"processes ({jax.process_count()})")


def global_batch(local_batch: Any, mesh: Mesh) -> Any:
  """Per-host numpy batch (a `Batch`, or any pytree of arrays) -> the same structure of
  global jax.Arrays sharded over (data, fsdp).

  Every host passes its own `B / process_count` examples; the global leading dim is
  `B`. Single-process this is a plain sharded device_put.
  """
  sharding = batch_sharding(mesh)
  nproc = jax.process_count()

  def put(v):
    v = np.asarray(v)
    global_shape = (v.shape[0] * nproc,) + v.shape[1:]
    return jax.make_array_from_process_local_data(sharding, v, global_shape)

  return jax.tree.map(put, local_batch)
