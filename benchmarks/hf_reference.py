"""vlax next to the PyTorch reference (HF transformers PaliGemma) on identical weights.

  python benchmarks/hf_reference.py [--preset debug|medium|tiny] [--batch_size B]
      [--prompt_len L] [--target_len T] [--decode_tokens N] [--quick] [--json OUT]

A random HF `PaliGemmaForConditionalGeneration` is built from the vlax config
(`hf_config_from_vla`), saved with `save_pretrained` and imported into vlax with the
HF importer, so both frameworks run the very same float32 weights on CPU, in the same
process, with torch given as many threads as XLA's CPU backend uses (all usable cores).

(a) training step: forward + backward + AdamW update on B examples of
    [image tokens | L prompt tokens (bidirectional prefix) | T target tokens (causal)],
    mean cross-entropy on the targets. torch: `torch.optim.AdamW` (fused when available)
    and `logits_to_keep` so HF computes logits only for the text positions; vlax: a
    jitted step with
    `optax.adamw` and donated buffers. Same lr / betas / eps / weight decay.
(b) greedy generation of N action tokens after image + prompt: HF
    `generate(do_sample=False, max_new_tokens=N)` (KV cache, HF's default) vs.
    `vlax.models.decoding.greedy_decode` (KV cache). The generated tokens are compared.

HF runs with both its attention implementations, "sdpa" (its default) and "eager"; the
faster one is the reference (the peer at its best). vlax and HF calls alternate
(round-robin) so that load from other processes hits both alike.

Ratios (higher is better): `train_step_vs_hf` = hf seconds / vlax seconds and
`decode_vs_hf` = hf seconds / vlax seconds (medians after warm-up).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position

LR, B1, B2, EPS, WD = 1e-4, 0.9, 0.999, 1e-8, 0.01


def hf_config_from_vla(config, image_token_index: int | None = None):
  """A transformers PaliGemmaConfig with exactly the architecture of a vlax VLAConfig.

  The image placeholder id defaults to vocab_size (out of the vocabulary: HF embeds it as
  0 and replaces it by the image features), so the text vocabulary is the same as vlax's
  and generation can never emit it.
  """
  import transformers  # pylint: disable=g-import-not-at-top
  v, g = config.vision, config.llm
  if v.width % v.num_heads:
    raise ValueError(f"vision width {v.width} is not divisible by num_heads {v.num_heads}")
  image_token_index = g.vocab_size if image_token_index is None else image_token_index
  return transformers.PaliGemmaConfig(
      vision_config=dict(
          model_type="siglip_vision_model", hidden_size=v.width,
          intermediate_size=v.mlp_dim, num_hidden_layers=v.depth,
          num_attention_heads=v.num_heads, patch_size=v.patch_size,
          image_size=v.image_size, layer_norm_eps=v.layer_norm_eps,
          hidden_act="gelu_pytorch_tanh", vision_use_head=False),
      text_config=dict(
          model_type="gemma", vocab_size=g.vocab_size, hidden_size=g.width,
          intermediate_size=g.mlp_dim, num_hidden_layers=g.depth,
          num_attention_heads=g.num_heads, num_key_value_heads=g.num_kv_heads,
          head_dim=g.head_dim, rms_norm_eps=g.rms_norm_eps,
          rope_parameters=dict(rope_type="default", rope_theta=g.rope_theta),
          hidden_act="gelu_pytorch_tanh", eos_token_id=None, pad_token_id=0,
          max_position_embeddings=8192),
      image_token_index=image_token_index, projection_dim=g.width, hidden_size=g.width,
      vocab_size=g.vocab_size)


def build_pair(config, workdir: str, seed: int = 0):
  """(hf_model, vlax_config, vlax_params) sharing one set of random float32 weights.

  Weights are N(0, fan_in^-1/2) (vectors N(0, 0.1)) so that logits are O(1) and greedy
  decoding is not a tie-break contest (HF's own init gives near-zero logits).
  """
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from vlax.checkpoints import hf_paligemma  # pylint: disable=g-import-not-at-top
  torch.manual_seed(seed)
  model = transformers.PaliGemmaForConditionalGeneration(hf_config_from_vla(config))
  with torch.no_grad():
    for _, p in model.named_parameters():
      if p.ndim == 1:
        p.copy_(torch.randn_like(p) * 0.1)
      else:
        p.copy_(torch.randn_like(p) * int(np.prod(p.shape[1:])) ** -0.5)
  model.generation_config.eos_token_id = None
  model.generation_config.pad_token_id = 0
  path = os.path.join(workdir, "hf")
  model.save_pretrained(path)
  vconfig, params = hf_paligemma.load_hf_paligemma(path)
  if (vconfig.vision, vconfig.llm) != (config.vision, config.llm):
    raise RuntimeError(f"round trip changed the config: {vconfig} != {config}")
  vconfig = dataclasses.replace(config, vision=vconfig.vision, llm=vconfig.llm)
  return model, vconfig, params


def make_inputs(config, batch: int, prompt_len: int, target_len: int, seed: int = 0):
  """One camera per example; tokens avoid 0 (pad) so both sides see the same ids."""
  rng = np.random.default_rng(seed)
  s = config.vision.image_size
  length = prompt_len + target_len
  pos = np.arange(length)[None]
  ones = np.ones((batch, length), bool)
  return {
      "images": rng.uniform(-1, 1, (batch, 1, s, s, 3)).astype(np.float32),
      "image_mask": np.ones((batch, 1), bool),
      "tokens": rng.integers(1, config.llm.vocab_size, (batch, length)).astype(np.int32),
      "input_mask": ones,
      "prefix_mask": ones & (pos < prompt_len),
      "loss_mask": ones & (pos >= prompt_len),
  }


def _hf_inputs(config, x: dict[str, np.ndarray], image_token: int) -> dict[str, Any]:
  """HF kwargs: [P image placeholders | text], token_type_ids 0 = prefix, 1 = suffix."""
  import torch  # pylint: disable=g-import-not-at-top
  b = x["tokens"].shape[0]
  p = config.vision.num_patches
  ids = np.concatenate([np.full((b, p), image_token), x["tokens"]], axis=1)
  ttype = np.concatenate([np.zeros((b, p)), ~x["prefix_mask"]], axis=1)
  attn = np.concatenate([np.ones((b, p)), x["input_mask"]], axis=1)
  return {"input_ids": torch.tensor(ids, dtype=torch.long),
          "pixel_values": torch.tensor(x["images"][:, 0].transpose(0, 3, 1, 2).copy()),
          "token_type_ids": torch.tensor(ttype, dtype=torch.long),
          "attention_mask": torch.tensor(attn, dtype=torch.long)}


# ---------------------------------------------------------------------------------------
# (a) training step


def vlax_train_step(config):
  """(jitted step(params, opt_state, batch) -> (params, opt_state, loss), init_opt)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from vlax.models.vla import VLA  # pylint: disable=g-import-not-at-top
  model = VLA(config)
  tx = optax.adamw(LR, b1=B1, b2=B2, eps=EPS, weight_decay=WD)

  def loss_fn(params, batch):
    logits = model.apply({"params": params}, batch["images"], batch["image_mask"],
                         batch["tokens"], batch["input_mask"], batch["prefix_mask"])
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, batch["tokens"][:, 1:, None], axis=-1)[..., 0]
    w = batch["loss_mask"][:, 1:].astype(jnp.float32)
    return jnp.sum(nll * w) / jnp.maximum(jnp.sum(w), 1.0)

  def step(params, opt_state, batch):
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return jax.jit(step, donate_argnums=(0, 1)), tx.init


