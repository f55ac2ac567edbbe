"""LoRA adapters: identity at init, only adapters train, merge == unmerged, export merges."""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vlax.checkpoints import format as ckpt_format
from vlax.errors import VlaxError
from vlax.inference import export as export_lib
from vlax.inference.policy import Policy
from vlax.models import lora as lora_lib
from vlax.models.batch import Batch, ModelInputs
from vlax.models.presets import get_preset
from vlax.models.vla import VLA, init_params
from vlax.training import init_from
from vlax.training import optimizer as optimizer_lib
from vlax.training import state as state_lib
from vlax.training import train_step as step_lib

import _train_utils as tu
import test_policy as tp

LORA = lora_lib.LoraConfig(rank=2, alpha=4.0,
                           targets=(r"^llm/layers/attn/", r"^llm/layers/mlp/",
                                    r"^img/Transformer/encoderblock/"))


def _tiny(vocab=tu.VOCAB):
  import dataclasses
  c = get_preset("tiny")
  return dataclasses.replace(c, llm=dataclasses.replace(c.llm, vocab_size=vocab))


def _perturb_b(params, seed=1):
  """Non-zero B everywhere (a 'trained' adapter)."""
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map_with_path(
      lambda p, x: (rng.normal(0, 0.2, np.shape(x)).astype(np.float32)
                    if lora_lib.path_str(p).endswith("lora_b") else np.asarray(x)), params)


def _logits(model, params, batch):
  fn = jax.jit(lambda p, *x: model.apply({"params": p}, *x))
  return fn(params, *ModelInputs.from_dict(batch).args())


_BASE = {}


def _base_params(config):
  """Random tiny params (host numpy), initialized once per module."""
  if config not in _BASE:
    _BASE[config] = jax.tree.map(np.asarray, init_params(VLA(config), jax.random.key(0)))
  return _BASE[config]


def test_adapter_layout_follows_the_export_convention():
  config = _tiny()
  base = _base_params(config)
  p = lora_lib.init_adapters(base, LORA, jax.random.key(1))
  attn = p["llm"]["layers"]["attn"]["q_einsum"]
  L, H, E, D = attn["w"].shape
  assert attn["w_lora_a"].shape == (L, H, E, 2) and attn["w_lora_b"].shape == (L, H, 2, D)
  assert np.all(np.asarray(attn["w_lora_b"]) == 0) and np.std(attn["w_lora_a"]) > 0
  assert "gating_einsum_lora_a" in p["llm"]["layers"]["mlp"]
  q = p["img"]["Transformer"]["encoderblock"]["MultiHeadDotProductAttention_0"]["query"]
  L, W, H, D = q["kernel"].shape
  assert q["kernel_lora_a"].shape == (L, W, 2) and q["kernel_lora_b"].shape == (L, 2, H * D)
  assert "bias_lora_a" not in q  # 1-D params get no adapter
  assert "lora_a" not in str(jax.tree_util.tree_structure(p["llm"]["embedder"]))
  with pytest.raises(VlaxError, match="matches no weight"):
    lora_lib.init_adapters(base, lora_lib.LoraConfig(2, 2.0, (r"^llm/typo/",)),
                           jax.random.key(0))


def test_init_is_identity_and_merge_equals_export_merge():
  config = _tiny()
  model = VLA(config)
  base = _base_params(config)
  batch = tu.make_batch(2, num_cams=2)
  p0 = lora_lib.init_adapters(base, LORA, jax.random.key(1))
  np.testing.assert_array_equal(
      _logits(model, base, batch), _logits(model, lora_lib.merge(p0, LORA.scale), batch))
  # Trained (non-zero) adapters: the jit-able merge == export's numpy merge, and the
  # logits differ from the base model's.
  p1 = _perturb_b(p0)
  merged_np = export_lib.merge_lora(p1, LORA.to_metadata())
  merged_jnp = jax.jit(lambda p: lora_lib.merge(p, LORA.scale))(p1)
  assert jax.tree.structure(merged_np) == jax.tree.structure(base)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               merged_np, merged_jnp)
  out = _logits(model, merged_np, batch)
  assert not np.allclose(out, _logits(model, base, batch), atol=1e-4)


