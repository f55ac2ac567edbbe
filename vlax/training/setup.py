"""State setup: model config, shardings, optimizer and the jitted steps of a run.

Everything here is built from abstract shapes (`jax.eval_shape`): no array is made
until `init_params` / `create_state` are called, so a `ModelSetup` can be built on a
mesh of devices that are not attached (a TPU topology's, for `vlax plan`) and its
jitted step lowered and compiled there.

Shardings: params by the logical axis rules (`config.mesh.logical_rules`, default
`vlax.models.sharding.LOGICAL_RULES`); the optimizer state by its own structure (see
`state_shardings`); the batch over ('data', 'fsdp').
"""

from __future__ import annotations

import ast
import contextlib
from typing import Any, Mapping

import flax.linen as nn
import jax
import ml_collections
import optax
from jax.sharding import Mesh, NamedSharding

from vlax.checkpoints import format as ckpt_format
from vlax.errors import VlaxError
from vlax.models import lora as lora_lib
from vlax.models import sharding as sharding_lib
from vlax.models.batch import Batch
from vlax.models.config import VLAConfig
from vlax.models.presets import get_preset
from vlax.models.vla import VLA
from vlax.training import config as config_lib
from vlax.training import loss as loss_lib
from vlax.training import mesh as mesh_lib
from vlax.training import optimizer as optimizer_lib
from vlax.training import state as state_lib
from vlax.training import train_step as step_lib


# ---------------------------------------------------------------------------------------
# Model config.


def build_model_config(config: Any, data_metadata: Mapping[str, Any] | None = None
                       ) -> VLAConfig:
  """VLAConfig from config.model (preset + dtype/remat + overrides) and the data's vocab."""
  c = config_lib.with_defaults(config)
  m = c.model
  if m.preset == "init_from":  # the architecture of the checkpoint fine-tuned from
    if not c.init_from:
      raise VlaxError("model.preset='init_from' needs config.init_from (without the "
                      "checkpoint, e.g. for `vlax plan`, name the architecture: "
                      "--config.model.preset=paligemma_3b for openpi's models)")
    d = dict(ckpt_format.read_metadata(c.init_from)["model"])
  else:
    d = get_preset(m.preset).to_dict()
  d["dtype"] = m.dtype
  d["remat"] = bool(m.remat)
  unroll = int(m.scan_unroll)
  if unroll < 0:
    raise VlaxError(f"model.scan_unroll must be >= 0 (0 = fully unrolled), got {unroll}")
  d["scan_unroll"] = True if unroll == 0 else unroll
  vocab = (data_metadata or {}).get("vocab_size")
  if vocab:
    d["llm"]["vocab_size"] = int(vocab)
  _apply_overrides(d, _parse_overrides(m.overrides or {}))
  return VLAConfig.from_dict(d)


def _apply_overrides(d: dict, overrides: Mapping[str, Any], where: str = "model.overrides"):
  for k, v in dict(overrides).items():
    if isinstance(v, (dict, ml_collections.ConfigDict)) and isinstance(d.get(k), dict):
      _apply_overrides(d[k], dict(v), f"{where}.{k}")
      continue
    node, parts = d, k.split(".")
    for p in parts[:-1]:
      if not isinstance(node.get(p), dict):
        raise VlaxError(f"{where}: unknown key {k!r}")
      node = node[p]
    if parts[-1] not in node:
      raise VlaxError(f"{where}: unknown key {k!r}")
    node[parts[-1]] = v


def _parse_overrides(o: Any) -> dict:
  """Nested dict ({'llm': {'vocab_size': 1024}}) or a string 'llm.vocab_size=1024,...'
  (the string form is handy on the command line)."""
  if isinstance(o, str):
    out = {}
    for item in (x.strip() for x in o.split(",") if x.strip()):
      if "=" not in item:
        raise VlaxError(f"model.overrides: expected KEY=VALUE, got {item!r}")
      k, v = item.split("=", 1)
      try:
        out[k.strip()] = ast.literal_eval(v.strip())
      except (ValueError, SyntaxError):
        out[k.strip()] = v.strip()
    return out
  if isinstance(o, ml_collections.ConfigDict):
    return o.to_dict()
  return dict(o)


