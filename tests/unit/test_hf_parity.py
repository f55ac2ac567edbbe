"""Numerical parity with Hugging Face PaliGemma, and the HF importer's error handling.

Tiny random `PaliGemmaForConditionalGeneration` models (PyTorch CPU, float32) are saved
with `save_pretrained`, imported with vlax, and both are run on the same inputs with a
bidirectional prefix: HF gets image tokens first, then text, with `token_type_ids` 0 on
the prefix and 1 on the suffix (transformers builds its prefix-LM mask from them).
"""

import json
import os
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from safetensors.numpy import load_file, save_file  # pylint: disable=g-import-not-at-top,wrong-import-position

from vlax.checkpoints import big_vision  # pylint: disable=wrong-import-position
from vlax.checkpoints import format as ckpt_format  # pylint: disable=wrong-import-position
from vlax.checkpoints import hf_paligemma  # pylint: disable=wrong-import-position
from vlax.checkpoints.pretrained import import_paligemma, load_pretrained, main_import  # pylint: disable=wrong-import-position
from vlax.errors import VlaxError  # pylint: disable=wrong-import-position

IMAGE, PATCH, VOCAB, IMAGE_TOKEN = 32, 8, 300, 299
NUM_PATCHES = (IMAGE // PATCH) ** 2
B, L, PREFIX = 2, 10, 6


def _hf_config(num_kv_heads):
  return transformers.PaliGemmaConfig(
      vision_config=dict(model_type="siglip_vision_model", hidden_size=32,
                         intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, patch_size=PATCH, image_size=IMAGE,
                         vision_use_head=False),
      text_config=dict(model_type="gemma", vocab_size=VOCAB, hidden_size=64,
                       intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=num_kv_heads, head_dim=16),
      image_token_index=IMAGE_TOKEN, projection_dim=64, vocab_size=VOCAB)


def _make_hf(num_kv_heads, seed=0):
  """A random tiny HF PaliGemma whose logits are O(1) (HF's init makes them ~0)."""
  torch.manual_seed(seed)
  model = transformers.PaliGemmaForConditionalGeneration(_hf_config(num_kv_heads))
  with torch.no_grad():
    for _, p in model.named_parameters():
      if p.ndim == 1:  # norms and biases: non-trivial so a wrong mapping shows
        p.copy_(torch.randn_like(p) * 0.1)
      else:
        fan_in = int(np.prod(p.shape[1:]))
        p.copy_(torch.randn_like(p) * fan_in ** -0.5)
  model.eval()
  model.config._attn_implementation = "eager"  # pylint: disable=protected-access
  return model


@pytest.fixture(scope="module", params=[1, 2], ids=["mqa", "gqa"])
def hf_model(request, tmp_path_factory):
  model = _make_hf(request.param)
  path = str(tmp_path_factory.mktemp(f"hf_kv{request.param}"))
  model.save_pretrained(path)
  return model, path


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  images = rng.uniform(-1, 1, (B, 1, IMAGE, IMAGE, 3)).astype(np.float32)
  tokens = rng.integers(0, IMAGE_TOKEN, (B, L)).astype(np.int32)
  prefix = np.zeros((B, L), bool)
  prefix[:, :PREFIX] = True
  return images, tokens, prefix


def _hf_logits(model, images, tokens, prefix, input_mask=None):
  """HF text-position logits [B, L, V] with the prefix-LM mask from token_type_ids."""
  b = tokens.shape[0]
  if input_mask is None:
    input_mask = np.ones(tokens.shape, bool)
  ids = np.concatenate([np.full((b, NUM_PATCHES), IMAGE_TOKEN), tokens], axis=1)
  token_type = np.concatenate([np.zeros((b, NUM_PATCHES)), ~prefix], axis=1)
  attention = np.concatenate([np.ones((b, NUM_PATCHES)), input_mask], axis=1)
  ids = torch.tensor(ids, dtype=torch.long)
  with torch.no_grad():
    # `labels` only adds a loss in transformers 5.x; 4.x needs it to apply the
    # token_type_ids prefix-LM mask (test_hf_applies_prefix_lm_attention guards this).
    out = model(input_ids=ids, labels=ids,
                pixel_values=torch.tensor(images[:, 0].transpose(0, 3, 1, 2)),
                token_type_ids=torch.tensor(token_type, dtype=torch.long),
                attention_mask=torch.tensor(attention, dtype=torch.long))
  return out.logits[:, NUM_PATCHES:].numpy()


def _rel(a, b):
  return float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))