def hf_train_step(model, config, x: dict[str, np.ndarray]):
  """A closure running one torch forward + backward + AdamW step; returns the loss."""
  import torch  # pylint: disable=g-import-not-at-top
  kw = _hf_inputs(config, x, model.config.image_token_index)
  length = x["tokens"].shape[1]
  targets = torch.tensor(x["tokens"][:, 1:], dtype=torch.long)
  weight = torch.tensor(x["loss_mask"][:, 1:], dtype=torch.float32)
  opt_kw = dict(lr=LR, betas=(B1, B2), eps=EPS, weight_decay=WD)
  try:
    opt = torch.optim.AdamW(model.parameters(), fused=True, **opt_kw)
    fused = True
  except (RuntimeError, TypeError, ValueError):
    opt = torch.optim.AdamW(model.parameters(), foreach=True, **opt_kw)
    fused = False
  model.train()

  def step():
    opt.zero_grad(set_to_none=True)
    logits = model(**kw, logits_to_keep=length).logits  # text positions only
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    nll = -torch.gather(logp, -1, targets[..., None])[..., 0]
    loss = (nll * weight).sum() / weight.sum().clamp(min=1.0)
    loss.backward()
    opt.step()
    return float(loss.detach())

  return step, fused


def bench_train(config, hf_model, params, x, warmup: int, repeats: int,
                hf_attn: tuple[str, ...] = ("sdpa", "eager")) -> dict[str, Any]:
  """vlax and HF steps timed round-robin; HF once per attention implementation."""
  import jax  # pylint: disable=g-import-not-at-top
  from vlax.models import presets  # pylint: disable=g-import-not-at-top
  out: dict[str, Any] = {}
  step, init = vlax_train_step(config)
  batch = {k: jax.device_put(v) for k, v in x.items()}
  state = {"params": jax.tree.map(jax.numpy.asarray, params)}
  state["opt"] = init(state["params"])
  t0 = time.perf_counter()
  compiled = step.lower(state["params"], state["opt"], batch).compile()
  out["vlax_compile_s"] = time.perf_counter() - t0
  losses = {"vlax": []}

  def run_vlax():
    state["params"], state["opt"], loss = compiled(state["params"], state["opt"], batch)
    losses["vlax"].append(loss)
    return loss

  # One HF step per implementation; each keeps its own optimizer but they share (and
  # update) the same torch weights, which does not change the cost of a step.
  fns = {"vlax": run_vlax}
  fused = None
  for impl in hf_attn:
    hf_model.set_attn_implementation(impl)
    hstep, fused = hf_train_step(hf_model, config, x)
    losses[impl] = []

    def run_hf(hstep=hstep, impl=impl):
      hf_model.set_attn_implementation(impl)
      losses[impl].append(hstep())

    fns[impl] = run_hf
  t = common.time_interleaved(fns, warmup=warmup, repeats=repeats)
  out["vlax_first_loss"] = float(losses["vlax"][0])
  out["hf_first_loss"] = losses[hf_attn[0]][0]
  out["hf_adamw_fused"] = fused
  out["vlax_step_s"] = t["vlax"]["median"]
  out["vlax_step_s_all"] = t["vlax"]["all"]
  for impl in hf_attn:
    out[f"hf_{impl}_step_s"] = t[impl]["median"]
    out[f"hf_{impl}_step_s_all"] = t[impl]["all"]
  best = min(hf_attn, key=lambda k: t[k]["median"])
  out["hf_train_attn"] = best
  out["hf_step_s"] = t[best]["median"]
  b, length = x["tokens"].shape
  flops = 3 * presets.forward_flops(config, 1, length, b)["total"]
  out["flops_per_step_analytic"] = float(flops)
  out["vlax_flops_per_s"] = flops / out["vlax_step_s"]
  out["hf_flops_per_s"] = flops / out["hf_step_s"]
  out["train_step_vs_hf"] = out["hf_step_s"] / out["vlax_step_s"]
  # Process CPU seconds per step (less sensitive to other processes on shared cores).
  out["vlax_step_cpu_s"] = t["vlax"]["cpu_median"]
  out["hf_step_cpu_s"] = t[best]["cpu_median"]
  out["train_step_vs_hf_cpu"] = out["hf_step_cpu_s"] / max(out["vlax_step_cpu_s"], 1e-9)
  # Same weights and data: the first losses agree (a check that the comparison is fair).
  out["first_loss_rel_diff"] = abs(out["vlax_first_loss"] - out["hf_first_loss"]) / max(
      abs(out["hf_first_loss"]), 1e-9)
  return out


