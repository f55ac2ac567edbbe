"""Logical axis names -> device mesh ('data', 'fsdp', 'tensor'), MaxText-style.

Params: FSDP over their embed (model width) dimension, tensor parallelism over heads,
mlp and vocab. Activations: batch over ('data', 'fsdp'), heads/mlp/vocab over 'tensor'.
Rules are tried in order and a mesh axis is used at most once per array, so e.g. the
projector kernel ('vit_embed', 'embed') shards only its first matching dimension.
A dimension whose size the mesh axes do not divide is replicated instead (e.g. one
KV head with tensor=2), see `param_shardings`.

Usage:
  mesh = make_mesh(data=-1, fsdp=2, tensor=1)
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


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ('data', 'fsdp', 'tensor') mesh with Auto axis types; one size may be -1 (= the rest)."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = {"data": data, "fsdp": fsdp, "tensor": tensor}
  free = [k for k, v in sizes.items() if v == -1]
  for k, v in sizes.items():
    if v != -1 and (not isinstance(v, int) or v < 1):
      raise VlaxError(f"mesh.{k} must be a positive integer or -1, got {v!r}")
  if len(free) > 1:
    raise VlaxError(f"only one mesh axis may be -1, got {free}")
  known = math.prod(v for v in sizes.values() if v != -1)
  if free:
    if len(devices) % known:
      raise VlaxError(f"mesh {sizes}: {len(devices)} devices are not divisible by {known}")
    sizes[free[0]] = len(devices) // known
  shape = tuple(sizes[k] for k in MESH_AXES)
  if math.prod(shape) != len(devices):
    raise VlaxError(f"mesh data={shape[0]} fsdp={shape[1]} tensor={shape[2]} needs "
                    f"{math.prod(shape)} devices, but there are {len(devices)}")
  return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3,
                       devices=devices)


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
