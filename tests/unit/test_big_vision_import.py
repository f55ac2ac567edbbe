"""Import of big_vision PaliGemma .npz files (generated here with the real names/shapes)."""

import jax
import ml_dtypes
import numpy as np
import pytest

from vlax.checkpoints import big_vision
from vlax.checkpoints.pretrained import import_paligemma, load_pretrained
from vlax.errors import VlaxError
from vlax.models.vla import VLA

# Tiny config: SigLIP 16px/8 (N=4 patches), W=16, 2 blocks, 2 heads (D=8), M=24;
# Gemma E=32, 2 layers, 4 heads, 1 kv head, Dh=8, F=48, V=64.
P, W, LV, H, D, M, N = 8, 16, 2, 2, 8, 24, 4
E, LL, NH, K, DH, F, V = 32, 2, 4, 1, 8, 48, 64
ENC = "img/Transformer/encoderblock"
MHA = ENC + "/MultiHeadDotProductAttention_0"

# Written out by hand from big_vision's vit.py / ppp/gemma.py (scan=True) so that this
# test does not depend on vlax's own description of the layout.
BIG_VISION_SHAPES = {
    "img/embedding/kernel": (P, P, 3, W),
    "img/embedding/bias": (W,),
    "img/pos_embedding": (1, N, W),
    f"{ENC}/LayerNorm_0/scale": (LV, W),
    f"{ENC}/LayerNorm_0/bias": (LV, W),
    f"{MHA}/query/kernel": (LV, W, H, D),
    f"{MHA}/query/bias": (LV, H, D),
    f"{MHA}/key/kernel": (LV, W, H, D),
    f"{MHA}/key/bias": (LV, H, D),
    f"{MHA}/value/kernel": (LV, W, H, D),
    f"{MHA}/value/bias": (LV, H, D),
    f"{MHA}/out/kernel": (LV, H, D, W),
    f"{MHA}/out/bias": (LV, W),
    f"{ENC}/LayerNorm_1/scale": (LV, W),
    f"{ENC}/LayerNorm_1/bias": (LV, W),
    f"{ENC}/MlpBlock_0/Dense_0/kernel": (LV, W, M),
    f"{ENC}/MlpBlock_0/Dense_0/bias": (LV, M),
    f"{ENC}/MlpBlock_0/Dense_1/kernel": (LV, M, W),
    f"{ENC}/MlpBlock_0/Dense_1/bias": (LV, W),
    "img/Transformer/encoder_norm/scale": (W,),
    "img/Transformer/encoder_norm/bias": (W,),
    "img/head/kernel": (W, E),
    "img/head/bias": (E,),
    "llm/embedder/input_embedding": (V, E),
    "llm/layers/pre_attention_norm/scale": (LL, E),
    "llm/layers/attn/q_einsum/w": (LL, NH, E, DH),
    "llm/layers/attn/kv_einsum/w": (LL, 2, K, E, DH),
    "llm/layers/attn/attn_vec_einsum/w": (LL, NH, DH, E),
    "llm/layers/pre_ffw_norm/scale": (LL, E),
    "llm/layers/mlp/gating_einsum": (LL, 2, E, F),
    "llm/layers/mlp/linear": (LL, F, E),
    "llm/final_norm/scale": (E,),
}


def _random_flat(shapes=None, seed=0):
  rng = np.random.default_rng(seed)
  shapes = shapes or BIG_VISION_SHAPES
  out = {}
  for name, shape in shapes.items():
    fan_in = int(np.prod(shape[1:-1])) if len(shape) > 2 else shape[-1]
    out[name] = (rng.standard_normal(shape) * fan_in ** -0.5).astype(np.float32)
  return out


def _save(path, flat, prefix="params/"):
  np.savez(path, **{prefix + k: v for k, v in flat.items()})
  return str(path)


def _inputs():
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (2, 2, 16, 16, 3)).astype(np.float32)
  tokens = rng.integers(0, V, (2, 7)).astype(np.int32)
  prefix = np.arange(7)[None].repeat(2, 0) < 4
  return images, tokens, prefix


def test_import_infers_config_and_keeps_values(tmp_path):
  flat = _random_flat()
  config, params = big_vision.load_big_vision_npz(_save(tmp_path / "pt.npz", flat))
  v, g = config.vision, config.llm
  assert (v.image_size, v.patch_size, v.width, v.depth, v.mlp_dim, v.num_heads) == (
      16, P, W, LV, M, H)
  assert (g.vocab_size, g.width, g.depth, g.mlp_dim, g.num_heads, g.num_kv_heads,
          g.head_dim) == (V, E, LL, F, NH, K, DH)
  got = big_vision.flatten(params)
  assert got.keys() == flat.keys()
  for k in flat:
    np.testing.assert_array_equal(got[k], flat[k])