def test_config_mapping(hf_model):
  model, path = hf_model
  config = hf_paligemma.read_config(path)
  t = model.config.text_config
  assert config.llm.num_kv_heads == t.num_key_value_heads
  assert (config.llm.num_heads, config.llm.head_dim, config.llm.width) == (4, 16, 64)
  assert (config.llm.vocab_size, config.llm.depth, config.llm.mlp_dim) == (VOCAB, 2, 96)
  assert (config.vision.image_size, config.vision.patch_size) == (IMAGE, PATCH)
  assert (config.vision.width, config.vision.depth, config.vision.mlp_dim,
          config.vision.num_heads) == (32, 2, 48, 4)


def test_hf_applies_prefix_lm_attention(hf_model):
  """Guards the reference: HF must really attend bidirectionally within the prefix."""
  model, _ = hf_model
  images, tokens, prefix = _inputs()
  ref = _hf_logits(model, images, tokens, prefix)
  changed = tokens.copy()
  changed[:, PREFIX - 1] = (changed[:, PREFIX - 1] + 1) % IMAGE_TOKEN  # last prefix token
  out = _hf_logits(model, images, changed, prefix)
  assert np.abs(out[:, 0] - ref[:, 0]).max() > 1e-3  # earlier prefix position sees it
  changed = tokens.copy()
  changed[:, -1] = (changed[:, -1] + 1) % IMAGE_TOKEN  # last suffix token
  out = _hf_logits(model, images, changed, prefix)
  np.testing.assert_allclose(out[:, :-1], ref[:, :-1], atol=1e-6)  # suffix is causal


def test_logits_match_hf(hf_model):
  model, path = hf_model
  images, tokens, prefix = _inputs()
  ref = _hf_logits(model, images, tokens, prefix)
  ours = np.asarray(load_pretrained(path).logits(images, tokens, prefix))
  assert ours.shape == (B, L, VOCAB) and ours.dtype == np.float32
  assert np.abs(ref).max() > 1.0  # non-trivial logits
  assert _rel(ours, ref) < 1e-3


def test_logits_match_hf_right_padded(hf_model):
  model, path = hf_model
  images, tokens, prefix = _inputs(seed=1)
  input_mask = np.ones((B, L), bool)
  input_mask[1, 7:] = False  # second example is 3 tokens shorter
  ref = _hf_logits(model, images, tokens, prefix, input_mask)
  ours = np.asarray(load_pretrained(path).logits(images, tokens, prefix,
                                                 input_mask=input_mask))
  assert _rel(ours[input_mask], ref[input_mask]) < 1e-3


def test_import_save_load_round_trip(hf_model, tmp_path):
  _, path = hf_model
  images, tokens, prefix = _inputs()
  direct = load_pretrained(path)
  step = import_paligemma(path, str(tmp_path / "ckpt"))
  assert step == 0
  for p in (tmp_path / "ckpt", tmp_path / "ckpt" / "0"):
    loaded = load_pretrained(str(p))
    assert loaded.config == direct.config
    assert loaded.metadata["source"]["kind"] == "hf"
    np.testing.assert_array_equal(np.asarray(loaded.logits(images, tokens, prefix)),
                                  np.asarray(direct.logits(images, tokens, prefix)))
  with pytest.raises(VlaxError, match="step 0"):
    import_paligemma(path, str(tmp_path / "ckpt"))


def test_main_import_prints_summary(hf_model, tmp_path, capsys):
  _, path = hf_model
  main_import(path, str(tmp_path / "out"))
  line = capsys.readouterr().out.strip()
  assert "\n" not in line and "imported hf PaliGemma" in line
  assert ckpt_format.latest_step(str(tmp_path / "out")) == 0


def _flat(path):
  return big_vision.flatten(hf_paligemma.load_hf_paligemma(path)[1])


def test_sharded_and_legacy_names_load_identically(tmp_path):
  model = _make_hf(1)
  model.save_pretrained(tmp_path / "single")
  model.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
  assert os.path.exists(tmp_path / "sharded" / "model.safetensors.index.json")
  reference = _flat(str(tmp_path / "single"))
  sharded = _flat(str(tmp_path / "sharded"))
  # transformers 5.x in-memory names (model.language_model..., model.vision_tower...),
  # plus an explicit lm_head, and 4.x release names (vision_tower.vision_model...).
  tensors = {k: v.numpy() for k, v in model.state_dict().items()}
  renamed = tmp_path / "v5names"
  shutil.copytree(tmp_path / "single", renamed)
  save_file(tensors, str(renamed / "model.safetensors"))
  v5 = _flat(str(renamed))
  legacy = {k.replace("vision_tower.", "vision_tower.vision_model."): v
            for k, v in load_file(str(tmp_path / "single" / "model.safetensors")).items()}
  save_file(legacy, str(renamed / "model.safetensors"))
  v4 = _flat(str(renamed))
  for other in (sharded, v5, v4):
    assert other.keys() == reference.keys()
    for k in reference:
      np.testing.assert_array_equal(other[k], reference[k])