# ---------------------------------------------------------------------------------------
# (b) greedy generation


def bench_decode(config, hf_model, params, x, num_steps: int, warmup: int, repeats: int,
                 hf_attn: tuple[str, ...] = ("sdpa", "eager")) -> dict[str, Any]:
  """greedy_decode vs HF generate (each attention implementation), timed round-robin."""
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from vlax.models import decoding  # pylint: disable=g-import-not-at-top
  from vlax.models.vla import VLA  # pylint: disable=g-import-not-at-top
  out: dict[str, Any] = {"decode_tokens": num_steps, "decode_batch": x["tokens"].shape[0],
                         "prompt_len": x["tokens"].shape[1]}
  model = VLA(config)
  params = jax.tree.map(jax.numpy.asarray, params)
  args = [jax.device_put(x[k]) for k in ("images", "image_mask", "tokens", "input_mask",
                                         "prefix_mask")]
  t0 = time.perf_counter()
  ours = np.asarray(decoding.greedy_decode(model, params, *args, num_steps))
  out["vlax_first_call_s"] = time.perf_counter() - t0
  kw = _hf_inputs(config, x, hf_model.config.image_token_index)
  hf_model.eval()
  prompt = kw["input_ids"].shape[1]

  def hf_fn(impl):
    def run_hf():
      hf_model.set_attn_implementation(impl)
      with torch.inference_mode():
        return hf_model.generate(**kw, do_sample=False, max_new_tokens=num_steps,
                                 min_new_tokens=0, eos_token_id=None, pad_token_id=0,
                                 use_cache=True)
    return run_hf

  fns = {"vlax": lambda: decoding.greedy_decode(model, params, *args, num_steps)}
  theirs = {}
  for impl in hf_attn:
    fns[impl] = hf_fn(impl)
    theirs[impl] = fns[impl]()[:, prompt:].numpy()
  t = common.time_interleaved(fns, warmup=warmup, repeats=repeats)
  out["vlax_decode_s"] = t["vlax"]["median"]
  out["vlax_decode_p99_s"] = t["vlax"]["p99"]
  out["vlax_decode_s_all"] = t["vlax"]["all"]
  for impl in hf_attn:
    out[f"hf_{impl}_decode_s"] = t[impl]["median"]
    out[f"hf_{impl}_decode_s_all"] = t[impl]["all"]
  best = min(hf_attn, key=lambda k: t[k]["median"])
  out["hf_decode_attn"] = best
  out["hf_decode_s"] = t[best]["median"]
  out["vlax_tokens_per_s"] = ours.size / out["vlax_decode_s"]
  out["hf_tokens_per_s"] = ours.size / out["hf_decode_s"]
  out["decode_vs_hf"] = out["hf_decode_s"] / out["vlax_decode_s"]
  out["vlax_decode_cpu_s"] = t["vlax"]["cpu_median"]
  out["hf_decode_cpu_s"] = t[best]["cpu_median"]
  out["decode_vs_hf_cpu"] = out["hf_decode_cpu_s"] / max(out["vlax_decode_cpu_s"], 1e-9)
  ref = theirs[hf_attn[0]]
  out["decode_tokens_match_hf"] = all(
      v.shape == ours.shape and bool(np.array_equal(v, ours)) for v in theirs.values())
  if ref.shape == ours.shape:
    out["decode_tokens_match_fraction"] = float(np.mean(ref == ours))
  out["decode_distinct_tokens"] = int(len(np.unique(ours)))
  out["vlax_tokens_sample"] = ours[0, :16].tolist()
  out["hf_tokens_sample"] = ref[0, :16].tolist()
  return out


