"""VLA model: parameter tree, masking semantics, dtype/remat options, configs and presets."""

import dataclasses
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from _model_utils import model_inputs
from vlax.errors import VlaxError
from vlax.models import VLA, VLAConfig, count_params, forward_flops, get_preset, init_params
from vlax.models.presets import decode_flops

TINY = get_preset("tiny")


@pytest.fixture(scope="module")
def tiny():
  model = VLA(TINY)
  params = init_params(model, jax.random.PRNGKey(0))
  return model, params, jax.jit(model.apply)


def _run(fwd, params, x):
  return np.asarray(fwd({"params": params}, x["images"], x["image_mask"], x["tokens"],
                        x["input_mask"], x["prefix_mask"]))


def _expected_tree(c: VLAConfig):
  v, g = c.vision, c.llm
  w, m, hv, dv, lv = v.width, v.mlp_dim, v.num_heads, v.head_dim, v.depth
  e, h, k, d, f, ll = g.width, g.num_heads, g.num_kv_heads, g.head_dim, g.mlp_dim, g.depth
  blk = "img/Transformer/encoderblock/"
  t = {
      "img/embedding/kernel": (v.patch_size, v.patch_size, 3, w), "img/embedding/bias": (w,),
      "img/pos_embedding": (1, v.num_patches, w),
      "img/Transformer/encoder_norm/scale": (w,), "img/Transformer/encoder_norm/bias": (w,),
      "img/head/kernel": (w, e), "img/head/bias": (e,),
      blk + "MultiHeadDotProductAttention_0/out/kernel": (lv, hv, dv, w),
      blk + "MultiHeadDotProductAttention_0/out/bias": (lv, w),
      blk + "MlpBlock_0/Dense_0/kernel": (lv, w, m), blk + "MlpBlock_0/Dense_0/bias": (lv, m),
      blk + "MlpBlock_0/Dense_1/kernel": (lv, m, w), blk + "MlpBlock_0/Dense_1/bias": (lv, w),
      "llm/embedder/input_embedding": (g.vocab_size, e),
      "llm/layers/pre_attention_norm/scale": (ll, e),
      "llm/layers/attn/q_einsum/w": (ll, h, e, d),
      "llm/layers/attn/kv_einsum/w": (ll, 2, k, e, d),
      "llm/layers/attn/attn_vec_einsum/w": (ll, h, d, e),
      "llm/layers/pre_ffw_norm/scale": (ll, e),
      "llm/layers/mlp/gating_einsum": (ll, 2, e, f),
      "llm/layers/mlp/linear": (ll, f, e),
      "llm/final_norm/scale": (e,),
  }
  for ln in ("LayerNorm_0", "LayerNorm_1"):
    t[blk + ln + "/scale"] = t[blk + ln + "/bias"] = (lv, w)
  for name in ("query", "key", "value"):
    t[blk + f"MultiHeadDotProductAttention_0/{name}/kernel"] = (lv, w, hv, dv)
    t[blk + f"MultiHeadDotProductAttention_0/{name}/bias"] = (lv, hv, dv)
  return t


def _flat(tree):
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(p.key for p in path): x for path, x in flat}


def test_param_tree_matches_big_vision_layout(tiny):
  _, params, _ = tiny
  got = {k: tuple(x.shape) for k, x in _flat(params).items()}
  assert got == _expected_tree(TINY)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  assert sum(x.size for x in jax.tree.leaves(params)) == count_params(TINY)["total"]


def test_every_param_has_logical_axes():
  boxed = jax.eval_shape(
      lambda: VLA(TINY).init(jax.random.PRNGKey(0), *model_inputs(TINY).values()))
  specs = _flat(nn.get_partition_spec(boxed["params"]))
  shapes = _flat(nn.unbox(boxed["params"]))
  for name, spec in specs.items():
    assert len(spec) == len(shapes[name].shape), name
    if "layers" in name or "encoderblock" in name:
      assert spec[0] == "layers", name
  assert specs["llm/embedder/input_embedding"] == jax.sharding.PartitionSpec("vocab", "embed")
  assert specs["llm/layers/attn/q_einsum/w"] == jax.sharding.PartitionSpec(
      "layers", "heads", "embed", "head_dim")


def test_output_shape_and_dtype(tiny):
  _, params, fwd = tiny
  out = _run(fwd, params, model_inputs(TINY, b=3, n=2, l=5))
  assert out.shape == (3, 5, TINY.llm.vocab_size) and out.dtype == np.float32
  assert np.isfinite(out).all()


def test_bad_input_shapes_name_the_input(tiny):
  model, params, _ = tiny
  x = model_inputs(TINY)
  with pytest.raises(VlaxError, match="images"):
    model.apply({"params": params}, **dict(x, images=x["images"][:, :, :16]))
  with pytest.raises(VlaxError, match="prefix_mask"):
    model.apply({"params": params}, **dict(x, prefix_mask=x["prefix_mask"][:, :3]))


def test_image_mask_hides_missing_camera(tiny):
  _, params, fwd = tiny
  x = model_inputs(TINY)
  x["image_mask"] = jnp.array([[True, False], [True, True]])
  base = _run(fwd, params, x)
  changed = dict(x, images=x["images"].at[:, 1].set(0.5))
  out = _run(fwd, params, changed)
  np.testing.assert_allclose(out[0], base[0], atol=1e-6)  # camera 1 masked in example 0
  assert np.abs(out[1] - base[1]).max() > 1e-3  # ... but seen in example 1
  seen = dict(x, images=x["images"].at[:, 0].set(0.5))
  assert np.abs(_run(fwd, params, seen)[0] - base[0]).max() > 1e-3