# ---------------------------------------------------------------------------------------
# Shardings.


def logical_rules(config: Any) -> tuple[tuple[str, Any], ...]:
  """`config.mesh.logical_rules` checked: (logical name, mesh axis | axes | None) pairs."""
  rules = config_lib.with_defaults(config).mesh.logical_rules
  out = []
  for rule in rules:
    ok = isinstance(rule, (tuple, list)) and len(rule) == 2 and isinstance(rule[0], str)
    axes = rule[1] if ok else None
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    if not ok or any(a not in sharding_lib.MESH_AXES for a in names):
      raise VlaxError(f"mesh.logical_rules: {rule!r} is not a (logical name, mesh axis "
                      f"or axes or None) pair over {sharding_lib.MESH_AXES}")
    out.append((rule[0], axes if axes is None or isinstance(axes, str) else tuple(axes)))
  return tuple(out)


def _masked(x: Any) -> bool:
  return isinstance(x, optax.MaskedNode)


def opt_state_shardings(abstract_opt_state: Any, abstract_params: Any,
                        params_sharding: Any, replicated: NamedSharding) -> Any:
  """Shardings of the optimizer state from its own structure.

  optax keeps per-param statistics (Adam's mu and nu, momentum, ...) as trees with the
  params' structure (frozen or masked params appear as `optax.MaskedNode` there). Each
  such subtree's leaves take their param's sharding when they have its shape; the rest
  (step counts, Adafactor's factored row/column statistics) is replicated.
  """
  params_def = jax.tree.structure(abstract_params)

  def mirrors_params(x: Any) -> bool:
    return not _masked(x) and jax.tree.structure(x, is_leaf=_masked) == params_def

  def shard(sub: Any) -> Any:
    if _masked(sub):
      return sub
    if not mirrors_params(sub):
      return replicated
    return jax.tree.map(
        lambda x, p, s: x if _masked(x) else (s if x.shape == p.shape else replicated),
        sub, abstract_params, params_sharding, is_leaf=_masked)

  return jax.tree.map(shard, abstract_opt_state,
                      is_leaf=lambda x: _masked(x) or mirrors_params(x))


def state_shardings(mesh: Mesh, abstract_state: state_lib.TrainState,
                    params_sharding: Any) -> state_lib.TrainState:
  rep = mesh_lib.replicated(mesh)
  return state_lib.TrainState(
      step=rep, params=params_sharding,
      opt_state=opt_state_shardings(abstract_state.opt_state, abstract_state.params,
                                    params_sharding, rep),
      rng=rep, ema_params=None if abstract_state.ema_params is None else params_sharding)


# ---------------------------------------------------------------------------------------
# The setup.