def test_train_step_updates_only_adapters():
  config = _tiny()
  model = VLA(config)
  base = _base_params(config)
  params = lora_lib.init_adapters(base, LORA, jax.random.key(1))
  opt = ml_collections.ConfigDict({"name": "adamw", "lr": 1e-2, "warmup_steps": 0,
                                   "schedule": "constant", "weight_decay": 1e-2,
                                   "clip_norm": 1.0, "freeze_patterns": ""})
  tx, sched, frozen = optimizer_lib.make_optimizer(opt, params, 10,
                                                   trainable=lora_lib.adapter_mask(params))
  assert all(f != lora_lib.is_adapter(lora_lib.path_str(p)) for p, f in
             jax.tree_util.tree_flatten_with_path(frozen)[0])
  state = state_lib.create(params, tx, jax.random.key(0))
  # Optimizer state only for the adapters (Adam's mu/nu: 2 per adapter leaf).
  n_opt = sum(np.size(x) for x in jax.tree.leaves(state.opt_state))
  assert n_opt < 2 * lora_lib.count(params) + 10
  step = jax.jit(step_lib.make_train_step(model, tx, sched, frozen, num_datasets=3,
                                          lora_scale=LORA.scale))
  old = jax.tree.map(np.array, params)
  for s in range(2):  # 2 steps: B moves first, then A gets a gradient too
    state, metrics = step(state, Batch.from_dict(tu.make_batch(4, step=s)))
  assert np.isfinite(float(metrics["last"]["loss"]))
  for p, x in jax.tree_util.tree_flatten_with_path(state.params)[0]:
    name = lora_lib.path_str(p)
    before = old
    for k in p:
      before = before[k.key]
    if lora_lib.is_adapter(name):
      assert not np.array_equal(np.asarray(x), before), name
    else:
      np.testing.assert_array_equal(np.asarray(x), before, err_msg=name)


def test_export_merges_and_policy_outputs_match(tmp_path):
  config, meta = tp.make_metadata()
  params = _perturb_b(lora_lib.init_adapters(tp.make_params(config), LORA,
                                             jax.random.key(3)), seed=4)
  meta = dict(meta, lora=LORA.to_metadata(), config={"seed": 0})
  src = ckpt_format.save_checkpoint(str(tmp_path / "lora_ckpt"), 3, params, meta)
  out = str(tmp_path / "bundle")
  export_lib.export(src, out)
  exp_params, exp_meta = ckpt_format.load_params(out)
  assert not export_lib.has_lora(exp_params) and exp_meta["export"]["lora_merged"]
  assert "lora" not in exp_meta
  want = lora_lib.merge(jax.tree.map(jnp.asarray, params), LORA.scale)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               exp_params, jax.device_get(want))
  obs = [tp.make_observation(s, size=(48, 64)) for s in range(3)]
  instr = ["pick up the red block"] * 3
  a_src, t_src = Policy(src, dataset="robot_a").predict_action_batch(
      obs, instr, return_tokens=True)
  a_exp, t_exp = Policy(out, dataset="robot_a").predict_action_batch(
      obs, instr, return_tokens=True)
  np.testing.assert_array_equal(t_src, t_exp)
  np.testing.assert_allclose(a_src, a_exp, rtol=1e-5, atol=1e-6)
  # The adapters matter: the base model alone predicts something else.
  base_ckpt = ckpt_format.save_checkpoint(
      str(tmp_path / "base"), 3, tp.make_params(config),
      {k: v for k, v in meta.items() if k != "lora"})
  _, t_base = Policy(base_ckpt, dataset="robot_a").predict_action_batch(
      obs, instr, return_tokens=True)
  assert not np.array_equal(t_base, t_src)
  assert os.path.isdir(os.path.join(out, "3", "params"))


# --- the trainer: lora.* config keys, init_from, optimizer state ----------------------


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
  from vlax.training import trainer  # pylint: disable=g-import-not-at-top
  workdir = tmp_path_factory.mktemp("lora_run")
  config = tu.tiny_config(num_steps=2, checkpoint_every=2, **{
      "lora.rank": 2, "lora.alpha": 4.0, "optimizer.weight_decay": 0.0})
  out = trainer.train(config, str(workdir), data_iterator_fn=tu.synthetic_data_fn())
  return workdir, config, out