# ---------------------------------------------------------------------------------------


def run(preset: str = "debug", quick: bool = True, tiny: bool = False,
        batch_size: int | None = None, prompt_len: int | None = None,
        target_len: int | None = None, decode_tokens: int | None = None,
        decode_batch: int = 1, vocab_size: int | None = None, warmup: int | None = None,
        repeats: int | None = None, skip_train: bool = False,
        skip_decode: bool = False,
        hf_attn: tuple[str, ...] = ("sdpa", "eager")) -> dict[str, Any]:
  """Both comparisons on one preset; returns a flat dict of figures and the two ratios."""
  from vlax.models import presets  # pylint: disable=g-import-not-at-top
  if tiny:
    preset = "tiny"
  config = presets.get_preset(preset)
  if vocab_size:
    config = dataclasses.replace(config, llm=dataclasses.replace(config.llm,
                                                                 vocab_size=vocab_size))
  batch_size = batch_size or (2 if (quick or tiny) else 8)
  prompt_len = prompt_len or 16
  target_len = target_len or (8 if (quick or tiny) else 32)
  decode_tokens = decode_tokens or (8 if tiny else 28)  # 4 steps x 7 dims
  warmup = 1 if warmup is None else warmup
  repeats = repeats or (2 if tiny else 3 if quick else 7)
  threads = common.set_torch_threads()
  out: dict[str, Any] = {"benchmark": "hf_reference", "preset": preset,
                         "params": presets.count_params(config)["total"],
                         "batch_size": batch_size, "prompt_len": prompt_len,
                         "target_len": target_len, "torch_threads": threads,
                         "repeats": repeats, "machine": common.machine_info()}
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  out["torch"], out["transformers"] = torch.__version__, transformers.__version__
  with tempfile.TemporaryDirectory() as tmp:
    t0 = time.perf_counter()
    hf_model, vconfig, params = build_pair(config, tmp)
    out["build_s"] = time.perf_counter() - t0
  if not skip_decode:
    # Decode first: the train step below changes HF's weights in place.
    x = make_inputs(vconfig, decode_batch, prompt_len, 0, seed=1)
    out.update(bench_decode(vconfig, hf_model, params, x, decode_tokens, warmup, repeats,
                            hf_attn))
  if not skip_train:
    x = make_inputs(vconfig, batch_size, prompt_len, target_len, seed=2)
    out.update(bench_train(vconfig, hf_model, params, x, warmup, repeats, hf_attn))
  out["load_average_end"] = common.load_average()
  return out