class ModelSetup:
  """Model, mesh, shardings and the jitted functions built from them."""

  def __init__(self, config: Any, model_config: VLAConfig, mesh: Mesh,
               example_batch: Batch | Mapping[str, Any], num_datasets: int,
               action_tokenizer: Mapping[str, Any] | None = None):
    config = config_lib.with_defaults(config)
    self.config = config
    self.mesh = mesh
    self.model = VLA(model_config)
    self.rules = logical_rules(config)
    # The data's fields and per-example shapes (a dict from the data iterator is converted).
    self.example = (example_batch if isinstance(example_batch, Batch)
                    else Batch.from_dict(example_batch, "example batch"))
    dummy = self.example.inputs.dummy().args()
    self._dummy = dummy
    # The key is made inside eval_shape: no concrete array under the mesh context, so the
    # mesh may be an abstract TPU topology (`vlax plan`).
    with self.context():
      boxed = jax.eval_shape(lambda: self.model.init(jax.random.key(0), *dummy)["params"])
    # Outside the mesh context: unboxing there would apply eager sharding constraints.
    self.params_sharding = sharding_lib.param_shardings(mesh, boxed, self.rules)
    self.abstract_params = nn.unbox(boxed)
    self.base_abstract_params = self.abstract_params
    self.lora = lora_lib.config_from(config.lora)
    trainable = None
    if self.lora is not None:
      self.abstract_params = lora_lib.abstract_adapters(self.abstract_params, self.lora)
      self.params_sharding = lora_lib.fill_like(
          self.abstract_params, self.params_sharding, mesh_lib.replicated(mesh))
      keep = optimizer_lib.match_tree(self.abstract_params, config.lora.trainable_patterns,
                                      "lora.trainable_patterns")
      trainable = jax.tree.map(lambda a, k: bool(a or k),
                               lora_lib.adapter_mask(self.abstract_params), keep)
    self.tx, self.schedule, self.frozen = optimizer_lib.make_optimizer(
        config.optimizer, self.abstract_params, int(config.num_steps), trainable=trainable)
    scale = self.lora.scale if self.lora is not None else None
    self.ema_decay = float(config.ema_decay)
    self.abstract_state = jax.eval_shape(
        lambda p: state_lib.create(p, self.tx, jax.random.key(0), ema=self.ema_decay > 0),
        self.abstract_params)
    self.state_sharding = state_shardings(mesh, self.abstract_state, self.params_sharding)
    # config.loss.action_label_smoothing: the action bins' ids come from the data's
    # action tokenizer metadata (`action_tokenizer`).
    smoothing = float(config.loss.action_label_smoothing)
    action_range = (loss_lib.smoothing_action_range(action_tokenizer) if smoothing > 0
                    else None)
    step_fn = step_lib.make_train_step(
        self.model, self.tx, self.schedule, self.frozen, num_datasets=num_datasets,
        grad_accum_steps=int(config.optimizer.grad_accum_steps), mesh=mesh,
        lora_scale=scale, grad_shardings=self.params_sharding, ema_decay=self.ema_decay,
        label_smoothing=smoothing, action_range=action_range)
    self.train_step = step_lib.jit_train_step(step_fn, mesh, self.state_sharding,
                                              self.example)
    eval_fn = step_lib.make_eval_step(self.model, num_datasets=num_datasets,
                                      lora_scale=scale)
    self.eval_step = step_lib.jit_eval_step(eval_fn, mesh, self.params_sharding,
                                            self.example)

  def context(self) -> contextlib.AbstractContextManager:
    """Mesh + logical rules in scope while tracing (the model's activation constraints)."""
    return sharding_lib.mesh_context(self.mesh, self.rules)

  def init_params(self, seed: int):
    dummy = self._dummy
    init = jax.jit(lambda r: self.add_adapters(nn.unbox(self.model.init(r, *dummy)["params"]),
                                               seed),
                   out_shardings=self.params_sharding)
    with self.context():
      return init(jax.random.key(seed))

  def add_adapters(self, base_params, seed: int):
    """Base params -> params + fresh LoRA adapters (identity when LoRA is off)."""
    if self.lora is None:
      return base_params
    return lora_lib.init_adapters(base_params, self.lora,
                                  jax.random.fold_in(jax.random.key(seed), 0x10A))

  def create_state(self, params, seed: int, step: int = 0) -> state_lib.TrainState:
    """A fresh state around `params` (with an EMA equal to them when ema_decay > 0)."""
    fn = jax.jit(lambda p, r: state_lib.create(p, self.tx, r, step, self.ema_decay > 0),
                 in_shardings=(self.params_sharding, None), out_shardings=self.state_sharding)
    with self.context():
      return fn(params, jax.random.key_data(jax.random.key(seed + 1)))

  def step(self, state, batch):
    with self.context():
      return self.train_step(state, batch)

  def evaluate(self, params, batch):
    with self.context():
      return self.eval_step(params, batch)