def test_missing_camera_and_padding_do_not_shift_positions(tiny):
  _, params, fwd = tiny
  x = model_inputs(TINY, b=1, n=2, l=6)
  x["image_mask"] = jnp.array([[False, True]])
  both = _run(fwd, params, x)
  one = _run(fwd, params, dict(x, images=x["images"][:, 1:], image_mask=x["image_mask"][:, 1:]))
  np.testing.assert_allclose(both, one, atol=1e-5, rtol=1e-5)
  # Right padding with arbitrary token ids leaves the valid positions unchanged.
  padded = dict(
      x, tokens=jnp.concatenate([x["tokens"], jnp.array([[7, 9, 11]])], 1),
      input_mask=jnp.concatenate([x["input_mask"], jnp.zeros((1, 3), bool)], 1),
      prefix_mask=jnp.concatenate([x["prefix_mask"], jnp.zeros((1, 3), bool)], 1))
  np.testing.assert_allclose(_run(fwd, params, padded)[:, :6], both, atol=1e-5, rtol=1e-5)


def test_prefix_is_bidirectional_and_suffix_causal(tiny):
  _, params, fwd = tiny
  x = model_inputs(TINY, b=1, l=8)  # prefix = tokens 0..3, causal = 4..7
  base = _run(fwd, params, x)
  d = lambda a, b: np.abs(a - b).max(axis=-1)[0]  # per position
  # Changing prefix token 3 changes the logits of earlier prefix token 1.
  delta = d(_run(fwd, params, dict(x, tokens=x["tokens"].at[0, 3].add(1))), base)
  assert delta[1] > 1e-4 and delta[0] > 1e-4
  # Changing causal token 6 leaves all earlier positions alone, changes 6 and 7.
  delta = d(_run(fwd, params, dict(x, tokens=x["tokens"].at[0, 6].add(1))), base)
  assert delta[:6].max() < 1e-6 and delta[6] > 1e-4 and delta[7] > 1e-4
  # With no text prefix, everything is causal.
  causal = dict(x, prefix_mask=jnp.zeros_like(x["prefix_mask"]))
  base_c = _run(fwd, params, causal)
  delta = d(_run(fwd, params, dict(causal, tokens=causal["tokens"].at[0, 3].add(1))), base_c)
  assert delta[:3].max() < 1e-6 and delta[3] > 1e-4


def test_bfloat16_compute(tiny):
  _, params, fwd = tiny
  cfg = dataclasses.replace(TINY, dtype="bfloat16")
  x = model_inputs(TINY)
  out = _run(jax.jit(VLA(cfg).apply), params, x)
  ref = _run(fwd, params, x)
  assert out.dtype == np.float32 and np.isfinite(out).all()
  assert np.abs(out - ref).max() < 0.1 * np.abs(ref).max()
  # Params initialised under a bf16 compute config stay float32.
  p16 = jax.eval_shape(lambda: init_params(VLA(cfg), jax.random.PRNGKey(1)))
  assert {x.dtype for x in jax.tree.leaves(p16)} == {jnp.dtype("float32")}


def _loss(model, params, x):
  logits = model.apply({"params": params}, x["images"], x["image_mask"], x["tokens"],
                       x["input_mask"], x["prefix_mask"])
  logp = jax.nn.log_softmax(logits[:, :-1])
  return -jnp.mean(jnp.take_along_axis(logp, x["tokens"][:, 1:, None], -1))


@pytest.mark.slow
def test_remat_gives_same_loss_and_grad(tiny, policy="nothing_saveable"):
  model, params, _ = tiny
  x = model_inputs(TINY)
  ref_l, ref_g = jax.jit(jax.value_and_grad(lambda p: _loss(model, p, x)))(params)
  remat = VLA(dataclasses.replace(TINY, remat=True, remat_policy=policy))
  l, g = jax.jit(jax.value_and_grad(lambda p: _loss(remat, p, x)))(params)
  np.testing.assert_allclose(l, ref_l, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(ref_g)):
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)


def test_config_round_trips_through_json():
  cfg = dataclasses.replace(get_preset("debug"), dtype="bfloat16", remat=True)
  again = VLAConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
  assert again == cfg


@pytest.mark.parametrize("bad,match", [
    ({"llm": {"num_heads": 3, "num_kv_heads": 2}}, "num_kv_heads"),
    ({"vision": {"image_size": 30}}, "patch_size"),
    ({"dtype": "float8"}, "model.dtype"),
    ({"llm": {"widht": 3}}, "widht"),
    ({"bogus": 1}, "bogus"),
])
def test_bad_config_names_the_field(bad, match):
  with pytest.raises(VlaxError, match=match):
    VLAConfig.from_dict(bad)


def test_presets_and_counts():
  with pytest.raises(VlaxError, match="nope"):
    get_preset("nope")
  big = get_preset("paligemma_3b")
  assert count_params(big)["total"] == 2_923_335_408
  # The analytic count agrees with the real (abstract) param tree.
  for name in ("debug", "paligemma_3b"):
    cfg = get_preset(name)
    shapes = jax.eval_shape(lambda: init_params(VLA(cfg), jax.random.PRNGKey(0)))
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes)) == count_params(cfg)["total"]
  assert 2.5e8 < count_params(get_preset("medium"))["total"] < 3.5e8
  flops = forward_flops(big, num_images=1, text_len=48)
  assert flops["total"] == flops["vision"] + flops["llm"]
  assert 1.0e12 < flops["total"] < 2.0e12  # ~2 x 2.9B params x 304 tokens, plus attention
  assert decode_flops(big, 304) > 2 * 2.5e9