def profile_vlax(preset: str, trace_dir: str, batch_size: int = 4, prompt_len: int = 16,
                 target_len: int = 32, decode_tokens: int = 28,
                 vocab_size: int | None = None) -> dict[str, Any]:
  """Where the vlax train step and greedy decode spend their time (jax.profiler trace)."""
  import jax  # pylint: disable=g-import-not-at-top
  from vlax.models import decoding, presets  # pylint: disable=g-import-not-at-top
  from vlax.models.vla import VLA, init_params  # pylint: disable=g-import-not-at-top
  config = presets.get_preset(preset)
  if vocab_size:
    config = dataclasses.replace(config, llm=dataclasses.replace(config.llm,
                                                                 vocab_size=vocab_size))
  params = init_params(VLA(config), jax.random.key(0))
  x = make_inputs(config, batch_size, prompt_len, target_len)
  batch = {k: jax.device_put(v) for k, v in x.items()}
  step, init = vlax_train_step(config)
  state = {"params": params, "opt": init(params)}
  compiled = step.lower(state["params"], state["opt"], batch).compile()

  def run_train():
    state["params"], state["opt"], loss = compiled(state["params"], state["opt"], batch)
    return loss

  out = {"train": common.profile_ops(run_train, os.path.join(trace_dir, "train"),
                                     compiled_text=compiled.as_text())}
  d = make_inputs(config, 1, prompt_len, 0, seed=1)
  args = [jax.device_put(d[k]) for k in ("images", "image_mask", "tokens", "input_mask",
                                         "prefix_mask")]
  fn = decoding._cached_greedy(config, decode_tokens)  # pylint: disable=protected-access
  dec = fn.lower(state["params"], *args, None).compile()
  out["decode"] = common.profile_ops(lambda: dec(state["params"], *args, None),
                                     os.path.join(trace_dir, "decode"), calls=5,
                                     compiled_text=dec.as_text())
  return out


