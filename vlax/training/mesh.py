"""The device mesh `(data, fsdp, tensor)` and how a batch is laid out on it.

Params are sharded by the model's logical rules (vlax.models.sharding); the batch is
split along its leading dimension over `('data', 'fsdp')` and replicated over `tensor`.
Each host feeds only its own slice of the global batch; `global_batch` stitches the
per-host numpy arrays into one global `jax.Array` without any cross-host copy.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vlax.errors import VlaxError

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


def resolve_mesh_shape(data: int, fsdp: int, tensor: int,
                       num_devices: int) -> tuple[int, int, int]:
  """Replaces a single -1 by what is left of `num_devices`; checks the product."""
  shape = [int(data), int(fsdp), int(tensor)]
  if shape.count(-1) > 1:
    raise VlaxError(f"mesh: at most one of mesh.data/fsdp/tensor may be -1, got {shape}")
  for name, v in zip(AXES, shape):
    if v == 0 or v < -1:
      raise VlaxError(f"mesh.{name}={v}: must be a positive size or -1")
  known = math.prod(v for v in shape if v != -1)
  if -1 in shape:
    if num_devices % known:
      raise VlaxError(f"mesh: {num_devices} devices do not divide by the fixed axes "
                      f"{dict(zip(AXES, shape))}")
    shape[shape.index(-1)] = num_devices // known
  if math.prod(shape) != num_devices:
    raise VlaxError(f"mesh: {dict(zip(AXES, shape))} needs {math.prod(shape)} devices, "
                    f"there are {num_devices}")
  return tuple(shape)


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh over all devices of all processes (or `devices`), axes (data, fsdp, tensor).

  Auto axis types: flax linen's logical constraints need them (jax >= 0.9 defaults to
  Explicit).
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = resolve_mesh_shape(data, fsdp, tensor, len(devices))
  auto = (jax.sharding.AxisType.Auto,) * 3
  if len(devices) == len(jax.devices()) and devices == list(jax.devices()):
    return jax.make_mesh(shape, AXES, axis_types=auto)
  return jax.make_mesh(shape, AXES, axis_types=auto, devices=devices)


def mesh_from_config(mesh_config: Mapping[str, Any],
                     devices: Sequence[jax.Device] | None = None) -> Mesh:
  """`mesh_config` has keys data, fsdp, tensor (-1 = the rest)."""
  return make_mesh(mesh_config.get("data", 1), mesh_config.get("fsdp", -1),
                   mesh_config.get("tensor", 1), devices=devices)


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
