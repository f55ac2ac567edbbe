"""Reads a Hugging Face `PaliGemmaForConditionalGeneration` directory (no torch needed).

Input: `config.json` plus `model.safetensors`, or shards listed in
`model.safetensors.index.json`. Output: (VLAConfig, params) in vlax's tree, which is
big_vision's PaliGemma layout (see vlax.checkpoints.big_vision). Per-layer tensors are
stacked along a leading depth axis (L) and every tensor becomes float32.

Tensor names differ between transformers versions; all of these prefixes are accepted:
  vision:    vision_tower.vision_model.  (4.x)   vision_tower.  /  model.vision_tower.
             [vision_model.]  (5.x)
  text:      language_model.model.  (4.x)        model.language_model.  (5.x)
  projector: multi_modal_projector.              model.multi_modal_projector.
  lm_head:   lm_head. / language_model.lm_head.  (tied; only checked if present)

Mapping (HF torch Linear weights are [out, in]; H heads, D/Dh head dims):
  embeddings.patch_embedding.weight [W,3,P,P]  -> img/embedding/kernel [P,P,3,W]
  embeddings.patch_embedding.bias              -> img/embedding/bias
  embeddings.position_embedding.weight [N,W]   -> img/pos_embedding [1,N,W]
  encoder.layers.i.layer_norm1/2.{weight,bias} -> encoderblock/LayerNorm_0/1/{scale,bias}
  encoder.layers.i.self_attn.{q,k,v}_proj.weight [W,W] -> {query,key,value}/kernel [W,H,D]
  encoder.layers.i.self_attn.{q,k,v}_proj.bias [W]     -> {query,key,value}/bias [H,D]
  encoder.layers.i.self_attn.out_proj.weight [W,W]     -> out/kernel [H,D,W]; bias [W]
  encoder.layers.i.mlp.fc1/fc2.{weight,bias}   -> MlpBlock_0/Dense_0/1/{kernel (.T), bias}
  post_layernorm.{weight,bias}                 -> img/Transformer/encoder_norm/{scale,bias}
  multi_modal_projector.linear.{weight,bias}   -> img/head/{kernel (.T) [W,E], bias}
  embed_tokens.weight [V,E]                    -> llm/embedder/input_embedding
  layers.i.input_layernorm.weight              -> llm/layers/pre_attention_norm/scale
  layers.i.self_attn.q_proj.weight [H*Dh,E]    -> attn/q_einsum/w [H,E,Dh]
  layers.i.self_attn.{k,v}_proj.weight [K*Dh,E] -> attn/kv_einsum/w [2,K,E,Dh]
  layers.i.self_attn.o_proj.weight [E,H*Dh]    -> attn/attn_vec_einsum/w [H,Dh,E]
  layers.i.post_attention_layernorm.weight     -> llm/layers/pre_ffw_norm/scale
  layers.i.mlp.{gate,up}_proj.weight [F,E]     -> mlp/gating_einsum [2,E,F]
  layers.i.mlp.down_proj.weight [E,F]          -> mlp/linear [F,E]
  norm.weight                                  -> llm/final_norm/scale
HF's Gemma RMSNorm computes x * (1 + weight), as big_vision does, so norms copy as is;
HF's rotate_half RoPE splits head dims in halves like big_vision, so q/k need no
permutation. HF counts positions from 1 and big_vision from 0; RoPE only sees
differences, so logits agree.
"""

from __future__ import annotations

import json
import os
import re
import struct
from typing import Any

import ml_dtypes
import numpy as np
from safetensors import safe_open

from vlax.checkpoints import big_vision
from vlax.errors import VlaxError
from vlax.models.config import GemmaConfig, SigLIPConfig, VLAConfig

# Defaults of transformers' SiglipVisionConfig / GemmaConfig, used for keys a config.json
# omits (transformers fills them the same way when it builds the sub-configs).
_SIGLIP_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                        num_attention_heads=12, patch_size=16, image_size=224,
                        layer_norm_eps=1e-6)
