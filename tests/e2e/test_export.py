"""Release bundles (`vlax export`): self-contained, bf16 option, LoRA merge."""

import os

import jax
import ml_dtypes
import numpy as np
import pytest

from vlax import cli
from vlax.checkpoints import format as ckpt_format
from vlax.data.text_tokenizer import TOY_MODEL_PATH
from vlax.errors import VlaxError
from vlax.inference import export as export_lib
from vlax.inference.policy import Policy

import _policy_utils as tp

INSTR = "pick up the red block"


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  """A training-like checkpoint whose text tokenizer is a *path* (as after an import)."""
  config, meta = tp.make_metadata()
  meta["text_tokenizer"] = {"kind": "sentencepiece", "path": str(TOY_MODEL_PATH),
                            "name": "toy_spm"}
  meta["config"] = {"seed": 0, "num_steps": 5}
  return tp.make_checkpoint(tmp_path_factory.mktemp("export") / "ckpt", step=7,
                            params=tp.make_params(config), metadata=meta)


def _observations():
  return [tp.make_observation(s, size=(48, 64)) for s in range(3)]


def test_export_roundtrip_is_self_contained(source, tmp_path):
  out = tmp_path / "bundle"
  step_dir = export_lib.export(os.path.dirname(source), str(out))
  assert step_dir == str(out / "7")
  items = {d for d in os.listdir(step_dir) if os.path.isdir(os.path.join(step_dir, d))}
  assert items == {"metadata", "params"}  # no optimizer / train state
  meta = ckpt_format.read_metadata(str(out))
  assert meta["text_tokenizer"]["model_b64"] and "path" not in meta["text_tokenizer"]
  assert sorted(meta["statistics"]) == ["robot_a", "robot_b", "robot_c"]
  assert meta["action_tokenizer"]["chunk_len"] == tp.K
  assert meta["export"]["dtype"] == "float32" and meta["export"]["source_step"] == 7
  assert meta["config"] == {"seed": 0, "num_steps": 5}
  src = Policy(source, dataset="robot_a")
  dst = Policy(str(out), dataset="robot_a")
  obs = _observations()
  np.testing.assert_array_equal(src.predict_action_batch(obs, [INSTR] * 3),
                                dst.predict_action_batch(obs, [INSTR] * 3))
  # Loadable as pretrained weights (what fine-tuning's init_from reads) with no extras.
  params, _ = ckpt_format.load_params(str(out))
  want, _ = ckpt_format.load_params(source)
  jax.tree.map(np.testing.assert_array_equal, params, want)


def test_bf16_export_predicts_close_to_fp32(source, tmp_path):
  out = str(tmp_path / "bf16")
  assert cli.main(["export", source, out, "--dtype", "bfloat16"]) == 0
  params, meta = ckpt_format.load_params(out)
  dtypes = {x.dtype for x in jax.tree.leaves(params)}
  assert dtypes == {np.dtype(ml_dtypes.bfloat16)}
  assert meta["model"]["param_dtype"] == "bfloat16"
  assert meta["model"]["dtype"] == "float32"
  fp32 = Policy(source, dataset="robot_b")
  bf16 = Policy(out, dataset="robot_b")
  obs = [tp.make_observation(s, size=(48, 64), proprio_dim=4) for s in range(4)]
  a32, t32 = fp32.predict_action_batch(obs, [INSTR] * 4, return_tokens=True)
  a16, t16 = bf16.predict_action_batch(obs, [INSTR] * 4, return_tokens=True)
  assert np.all(np.isfinite(a16))
  assert (t32 == t16).mean() > 0.7  # greedy argmax may flip on near ties
  # Normalized actions: a flipped bin is a neighbouring one, or rare.
  n32 = np.stack([fp32.tokens_to_actions(t, normalized=True) for t in t32])
  n16 = np.stack([bf16.tokens_to_actions(t, normalized=True) for t in t16])
  assert np.mean(np.abs(n32 - n16)) < 0.2


