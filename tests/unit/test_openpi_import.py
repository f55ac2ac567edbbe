"""`vlax import-openpi`: synthetic checkpoints in openpi's exact tree layout (tiny twins),
the full 3B tree checked abstractly, norm stats, refusals."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from vlax.checkpoints import big_vision
from vlax.checkpoints import format as ckpt_format
from vlax.checkpoints import openpi as openpi_ckpt
from vlax.checkpoints import weights as weights_lib
from vlax.cli import main
from vlax.data import normalization
from vlax.data import openpi_import
from vlax.data.text_tokenizer import TOY_MODEL_PATH
from vlax.errors import VlaxError
from vlax.models.presets import get_preset

import _openpi_utils as ou

TOY = str(TOY_MODEL_PATH)

# openpi's PaliGemma tree (notes/openpi-checkpoints.md section 2), under PaliGemma/.
ENC = "img/Transformer/encoderblock"
ATT = ENC + "/MultiHeadDotProductAttention_0"
OPENPI_3B = {
    "llm/embedder/input_embedding": (257152, 2048),
    "llm/layers/pre_attention_norm/scale": (18, 2048),
    "llm/layers/attn/q_einsum/w": (18, 8, 2048, 256),
    "llm/layers/attn/kv_einsum/w": (18, 2, 1, 2048, 256),
    "llm/layers/attn/attn_vec_einsum/w": (18, 8, 256, 2048),
    "llm/layers/pre_ffw_norm/scale": (18, 2048),
    "llm/layers/mlp/gating_einsum": (18, 2, 2048, 16384),
    "llm/layers/mlp/linear": (18, 16384, 2048),
    "llm/final_norm/scale": (2048,),
    "img/embedding/kernel": (14, 14, 3, 1152), "img/embedding/bias": (1152,),
    "img/pos_embedding": (1, 256, 1152),
    **{f"{ENC}/LayerNorm_{i}/{p}": (27, 1152) for i in (0, 1) for p in ("scale", "bias")},
    **{f"{ATT}/{n}/kernel": (27, 1152, 16, 72) for n in ("query", "key", "value")},
    **{f"{ATT}/{n}/bias": (27, 16, 72) for n in ("query", "key", "value")},
    f"{ATT}/out/kernel": (27, 16, 72, 1152), f"{ATT}/out/bias": (27, 1152),
    f"{ENC}/MlpBlock_0/Dense_0/kernel": (27, 1152, 4304),
    f"{ENC}/MlpBlock_0/Dense_0/bias": (27, 4304),
    f"{ENC}/MlpBlock_0/Dense_1/kernel": (27, 4304, 1152),
    f"{ENC}/MlpBlock_0/Dense_1/bias": (27, 1152),
    "img/Transformer/encoder_norm/scale": (1152,), "img/Transformer/encoder_norm/bias": (1152,),
    "img/head/kernel": (1152, 2048), "img/head/bias": (2048,),
}


def test_3b_tree_matches_the_3b_preset_abstractly():
  """openpi's 3B tree -> inferred config == paligemma_3b; vlax's model (eval_shape of
  its init, no allocation) has exactly these names and shapes."""
  flat = {k: jax.ShapeDtypeStruct(s, np.float32) for k, s in OPENPI_3B.items()}
  config = big_vision.infer_config(flat, "3b")
  openpi_ckpt.check_tree(flat, config, "3b")
  assert openpi_ckpt.matching_preset(config) == "paligemma_3b"
  model_shapes = weights_lib.abstract_shapes(get_preset("paligemma_3b"))
  assert {k: tuple(v) for k, v in model_shapes.items()} == OPENPI_3B


@pytest.mark.parametrize("dtype,wrap", [(np.float32, False), (np.float32, True),
                                        (ou.BF16, False), (ou.BF16, True)])
def test_import_round_trip_is_bit_exact(tmp_path, dtype, wrap):
  config = ou.tiny_config(1000, 256)
  flat = ou.write_checkpoint(str(tmp_path / "src"), config, dtype=dtype, wrap_value=wrap)
  out = str(tmp_path / "out")
  want = "bfloat16" if dtype is ou.BF16 else "float32"
  r = openpi_import.import_openpi(str(tmp_path / "src"), out, text_tokenizer=TOY,
                                  dtype=want)
  assert r["dtype_on_disk"] == want and r["action_tokenizer"] == "bins"
  params, meta = ckpt_format.load_params(out)
  got = big_vision.flatten(params)
  assert sorted(got) == sorted(flat)
  for k, x in flat.items():
    assert got[k].dtype == x.dtype and got[k].tobytes() == x.tobytes(), k
  assert meta["sequence_format"] == "openpi"
  assert meta["action_tokenizer"]["sequence"]["format"] == "openpi"
  assert meta["action_tokenizer"]["decode_at"] == "lower"
  assert meta["model"]["llm"]["vocab_size"] == 1384
  assert meta["source"]["preset"] is None  # a tiny twin, not the 3B preset


def test_float32_import_of_bf16_is_exact_widening(tmp_path):
  config = ou.tiny_config(1000, 256)
  flat = ou.write_checkpoint(str(tmp_path / "src"), config, dtype=ou.BF16)
  openpi_import.import_openpi(str(tmp_path / "src"), str(tmp_path / "out"),
                              text_tokenizer=TOY)
  got = big_vision.flatten(ckpt_format.load_params(str(tmp_path / "out"))[0])
  for k, x in flat.items():
    assert got[k].dtype == np.float32 and np.array_equal(got[k], x.astype(np.float32))


def _rewrite(src, flat):
  shutil.rmtree(os.path.join(src, "params"))
  ou.write_params(os.path.join(src, "params"), flat)


def test_refuses_missing_extra_or_misshaped_leaf(tmp_path):
  config = ou.tiny_config(1000, 256)
  src = str(tmp_path / "src")
  flat = ou.write_checkpoint(src, config)
  cases = [
      ({k: v for k, v in flat.items() if k != "llm/final_norm/scale"},
       "missing parameter PaliGemma/llm/final_norm/scale"),
      ({**flat, "llm/action_head/kernel": np.zeros((2, 2), np.float32)},
       "unexpected parameter PaliGemma/llm/action_head/kernel"),
      ({**flat, "img/head/bias": np.zeros((5,), np.float32)},
       r"parameter PaliGemma/img/head/bias has shape \(5,\)"),
  ]
  for i, (bad, msg) in enumerate(cases):
    _rewrite(src, bad)
    with pytest.raises(VlaxError, match=msg):
      openpi_import.import_openpi(src, str(tmp_path / f"out{i}"), text_tokenizer=TOY)
    assert not os.path.exists(tmp_path / f"out{i}")  # nothing half-written


def test_norm_stats_and_normalization_kind(tmp_path):
  config = ou.tiny_config(1000, 256)
  src = str(tmp_path / "src")
  ou.write_checkpoint(src, config, asset_id="physical-intelligence/libero")
  r = openpi_import.import_openpi(src, str(tmp_path / "out"), text_tokenizer=TOY)
  assert r["normalization"] == "zscore" and r["cameras"] == ["primary", "wrist", "secondary"]
  meta = ckpt_format.read_metadata(str(tmp_path / "out"))
  st = meta["statistics"]["physical-intelligence/libero"]
  assert st["normalization_type"] == "normal"
  raw = json.load(open(os.path.join(src, "assets", "physical-intelligence", "libero",
                                    "norm_stats.json")))["norm_stats"]
  assert st["action"]["q99"] == raw["actions"]["q99"]
  assert st["proprio"]["mean"] == raw["state"]["mean"]
  # Quantile (forced): openpi's formula, unclipped, and its inverse.
  r = openpi_import.import_openpi(src, str(tmp_path / "outq"), text_tokenizer=TOY,
                                  norm="quantile", action_dim=2)
  st = ckpt_format.read_metadata(str(tmp_path / "outq"))["statistics"][r["asset_id"]]
  assert st["normalization_type"] == "quantile" and len(st["action"]["mean"]) == 2
  x = np.array([[-5.0, 0.3], [2.0, 9.0]])
  q01, q99 = np.array(st["action"]["q01"]), np.array(st["action"]["q99"])
  y = normalization.normalize(x, st["action"], "quantile")
  np.testing.assert_allclose(y, (x - q01) / (q99 - q01 + 1e-6) * 2 - 1, rtol=1e-12)
  np.testing.assert_allclose(normalization.unnormalize(y, st["action"], "quantile"), x)


def test_cli_import_and_its_errors(tmp_path, capsys):
  config = ou.tiny_config(1000, 256)
  src = str(tmp_path / "src")
  ou.write_checkpoint(src, config)
  ou.write_checkpoint(str(tmp_path / "other"), config, asset_id="franka")
  shutil.copytree(tmp_path / "other" / "assets" / "franka", tmp_path / "src" / "assets" /
                  "franka")
  assert main(["import-openpi", src, str(tmp_path / "o"), "--text-tokenizer", TOY]) == 2
  assert "choose one with --asset-id" in capsys.readouterr().err
  assert main(["import-openpi", str(tmp_path / "nope"), str(tmp_path / "o"),
               "--text-tokenizer", TOY]) == 2
  assert "not found" in capsys.readouterr().err
  assert main(["import-openpi", src, str(tmp_path / "o"), "--asset-id", "franka",
               "--text-tokenizer", TOY, "--chunk-len", "4"]) == 0
  line = capsys.readouterr().out
  assert "chunk 4 x 3" in line and "'franka' (quantile)" in line


def test_fast_import_records_tokenizer_json_and_openpi_ids(tmp_path):
  from tokenizers import ByteLevelBPETokenizer  # pylint: disable=g-import-not-at-top
  bpe = ByteLevelBPETokenizer()
  bpe.train_from_iterator(["".join(chr(354 + d) for d in range(-3, 4))] * 20,
                          vocab_size=280, show_progress=False, special_tokens=[])
  os.makedirs(tmp_path / "fast")
  bpe.save(str(tmp_path / "fast" / "tokenizer.json"))
  src = str(tmp_path / "src")
  ou.write_checkpoint(src, ou.tiny_config(1000, 2048))
  r = openpi_import.import_openpi(src, str(tmp_path / "out"), text_tokenizer=TOY,
                                  fast_tokenizer=str(tmp_path / "fast"))
  assert (r["action_tokenizer"], r["chunk_len"]) == ("fast", 10)
  act = ckpt_format.read_metadata(str(tmp_path / "out"))["action_tokenizer"]
  assert act["style"] == "openpi" and (act["scale"], act["min_token"]) == (10.0, -354)
  assert act["tokenizer_json"] == open(tmp_path / "fast" / "tokenizer.json").read()
  # id t -> V - 1 - 128 - t with V = 1000 + 2048 + 128 embedding rows.
  assert act["vocab"] == {"start": 1000, "size": 2048, "reverse": True, "tail": 128}