def test_model_tree_is_big_vision_layout(tmp_path):
  """The model's own init tree must have exactly big_vision's names and shapes."""
  config, _ = big_vision.load_big_vision_npz(_save(tmp_path / "pt.npz", _random_flat()))
  from vlax.models.vla import example_inputs  # pylint: disable=g-import-not-at-top
  abstract = jax.eval_shape(lambda: VLA(config).init(jax.random.key(0),
                                                     *example_inputs(config)))
  shapes = {k: tuple(getattr(x, "value", x).shape)
            for k, x in big_vision.flatten(dict(abstract["params"])).items()}
  assert shapes == BIG_VISION_SHAPES


def test_logits_equal_model_on_same_params(tmp_path):
  flat = _random_flat()
  path = _save(tmp_path / "pt.npz", flat, prefix="")  # prefix-less files work too
  pre = load_pretrained(path)
  images, tokens, prefix = _inputs()
  image_mask = np.array([[True, True], [True, False]])
  got = np.asarray(pre.logits(images, tokens, prefix, image_mask=image_mask))
  assert got.shape == (2, 7, V) and np.isfinite(got).all()
  want = VLA(pre.config).apply({"params": big_vision.unflatten(flat)}, images,
                               image_mask, tokens, np.ones((2, 7), bool), prefix)
  np.testing.assert_allclose(got, np.asarray(want), rtol=1e-6, atol=1e-6)


def test_unscanned_and_qkv_and_bf16_variants(tmp_path):
  flat = _random_flat()
  ref = big_vision.flatten(big_vision.load_big_vision_npz(
      _save(tmp_path / "a.npz", flat))[1])
  unscanned = {}
  for k, x in flat.items():
    if k.startswith(ENC + "/"):
      for i in range(LV):
        unscanned[k.replace(ENC + "/", f"img/Transformer/encoderblock_{i}/")] = x[i]
    elif k.startswith("llm/layers/"):
      for i in range(LL):
        unscanned[k.replace("llm/layers/", f"llm/layers/{i}/")] = x[i]
    else:
      unscanned[k] = x
  got = big_vision.flatten(big_vision.load_big_vision_npz(
      _save(tmp_path / "b.npz", unscanned))[1])
  for k in ref:
    np.testing.assert_array_equal(got[k], ref[k])
  bf16 = {k: x.astype(ml_dtypes.bfloat16) for k, x in flat.items()}
  got = big_vision.flatten(big_vision.load_big_vision_npz(
      _save(tmp_path / "c.npz", bf16))[1])
  for k in ref:
    assert got[k].dtype == np.float32
    np.testing.assert_array_equal(got[k], bf16[k].astype(np.float32))


def test_mha_qkv_einsum_is_split(tmp_path):
  shapes = dict(BIG_VISION_SHAPES)
  del shapes["llm/layers/attn/q_einsum/w"], shapes["llm/layers/attn/kv_einsum/w"]
  shapes["llm/layers/attn/qkv_einsum/w"] = (LL, 3, NH, E, DH)
  flat = _random_flat(shapes)
  config, params = big_vision.load_big_vision_npz(_save(tmp_path / "mha.npz", flat))
  assert config.llm.num_kv_heads == NH
  attn = params["llm"]["layers"]["attn"]
  qkv = flat["llm/layers/attn/qkv_einsum/w"]
  np.testing.assert_array_equal(attn["q_einsum"]["w"], qkv[:, 0])
  np.testing.assert_array_equal(attn["kv_einsum"]["w"], qkv[:, 1:])


def test_import_to_vlax_checkpoint(tmp_path):
  path = _save(tmp_path / "pt.npz", _random_flat())
  import_paligemma(path, str(tmp_path / "ckpt"))
  images, tokens, prefix = _inputs()
  a = load_pretrained(path).logits(images, tokens, prefix)
  b = load_pretrained(str(tmp_path / "ckpt")).logits(images, tokens, prefix)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_error_missing_key(tmp_path):
  flat = _random_flat()
  del flat[f"{MHA}/value/bias"]
  with pytest.raises(VlaxError, match="MultiHeadDotProductAttention_0/value/bias"):
    big_vision.load_big_vision_npz(_save(tmp_path / "pt.npz", flat))


def test_error_wrong_shape(tmp_path):
  flat = _random_flat()
  flat["llm/layers/mlp/linear"] = flat["llm/layers/mlp/linear"][:, :-1]
  with pytest.raises(VlaxError) as e:
    big_vision.load_big_vision_npz(_save(tmp_path / "pt.npz", flat))
  assert "llm/layers/mlp/linear" in str(e.value) and "(2, 47, 32)" in str(e.value)
  assert "pt.npz" in str(e.value)


def test_error_not_an_npz(tmp_path):
  bad = tmp_path / "junk.npz"
  bad.write_text("not a zip")
  with pytest.raises(VlaxError, match="junk.npz"):
    big_vision.load_big_vision_npz(str(bad))
  with pytest.raises(VlaxError, match="missing.npz"):
    load_pretrained(str(tmp_path / "missing.npz"))
