"""Logical axis names -> device mesh ('data', 'fsdp', 'tensor'), MaxText-style.

Params: FSDP over their embed (model width) dimension, tensor parallelism over heads,
mlp and vocab. Activations: batch over ('data', 'fsdp'), heads/mlp/vocab over 'tensor'.
Rules are tried in order and a mesh axis is used at most once per array, so e.g. the
projector kernel ('vit_embed', 'embed') shards only its first matching dimension.
A dimension whose size the mesh axes do not divide is replicated instead (e.g. one
KV head with tensor=2), see `param_shardings`.

Usage:
  mesh = make_mesh(data=-1, fsdp=2, tensor=1)  # the config's mesh: mesh_from_config
  abstract, shardings = abstract_params_and_shardings(model, mesh, example_inputs(cfg))
  params = jax.device_put(params, shardings)
  with mesh_context(mesh):
    logits = jax.jit(model.apply)({'params': params}, *batch)
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vlax.errors import VlaxError

MESH_AXES = ("data", "fsdp", "tensor")

LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    # Activations.
    ("batch", ("data", "fsdp")),
    ("act_length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_head_dim", None),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    # Params (decoder).
    ("layers", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    # Params (vision tower).
    ("vit_embed", "fsdp"),
    ("vit_heads", "tensor"),
    ("vit_head_dim", None),
    ("vit_mlp", "tensor"),
    ("vit_patches", None),
)


def logical_rules() -> tuple[tuple[str, Any], ...]:
  return LOGICAL_RULES


def resolve_mesh_shape(data: int, fsdp: int, tensor: int,
                       num_devices: int) -> tuple[int, int, int]:
  """Replaces a single -1 by what is left of `num_devices`; checks the product."""
  shape = [int(data), int(fsdp), int(tensor)]
  if shape.count(-1) > 1:
    raise VlaxError(f"mesh: at most one of mesh.data/fsdp/tensor may be -1, got {shape}")
  for name, v in zip(MESH_AXES, shape):
    if v == 0 or v < -1:
      raise VlaxError(f"mesh.{name}={v}: must be a positive size or -1")
  known = math.prod(v for v in shape if v != -1)
  if -1 in shape:
    if num_devices % known:
      raise VlaxError(f"mesh: {num_devices} devices do not divide by the fixed axes "
                      f"{dict(zip(MESH_AXES, shape))}")
    shape[shape.index(-1)] = num_devices // known
  if math.prod(shape) != num_devices:
    raise VlaxError(f"mesh: {dict(zip(MESH_AXES, shape))} needs {math.prod(shape)} "
                    f"devices, there are {num_devices}")
  return tuple(shape)


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """The one mesh builder: ('data', 'fsdp', 'tensor') over all devices of all processes
  (or `devices`, e.g. a TPU topology's abstract ones); one size may be -1 (= the rest).
  The defaults are the training config's (`mesh.fsdp=-1`: FSDP over everything).

  Auto axis types: flax linen's logical constraints need them (jax >= 0.9 defaults to
  Explicit).
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = resolve_mesh_shape(data, fsdp, tensor, len(devices))
  auto = (jax.sharding.AxisType.Auto,) * 3
  if devices == list(jax.devices()):
    return jax.make_mesh(shape, MESH_AXES, axis_types=auto)
  return jax.make_mesh(shape, MESH_AXES, axis_types=auto, devices=devices)


@contextlib.contextmanager
def mesh_context(mesh: Mesh, rules=LOGICAL_RULES):
  """Mesh + logical rules in scope, for jitted calls whose activations carry logical constraints."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def logical_to_sharding(mesh: Mesh, logical_spec_tree, rules=LOGICAL_RULES):
  """Tree of logical PartitionSpecs -> tree of NamedShardings (no divisibility check)."""
  return nn.logical_to_mesh_sharding(logical_spec_tree, mesh, rules)


def _fit(spec: PartitionSpec, shape, mesh: Mesh) -> PartitionSpec:
  """Drops mesh axes from dimensions they do not divide."""
  out = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    size = math.prod(mesh.shape[a] for a in names)
    out.append(axes if names and dim % size == 0 else None)
  return PartitionSpec(*out)


def param_shardings(mesh: Mesh, abstract_params_boxed, rules=LOGICAL_RULES):
  """Boxed (nn.Partitioned) abstract params -> NamedShardings of the unboxed tree."""
  specs = nn.get_partition_spec(abstract_params_boxed)
  mesh_specs = nn.logical_to_mesh(specs, rules)
  shapes = nn.unbox(abstract_params_boxed)
  return jax.tree.map(
      lambda spec, x: NamedSharding(mesh, _fit(spec, x.shape, mesh)), mesh_specs, shapes,
      is_leaf=lambda s: isinstance(s, PartitionSpec))


def abstract_params_and_shardings(model: nn.Module, mesh: Mesh, example_inputs,
                                  rules=LOGICAL_RULES):
  """(abstract params as ShapeDtypeStructs, NamedShardings) without allocating anything."""
  boxed = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *example_inputs))["params"]
  return nn.unbox(boxed), param_shardings(mesh, boxed, rules)


def init_sharded_params(model: nn.Module, mesh: Mesh, rng: jax.Array, example_inputs,
                        rules=LOGICAL_RULES):
  """Initializes params directly into their shardings (never materialized on one device)."""
  _, shardings = abstract_params_and_shardings(model, mesh, example_inputs, rules)
  init = jax.jit(lambda r: nn.unbox(model.init(r, *example_inputs)["params"]),
                 out_shardings=shardings)
  with mesh_context(mesh, rules):
    return init(rng)


def batch_sharding(mesh: Mesh, ndim: int, rules=LOGICAL_RULES) -> NamedSharding:
  """Sharding of a batch-leading input array: batch dim over the 'batch' rule, rest replicated."""
  spec = nn.logical_to_mesh_axes(("batch",) + (None,) * (ndim - 1), rules)
  return NamedSharding(mesh, spec)


def describe(shardings) -> dict[str, str]:
  """'/'-joined param path -> partition spec string (for logs and reports)."""
  flat = jax.tree_util.tree_flatten_with_path(shardings)[0]
  return {"/".join(str(getattr(k, "key", k)) for k in path): str(s.spec) for path, s in flat}


def num_shards(sharding: NamedSharding) -> int:
  return int(np.prod([sharding.mesh.shape[a] for axes in sharding.spec if axes
                      for a in ((axes,) if isinstance(axes, str) else axes)]))