def test_bfloat16_weights_load(tmp_path):
  model = _make_hf(1)
  model.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
  flat = _flat(str(tmp_path / "bf16"))
  emb = model.model.language_model.embed_tokens.weight.detach().float().numpy()
  np.testing.assert_array_equal(flat["llm/embedder/input_embedding"], emb)
  assert all(x.dtype == np.float32 for x in flat.values())


@pytest.fixture()
def saved_dir(tmp_path):
  path = tmp_path / "hf"
  _make_hf(1).save_pretrained(path)
  return path


def _edit_config(path, fn):
  cfg = json.loads((path / "config.json").read_text())
  fn(cfg)
  (path / "config.json").write_text(json.dumps(cfg))


def test_error_bad_path(tmp_path):
  with pytest.raises(VlaxError, match="nope"):
    hf_paligemma.load_hf_paligemma(str(tmp_path / "nope"))
  with pytest.raises(VlaxError, match="nope"):
    load_pretrained(str(tmp_path / "nope"))


def test_error_not_paligemma(saved_dir):
  _edit_config(saved_dir, lambda c: c.update(model_type="llava"))
  with pytest.raises(VlaxError, match=r"config\.json.*'llava'"):
    load_pretrained(str(saved_dir))


def test_error_paligemma2(saved_dir):
  _edit_config(saved_dir, lambda c: c["text_config"].update(model_type="gemma2"))
  with pytest.raises(VlaxError, match="PaliGemma 2"):
    hf_paligemma.load_hf_paligemma(str(saved_dir))


def test_error_missing_tensor(saved_dir):
  file = str(saved_dir / "model.safetensors")
  tensors = load_file(file)
  name = "language_model.model.layers.1.mlp.up_proj.weight"
  del tensors[name]
  save_file(tensors, file)
  with pytest.raises(VlaxError, match=r"missing tensor .*layers\.1\.mlp\.up_proj\.weight"):
    hf_paligemma.load_hf_paligemma(str(saved_dir))


def test_error_shape_mismatch(saved_dir):
  _edit_config(saved_dir, lambda c: c["text_config"].update(intermediate_size=128))
  with pytest.raises(VlaxError) as e:
    hf_paligemma.load_hf_paligemma(str(saved_dir))
  msg = str(e.value)
  assert "model.safetensors" in msg and "gate_proj.weight" in msg
  assert "[96, 64]" in msg and "[128, 64]" in msg and "\n" not in msg


def test_release_style_config(tmp_path):
  """google/paligemma-3b-pt-224's config.json (transformers 4.x, sparse sub-configs)."""
  (tmp_path / "config.json").write_text(json.dumps({
      "architectures": ["PaliGemmaForConditionalGeneration"], "model_type": "paligemma",
      "hidden_size": 2048, "image_token_index": 257152, "projection_dim": 2048,
      "vocab_size": 257216,
      "text_config": {"hidden_size": 2048, "intermediate_size": 16384,
                      "model_type": "gemma", "num_attention_heads": 8,
                      "num_hidden_layers": 18, "num_image_tokens": 256,
                      "num_key_value_heads": 1, "torch_dtype": "float32",
                      "vocab_size": 257216},
      "vision_config": {"hidden_size": 1152, "intermediate_size": 4304,
                        "model_type": "siglip_vision_model", "num_attention_heads": 16,
                        "num_hidden_layers": 27, "num_image_tokens": 256,
                        "patch_size": 14, "projection_dim": 2048,
                        "projector_hidden_act": "gelu_fast", "vision_use_head": False},
  }))
  config = hf_paligemma.read_config(str(tmp_path))
  v, g = config.vision, config.llm
  assert (v.image_size, v.patch_size, v.width, v.depth, v.mlp_dim, v.num_heads) == (
      224, 14, 1152, 27, 4304, 16)
  assert (g.vocab_size, g.width, g.depth, g.mlp_dim, g.num_heads, g.num_kv_heads,
          g.head_dim, g.rms_norm_eps, g.rope_theta) == (
              257216, 2048, 18, 16384, 8, 1, 256, 1e-6, 10000.0)