def _setup(config, vocab=tu.VOCAB):
  from vlax.training import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from vlax.training import trainer  # pylint: disable=g-import-not-at-top
  meta = dict(tu.metadata(), vocab_size=vocab)
  mesh = mesh_lib.mesh_from_config({"data": 1, "fsdp": -1, "tensor": 1})
  return trainer.ModelSetup(config, trainer.build_model_config(config, meta), mesh,
                            tu.make_batch(8, vocab=vocab), 3)


@pytest.mark.slow  # shares a ~40 s tiny LoRA training run (fixture)
def test_trainer_lora_run_trains_adapters_only_and_records_metadata(lora_run):
  workdir, config, out = lora_run
  root = str(workdir / "checkpoints")
  params, meta = ckpt_format.load_params(root)
  assert meta["lora"] == {"rank": 2, "alpha": 4.0,
                          "targets": ["^llm/layers/attn/", "^llm/layers/mlp/"]}
  assert export_lib.has_lora(params)
  # Base weights are the seed's random init, bit for bit; adapters B moved off zero.
  base = jax.device_get(_setup(tu.tiny_config()).init_params(config.seed))
  jax.tree.map(np.testing.assert_array_equal, base,
               export_lib.merge_lora(params, {"rank": 1, "alpha": 0.0}))
  b = params["llm"]["layers"]["attn"]["q_einsum"]["w_lora_b"]
  assert np.abs(b).max() > 0
  assert "w_lora_a" not in params["img"]["Transformer"]["encoderblock"][
      "MultiHeadDotProductAttention_0"]["query"]
  # Optimizer state: adapters only.
  n_opt = sum(np.size(x) for x in jax.tree.leaves(out["state"].opt_state))
  assert n_opt < 2 * lora_lib.count(params) + 10


@pytest.mark.slow  # shares a ~40 s tiny LoRA training run (fixture)
def test_init_from_lora_checkpoint_merges_and_vocab_mismatch_names_sizes(lora_run):
  workdir, _, _ = lora_run
  root = str(workdir / "checkpoints")
  params, meta = ckpt_format.load_params(root)
  setup = _setup(tu.tiny_config())
  got = jax.device_get(init_from.load_params(root, setup))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
               got, export_lib.merge_lora(params, meta["lora"]))
  with pytest.raises(VlaxError, match=r"vocabulary size differs.*128 tokens.*has 256"):
    init_from.load_params(root, _setup(tu.tiny_config(), vocab=256))
  # A LoRA fine-tune of a LoRA checkpoint: merged base + fresh (identity) adapters.
  setup = _setup(tu.tiny_config(**{"lora.rank": 4}))
  got = jax.device_get(init_from.load_params(root, setup, seed=5))
  assert got["llm"]["layers"]["mlp"]["linear_lora_a"].shape[-1] == 4
  assert np.all(got["llm"]["layers"]["mlp"]["linear_lora_b"] == 0)


@pytest.mark.slow  # shares a ~40 s tiny LoRA training run (fixture)
def test_init_from_keeps_or_resets_optimizer_state(lora_run, tmp_path):
  workdir, config, out = lora_run
  root = str(workdir / "checkpoints")
  setup = _setup(config)
  params = init_from.load_params(root, setup)
  state = setup.create_state(params, 0)
  kept, msg = init_from.with_opt_state(root, setup, state, reset=False)
  assert "kept" in msg
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(kept.opt_state),
               jax.device_get(out["state"].opt_state))
  fresh, msg = init_from.with_opt_state(root, setup, state, reset=True)
  assert "fresh" in msg and fresh is state
  # Another optimizer layout (no LoRA): keeping is refused with the fix in the message.
  plain = _setup(tu.tiny_config())
  state = plain.create_state(init_from.load_params(root, plain), 0)
  with pytest.raises(VlaxError, match="reset_optimizer=True"):
    init_from.with_opt_state(root, plain, state, reset=False)
  # An export bundle has no optimizer state: fresh, said so.
  bundle = str(tmp_path / "bundle")
  export_lib.export(root, bundle)
  _, msg = init_from.with_opt_state(bundle, plain, state, reset=False)
  assert "no optimizer state" in msg


def test_init_from_required(tmp_path):
  from vlax.training import trainer  # pylint: disable=g-import-not-at-top
  config = tu.tiny_config(init_from_required=True)
  with pytest.raises(VlaxError, match="init_from is required"):
    trainer.train(config, str(tmp_path), data_iterator_fn=tu.synthetic_data_fn())