def _lora_params(config, rank=2, seed=1):
  """Base params plus adapters in both naming styles (the LoRA convention)."""
  rng = np.random.default_rng(seed)
  params = tp.make_params(config)
  g = config.llm
  attn = params["llm"]["layers"]["attn"]
  # q_einsum/w [L, H, E, Dh]: per-head adapters A [L, H, E, r], B [L, H, r, Dh].
  attn["q_einsum"]["w_lora_a"] = rng.normal(
      size=(g.depth, g.num_heads, g.width, rank)).astype(np.float32)
  attn["q_einsum"]["w_lora_b"] = rng.normal(
      size=(g.depth, g.num_heads, rank, g.head_dim)).astype(np.float32)
  # Dense kernel [L, W, M] with plain lora_a / lora_b beside it.
  dense = params["img"]["Transformer"]["encoderblock"]["MlpBlock_0"]["Dense_0"]
  lv, w, m = dense["kernel"].shape
  dense["lora_a"] = rng.normal(size=(lv, w, rank)).astype(np.float32)
  dense["lora_b"] = rng.normal(size=(lv, rank, m)).astype(np.float32)
  return params


def test_merge_lora_math_and_noop():
  config, _ = tp.make_metadata()
  base = tp.make_params(config)
  assert export_lib.merge_lora(base, None) is base
  assert export_lib.merge_lora(base, {"rank": 2, "alpha": 4}) is base
  params = _lora_params(config)
  merged = export_lib.merge_lora(params, {"rank": 2, "alpha": 4.0, "targets": ["q", "mlp"]})
  assert not export_lib.has_lora(merged)
  q = params["llm"]["layers"]["attn"]["q_einsum"]
  np.testing.assert_allclose(
      merged["llm"]["layers"]["attn"]["q_einsum"]["w"],
      q["w"] + 2.0 * np.einsum("lher,lhrd->lhed", q["w_lora_a"], q["w_lora_b"]),
      rtol=1e-5, atol=1e-5)
  d = params["img"]["Transformer"]["encoderblock"]["MlpBlock_0"]["Dense_0"]
  np.testing.assert_allclose(
      merged["img"]["Transformer"]["encoderblock"]["MlpBlock_0"]["Dense_0"]["kernel"],
      d["kernel"] + 2.0 * d["lora_a"] @ d["lora_b"], rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(merged["llm"]["final_norm"]["scale"],
                                base["llm"]["final_norm"]["scale"])
  with pytest.raises(VlaxError, match="no 'lora' entry"):
    export_lib.merge_lora(params, None)
  bad = _lora_params(config)
  bad["llm"]["layers"]["attn"]["q_einsum"]["w_lora_b"] = np.zeros((2, 2, 2, 3), np.float32)
  with pytest.raises(VlaxError, match="q_einsum/w"):
    export_lib.merge_lora(bad, {"rank": 2, "alpha": 2})


def test_export_merges_lora_and_policy_loads_adapters(tmp_path):
  config, meta = tp.make_metadata()
  meta["lora"] = {"rank": 2, "alpha": 2.0, "targets": ["attn", "mlp"]}
  params = _lora_params(config)
  for leaf in ("w_lora_a", "w_lora_b"):  # small adapters: predictions stay sane
    params["llm"]["layers"]["attn"]["q_einsum"][leaf] *= 0.1
  src = tp.make_checkpoint(tmp_path / "lora", params=params, metadata=meta)
  merged_dir = export_lib.export(src, str(tmp_path / "merged"))
  kept_dir = export_lib.export(src, str(tmp_path / "kept"), merge_lora=False)
  merged, mmeta = ckpt_format.load_params(merged_dir)
  assert not export_lib.has_lora(merged) and "lora" not in mmeta
  assert mmeta["export"]["lora_merged"] is True
  kept, kmeta = ckpt_format.load_params(kept_dir)
  assert export_lib.has_lora(kept) and kmeta["lora"]["rank"] == 2
  want = export_lib.merge_lora(params, meta["lora"])
  jax.tree.map(np.testing.assert_array_equal, merged, want)
  obs = _observations()
  outs = [Policy(p, dataset="robot_a").predict_action_batch(obs, [INSTR] * 3)
          for p in (src, merged_dir, kept_dir)]
  np.testing.assert_array_equal(outs[0], outs[1])
  np.testing.assert_array_equal(outs[0], outs[2])


def test_export_errors(source, tmp_path):
  out = tmp_path / "full"
  out.mkdir()
  (out / "file").write_text("x")
  with pytest.raises(VlaxError, match="already exists"):
    export_lib.export(source, str(out))
  with pytest.raises(VlaxError, match="dtype"):
    export_lib.export(source, str(tmp_path / "x"), dtype="int8")
  with pytest.raises(VlaxError, match="step 3 not found"):
    export_lib.export(os.path.dirname(source), str(tmp_path / "y"), step=3)
  assert cli.main(["export", str(tmp_path / "missing"), str(tmp_path / "z")]) == 2