def summary_rows(r: dict[str, Any]) -> list[list[Any]]:
  rows = []
  if "vlax_step_s" in r:
    rows.append([f"train step ({r['preset']}, B={r['batch_size']})", r["vlax_step_s"],
                 r["hf_step_s"], r["train_step_vs_hf"]])
  if "vlax_decode_s" in r:
    rows.append([f"greedy {r['decode_tokens']} tok ({r['preset']}, B={r['decode_batch']})",
                 r["vlax_decode_s"], r["hf_decode_s"], r["decode_vs_hf"]])
  return rows


def main(argv=None) -> dict[str, Any]:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--preset", default="debug")
  p.add_argument("--batch_size", type=int, default=None)
  p.add_argument("--prompt_len", type=int, default=None)
  p.add_argument("--target_len", type=int, default=None)
  p.add_argument("--decode_tokens", type=int, default=None)
  p.add_argument("--decode_batch", type=int, default=1)
  p.add_argument("--vocab_size", type=int, default=None)
  p.add_argument("--repeats", type=int, default=None)
  p.add_argument("--warmup", type=int, default=None)
  p.add_argument("--skip_train", action="store_true")
  p.add_argument("--skip_decode", action="store_true")
  p.add_argument("--hf_attn", default="sdpa,eager",
                 help="HF attention implementations to time (the fastest is the peer)")
  p.add_argument("--quick", action="store_true")
  p.add_argument("--tiny", action="store_true")
  p.add_argument("--profile", default=None, metavar="DIR",
                 help="only profile vlax's train step and decode (trace under DIR)")
  p.add_argument("--json", default=None)
  a = p.parse_args(argv)
  if a.profile:
    r = profile_vlax("tiny" if a.tiny else a.preset, a.profile, a.batch_size or 4,
                     a.prompt_len or 16, a.target_len or 32, a.decode_tokens or 28,
                     a.vocab_size)
    for k, v in r.items():
      print(f"== {k} ==")
      print(common.profile_table(v))
    common.write_json(a.json, r)
    return r
  r = run(a.preset, a.quick, a.tiny, a.batch_size, a.prompt_len, a.target_len,
          a.decode_tokens, a.decode_batch, a.vocab_size, warmup=a.warmup, repeats=a.repeats,
          skip_train=a.skip_train, skip_decode=a.skip_decode,
          hf_attn=tuple(a.hf_attn.split(",")))
  print(common.table(summary_rows(r), ["hf_reference", "vlax s", "HF s", "HF/vlax"]))
  if "decode_tokens_match_hf" in r:
    print(f"generated tokens equal HF's: {r['decode_tokens_match_hf']} "
          f"(fraction {r.get('decode_tokens_match_fraction')})")
  if "first_loss_rel_diff" in r:
    print(f"first loss vlax {r['vlax_first_loss']:.5f} HF {r['hf_first_loss']:.5f}")
  common.write_json(a.json, r)
  return r


if __name__ == "__main__":
  main()