_GEMMA_DEFAULTS = dict(vocab_size=256000, hidden_size=3072, intermediate_size=24576,
                       num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=16, head_dim=256, rms_norm_eps=1e-6,
                       rope_theta=10000.0)
# What PaliGemmaConfig uses when a sub-config is absent altogether.
_PALIGEMMA_VISION = dict(hidden_size=1152, intermediate_size=4096, num_hidden_layers=27,
                         num_attention_heads=16, patch_size=14, image_size=224)
_PALIGEMMA_TEXT = dict(hidden_size=2048, num_hidden_layers=18, intermediate_size=16384,
                       num_attention_heads=8, num_key_value_heads=1, vocab_size=257152)

_PREFIXES = (  # first match wins
    (re.compile(r"^(language_model\.)?lm_head\."), "lm_head."),
    (re.compile(r"^(model\.)?vision_tower\.(vision_model\.)?"), "vision."),
    (re.compile(r"^(language_model\.model\.|model\.language_model\.(model\.)?|"
                r"language_model\.)"), "text."),
    (re.compile(r"^(model\.)?multi_modal_projector\."), "proj."),
)

# How a missing tensor is named in errors (the transformers 4.x / release spelling).
_HF_NAMES = {"vision": "vision_tower.vision_model.", "text": "language_model.model.",
             "proj": "multi_modal_projector.", "lm_head": "lm_head."}


def is_hf_dir(path: str) -> bool:
  return os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json"))


def _read_json(path: str) -> dict[str, Any]:
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    raise VlaxError(f"file not found: {path}") from None
  except (OSError, ValueError) as e:
    raise VlaxError(f"cannot read {path} as JSON: {e}") from None


def _positive(section: dict[str, Any], key: str, where: str, kind: type):
  """section[key] as a positive int / float; VlaxError naming the key otherwise (a
  config.json with "hidden_size": "big" or 1152.5 is bad input, not a traceback)."""
  v = section.get(key)
  ok = isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
  if ok and kind is int:
    ok = float(v).is_integer()
  if not ok:
    what = "a positive integer" if kind is int else "a positive number"
    raise VlaxError(f"{where}.{key} must be {what}, got {v!r}")
  return kind(v)


