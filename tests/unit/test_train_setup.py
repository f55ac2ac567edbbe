"""Training set-up without running a step: config defaults, optimizer-state and param
shardings, logical rules from the config (abstract shapes only: fast)."""

import jax
import ml_collections
import pytest
from jax.sharding import PartitionSpec as P

from vlax.errors import VlaxError
from vlax.models import sharding as sharding_lib
from vlax.training import config as config_lib
from vlax.training import mesh as mesh_lib
from vlax.training import optimizer as optimizer_lib
from vlax.training import setup as setup_lib
from vlax.utils import path_str

import _train_utils as U


def _setup(config):
  mesh = mesh_lib.mesh_from_config(config.mesh)
  return setup_lib.ModelSetup(config, setup_lib.build_model_config(config, U.metadata()),
                              mesh, U.make_batch(config.batch_size), len(U.DATASET_NAMES))


def test_with_defaults_fills_every_key_once():
  full = config_lib.default_train_config().to_dict()
  assert config_lib.with_defaults({}).to_dict() == full
  c = config_lib.with_defaults(ml_collections.ConfigDict(
      {"num_steps": 7, "optimizer": {"lr": None, "momentum": 0.9}, "data": {"x": None}}))
  assert c.num_steps == 7 and c.batch_size == full["batch_size"]
  assert c.optimizer.lr == optimizer_lib.DEFAULTS["lr"]  # None = the default
  assert c.optimizer.momentum == 0.9 and c.data.x is None  # unknown keys are kept
  assert config_lib.with_defaults(c).to_dict() == c.to_dict()
  # The optimizer section is the optimizer's own defaults, not a copy that can drift.
  assert full["optimizer"] == optimizer_lib.DEFAULTS


def _suffix_oracle(setup):
  """The old rule: a leaf whose path ends with a param's path and has its shape gets its
  sharding. The structural rule must agree with it on these optimizers."""
  by_path = {path_str(p): (leaf.shape, s) for (p, leaf), s in zip(
      jax.tree_util.tree_flatten_with_path(setup.abstract_params)[0],
      jax.tree.leaves(setup.params_sharding))}

  def pick(path, leaf):
    keys = [str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey)]
    for i in range(len(keys)):
      hit = by_path.get("/".join(keys[i:]))
      if hit is not None and hit[0] == leaf.shape:
        return hit[1].spec
    return P()

  return jax.tree_util.tree_map_with_path(pick, setup.abstract_state.opt_state)


@pytest.mark.parametrize("overrides", [
    {},
    {"optimizer.freeze_patterns": "^img/"},
    {"optimizer.name": "adafactor"},
    {"lora.rank": 2},
])
def test_opt_state_shardings_follow_the_optimizer_structure(overrides):
  setup = _setup(U.tiny_config(**overrides))
  got = jax.tree.map(lambda s: s.spec, setup.state_sharding.opt_state)
  assert jax.tree.structure(got) == jax.tree.structure(_suffix_oracle(setup))
  assert got == _suffix_oracle(setup)
  specs = jax.tree.leaves(got, is_leaf=lambda x: isinstance(x, P))
  if "lora.rank" not in overrides:  # (LoRA adapters, the only trainable params, are
    assert any(s != P() for s in specs)  # replicated) FSDP over 8 devices shards them
  if not overrides:  # Adam's mu and nu are sharded exactly like the params
    params = jax.tree.map(lambda s: s.spec, setup.params_sharding)
    adam = setup.state_sharding.opt_state[1][0]
    assert jax.tree.map(lambda s: s.spec, adam.mu) == params
    assert jax.tree.map(lambda s: s.spec, adam.nu) == params


def test_logical_rules_come_from_the_config():
  default = _setup(U.tiny_config())
  assert default.rules == sharding_lib.LOGICAL_RULES
  emb = ("llm", "embedder", "input_embedding")

  def spec(setup):
    node = setup.params_sharding
    for k in emb:
      node = node[k]
    return node.spec

  assert "fsdp" in str(spec(default))
  rules = tuple((name, None) for name, _ in sharding_lib.LOGICAL_RULES)
  repl = _setup(U.tiny_config(**{"mesh.logical_rules": rules}))
  assert repl.rules == rules
  assert all(s.spec == P() or all(a is None for a in s.spec)
             for s in jax.tree.leaves(repl.params_sharding))
  with pytest.raises(VlaxError, match="mesh.logical_rules"):
    _setup(U.tiny_config(**{"mesh.logical_rules": (("embed", "nope"),)}))