def read_config(path: str):
  """The VLAConfig of a HF PaliGemma directory's config.json."""
  cfg_path = os.path.join(path, "config.json")
  cfg = _read_json(cfg_path)
  if not isinstance(cfg, dict):
    raise VlaxError(f"{cfg_path}: expected a JSON object, got {type(cfg).__name__}")
  model_type = cfg.get("model_type")
  if model_type != "paligemma":
    raise VlaxError(f"{cfg_path}: model_type is {model_type!r}, expected 'paligemma' "
                    "(a PaliGemmaForConditionalGeneration checkpoint)")
  text = cfg.get("text_config")
  vision = cfg.get("vision_config")
  for key, section in (("text_config", text), ("vision_config", vision)):
    if section is not None and not isinstance(section, dict):
      raise VlaxError(f"{cfg_path}: {key} must be an object, got {type(section).__name__}")
  text = {**_GEMMA_DEFAULTS, **(_PALIGEMMA_TEXT if text is None else {}), **(text or {})}
  vision = {**_SIGLIP_DEFAULTS, **(_PALIGEMMA_VISION if vision is None else {}),
            **(vision or {})}
  text_type = text.get("model_type", "gemma")
  if text_type != "gemma":
    hint = (" (PaliGemma 2 / Gemma 2-3 backbones are not supported)"
            if str(text_type).startswith("gemma") else "")
    raise VlaxError(f"{cfg_path}: text_config.model_type is {text_type!r}, only 'gemma' "
                    f"(PaliGemma 1) is supported{hint}")
  vision_type = vision.get("model_type", "siglip_vision_model")
  if vision_type != "siglip_vision_model":
    raise VlaxError(f"{cfg_path}: vision_config.model_type is {vision_type!r}, expected "
                    "'siglip_vision_model'")
  rope = text.get("rope_parameters") or text.get("rope_scaling") or {}
  if not isinstance(rope, dict):
    key = "rope_parameters" if text.get("rope_parameters") else "rope_scaling"
    raise VlaxError(f"{cfg_path}: text_config.{key} must be an object or null, got "
                    f"{rope!r}")
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  if rope_type != "default":
    raise VlaxError(f"{cfg_path}: text_config rope type {rope_type!r} is not supported")
  rope_theta = rope.get("rope_theta", text.get("rope_theta", 10000.0))
  if text.get("hidden_activation", text.get("hidden_act")) not in (
      None, "gelu", "gelu_pytorch_tanh"):
    raise VlaxError(f"{cfg_path}: text_config activation "
                    f"{text.get('hidden_activation', text.get('hidden_act'))!r} is not "
                    "supported (Gemma uses tanh-approximate gelu)")
  vi = lambda k: _positive(vision, k, f"{cfg_path}: vision_config", int)  # pylint: disable=unnecessary-lambda-assignment
  ti = lambda k: _positive(text, k, f"{cfg_path}: text_config", int)  # pylint: disable=unnecessary-lambda-assignment
  projection_dim = _positive({"projection_dim": cfg.get(
      "projection_dim", vision.get("projection_dim", 2048))}, "projection_dim", cfg_path, int)
  if projection_dim != ti("hidden_size"):
    raise VlaxError(f"{cfg_path}: projection_dim {projection_dim} differs from "
                    f"text_config.hidden_size {text['hidden_size']}")
  head_dim = (ti("head_dim") if text.get("head_dim") is not None
              else ti("hidden_size") // ti("num_attention_heads"))
  try:
    return VLAConfig(
        vision=SigLIPConfig(
            image_size=vi("image_size"), patch_size=vi("patch_size"),
            width=vi("hidden_size"), depth=vi("num_hidden_layers"),
            mlp_dim=vi("intermediate_size"), num_heads=vi("num_attention_heads"),
            layer_norm_eps=_positive(vision, "layer_norm_eps",
                                     f"{cfg_path}: vision_config", float)),
        llm=GemmaConfig(
            vocab_size=ti("vocab_size"), width=ti("hidden_size"),
            depth=ti("num_hidden_layers"), mlp_dim=ti("intermediate_size"),
            num_heads=ti("num_attention_heads"),
            num_kv_heads=(ti("num_key_value_heads") if text.get("num_key_value_heads")
                          else ti("num_attention_heads")),
            head_dim=head_dim,
            rms_norm_eps=_positive(text, "rms_norm_eps", f"{cfg_path}: text_config", float),
            rope_theta=_positive({"rope_theta": rope_theta}, "rope_theta",
                                 f"{cfg_path}: text_config", float)))
  except VlaxError as e:  # the config classes' own checks do not name the file
    msg = str(e)
    raise VlaxError(msg if msg.startswith(cfg_path) else f"{cfg_path}: {msg}") from None


class _Tensors:
  """Lazy access to the safetensors of a HF directory by canonical name."""

  def __init__(self, path: str):
    index = os.path.join(path, "model.safetensors.index.json")
    single = os.path.join(path, "model.safetensors")
    if os.path.isfile(index):
      weight_map = _read_json(index).get("weight_map")
      if not isinstance(weight_map, dict):
        raise VlaxError(f"{index} has no 'weight_map'")
      files = {k: os.path.join(path, v) for k, v in weight_map.items()}
    elif os.path.isfile(single):
      files = {k: single for k in self._keys(single)}
    else:
      raise VlaxError(f"{path} has neither model.safetensors nor "
                      "model.safetensors.index.json")
    for f in sorted(set(files.values())):
      if not os.path.isfile(f):
        raise VlaxError(f"safetensors shard not found: {f}")
    self.files: dict[str, tuple[str, str]] = {}  # canonical -> (file, hf name)
    for name, f in files.items():
      for rx, canon in _PREFIXES:
        if rx.match(name):
          self.files[rx.sub(canon, name, count=1)] = (f, name)
          break
    self._handles: dict[str, Any] = {}

  @staticmethod
  def _keys(file: str) -> list[str]:
    try:
      with safe_open(file, framework="np") as f:
        return list(f.keys())
    except Exception as e:  # pylint: disable=broad-except
      raise VlaxError(f"cannot read safetensors file {file}: {e}") from None

  def has(self, canon: str) -> bool:
    return canon in self.files

  def get(self, canon: str, shape: tuple[int, ...]) -> np.ndarray:
    """Tensor `canon` as float32, checking its HF shape."""
    if canon not in self.files:
      head, rest = canon.split(".", 1)
      hf = _HF_NAMES.get(head, head + ".") + rest
      raise VlaxError(f"missing tensor {hf} (expected shape {list(shape)}) in the "
                      "safetensors files")
    file, name = self.files[canon]
    x = self._read(file, name)
    if tuple(x.shape) != tuple(shape):
      raise VlaxError(f"{file}: tensor {name} has shape {list(x.shape)}, expected "
                      f"{list(shape)} from config.json")
    return x

  def _read(self, file: str, name: str) -> np.ndarray:
    try:
      if file not in self._handles:
        self._handles[file] = safe_open(file, framework="np")
      handle = self._handles[file]
      if handle.get_slice(name).get_dtype() == "BF16":
        return _read_bf16(file, name)
      return np.asarray(handle.get_tensor(name), dtype=np.float32)
    except VlaxError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      raise VlaxError(f"cannot read tensor {name} from {file}: {e}") from None


def _read_bf16(file: str, name: str) -> np.ndarray:
  """numpy has no bfloat16: read the raw bytes through the safetensors header."""
  with open(file, "rb") as f:
    (n,) = struct.unpack("<Q", f.read(8))
    info = json.loads(f.read(n))[name]
    start, end = info["data_offsets"]
    f.seek(8 + n + start)
    raw = f.read(end - start)
  return np.frombuffer(raw, dtype=ml_dtypes.bfloat16).reshape(
      info["shape"]).astype(np.float32)


def load_hf_paligemma(path: str) -> tuple[Any, dict[str, Any]]:
  """Reads a HF PaliGemma directory into (VLAConfig, nested float32 params)."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise VlaxError(f"HF checkpoint directory not found: {path}")
  if not os.path.isdir(path):
    raise VlaxError(f"HF checkpoint path is not a directory: {path}")
  config = read_config(path)
  t = _Tensors(path)
  v, g = config.vision, config.llm
  w, h, m, p = v.width, v.num_heads, v.mlp_dim, v.patch_size
  d = w // h
  n = (v.image_size // p) ** 2
  e, nh, k, dh, f = g.width, g.num_heads, g.num_kv_heads, g.head_dim, g.mlp_dim

  def vis(i, name, shape):
    return t.get(f"vision.encoder.layers.{i}.{name}", shape)

  def txt(i, name, shape):
    return t.get(f"text.layers.{i}.{name}", shape)

  def stack(fn, depth):
    return np.stack([fn(i) for i in range(depth)])

  enc = "img/Transformer/encoderblock"
  att = enc + "/MultiHeadDotProductAttention_0"
  flat = {
      "img/embedding/kernel": t.get("vision.embeddings.patch_embedding.weight",
                                    (w, 3, p, p)).transpose(2, 3, 1, 0),
      "img/embedding/bias": t.get("vision.embeddings.patch_embedding.bias", (w,)),
      "img/pos_embedding": t.get("vision.embeddings.position_embedding.weight",
                                 (n, w))[None],
      "img/Transformer/encoder_norm/scale": t.get("vision.post_layernorm.weight", (w,)),
      "img/Transformer/encoder_norm/bias": t.get("vision.post_layernorm.bias", (w,)),
      "img/head/kernel": t.get("proj.linear.weight", (e, w)).T,
      "img/head/bias": t.get("proj.linear.bias", (e,)),
  }
  for j in (0, 1):
    for ours, theirs in (("scale", "weight"), ("bias", "bias")):
      flat[f"{enc}/LayerNorm_{j}/{ours}"] = stack(
          lambda i: vis(i, f"layer_norm{j + 1}.{theirs}", (w,)), v.depth)
  for ours, theirs in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
    flat[f"{att}/{ours}/kernel"] = stack(
        lambda i: vis(i, f"self_attn.{theirs}.weight", (w, w)).T.reshape(w, h, d),
        v.depth)
    flat[f"{att}/{ours}/bias"] = stack(
        lambda i: vis(i, f"self_attn.{theirs}.bias", (w,)).reshape(h, d), v.depth)
  flat[f"{att}/out/kernel"] = stack(
      lambda i: vis(i, "self_attn.out_proj.weight", (w, w)).T.reshape(h, d, w), v.depth)
  flat[f"{att}/out/bias"] = stack(
      lambda i: vis(i, "self_attn.out_proj.bias", (w,)), v.depth)
  for j, (fan_in, fan_out) in enumerate(((w, m), (m, w))):
    flat[f"{enc}/MlpBlock_0/Dense_{j}/kernel"] = stack(
        lambda i: vis(i, f"mlp.fc{j + 1}.weight", (fan_out, fan_in)).T, v.depth)
    flat[f"{enc}/MlpBlock_0/Dense_{j}/bias"] = stack(
        lambda i: vis(i, f"mlp.fc{j + 1}.bias", (fan_out,)), v.depth)

  emb = t.get("text.embed_tokens.weight", (g.vocab_size, e))
  flat["llm/embedder/input_embedding"] = emb
  flat["llm/final_norm/scale"] = t.get("text.norm.weight", (e,))
  lay = "llm/layers"
  flat[f"{lay}/pre_attention_norm/scale"] = stack(
      lambda i: txt(i, "input_layernorm.weight", (e,)), g.depth)
  flat[f"{lay}/pre_ffw_norm/scale"] = stack(
      lambda i: txt(i, "post_attention_layernorm.weight", (e,)), g.depth)
  flat[f"{lay}/attn/q_einsum/w"] = stack(
      lambda i: txt(i, "self_attn.q_proj.weight", (nh * dh, e)).reshape(
          nh, dh, e).transpose(0, 2, 1), g.depth)
  flat[f"{lay}/attn/kv_einsum/w"] = stack(
      lambda i: np.stack([
          txt(i, f"self_attn.{kv}_proj.weight", (k * dh, e)).reshape(
              k, dh, e).transpose(0, 2, 1) for kv in ("k", "v")]), g.depth)
  flat[f"{lay}/attn/attn_vec_einsum/w"] = stack(
      lambda i: txt(i, "self_attn.o_proj.weight", (e, nh * dh)).T.reshape(nh, dh, e),
      g.depth)
  flat[f"{lay}/mlp/gating_einsum"] = stack(
      lambda i: np.stack([txt(i, "mlp.gate_proj.weight", (f, e)).T,
                          txt(i, "mlp.up_proj.weight", (f, e)).T]), g.depth)
  flat[f"{lay}/mlp/linear"] = stack(
      lambda i: txt(i, "mlp.down_proj.weight", (e, f)).T, g.depth)

  if t.has("lm_head.weight"):
    head = t.get("lm_head.weight", (g.vocab_size, e))
    if not np.array_equal(head, emb):
      raise VlaxError(f"{t.files['lm_head.weight'][0]}: tensor "
                      f"{t.files['lm_head.weight'][1]} differs from the input embedding;"
                      " untied output embeddings are not supported")
  flat = {k_: np.ascontiguousarray(x, dtype=np.float32) for k_, x in flat.items()}
  big_vision.check_shapes(flat, config, path)
  return config, big_vision.unflatten(flat)
