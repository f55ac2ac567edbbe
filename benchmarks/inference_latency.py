"""Action-generation latency: greedy decoding with the KV cache vs. full re-computation.

  python benchmarks/inference_latency.py [--preset debug] [--action_tokens N]
      [--prompt_len L] [--repeats R] [--dtype bfloat16] [--quick] [--json OUT]

One observation (batch 1, one camera) and an L-token instruction prefix; N = K x A
action tokens (default 4 steps x 7 dims = 28). Reports p50 / p99 latency of
  * `greedy_decode` (prefill once, then N - 1 single-token steps on the KV cache);
  * `greedy_decode` with N = 1 (about the prefill alone), from which the per-token
    cost of a cached step follows: (t(N) - t(1)) / (N - 1);
  * `greedy_decode_recompute` (the full forward pass again for every new token);
and `kv_cache_speedup` = recompute p50 / cached p50; plus the end-to-end
`vlax.Policy.predict_action` latency of a random-weight policy on the same preset (one
224 px-or-preset-size camera, 256 action bins, K=4 x A=7 tokens).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position


def _inputs(config, prompt_len: int, batch: int = 1, seed: int = 0):
  rng = np.random.default_rng(seed)
  s = config.vision.image_size
  return (rng.uniform(-1, 1, (batch, 1, s, s, 3)).astype(np.float32),
          np.ones((batch, 1), bool),
          rng.integers(1, config.llm.vocab_size, (batch, prompt_len)).astype(np.int32),
          np.ones((batch, prompt_len), bool),
          np.ones((batch, prompt_len), bool))


def bench_decoding(config, prompt_len: int, action_tokens: int, repeats: int,
                   batch: int = 1, recompute: bool = True) -> dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top
  from vlax.models import decoding, presets  # pylint: disable=g-import-not-at-top
  from vlax.models.vla import VLA, init_params  # pylint: disable=g-import-not-at-top
  model = VLA(config)
  params = init_params(model, jax.random.key(0))
  args = [jax.device_put(a) for a in _inputs(config, prompt_len, batch)]
  out: dict[str, Any] = {"batch": batch, "prompt_len": prompt_len,
                         "action_tokens": action_tokens,
                         "context_len": config.vision.num_patches + prompt_len}
  fns = {
      "cached": lambda: decoding.greedy_decode(model, params, *args, action_tokens),
      "prefill": lambda: decoding.greedy_decode(model, params, *args, 1),
      "recompute": lambda: decoding.greedy_decode_recompute(model, params, *args,
                                                            action_tokens),
  }
  if not recompute:
    del fns["recompute"]
  for k, fn in fns.items():  # compile each once, outside the timed window
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    out[f"{k}_compile_s"] = time.perf_counter() - t0
  if recompute:
    a = np.asarray(fns["cached"]())
    b = np.asarray(fns["recompute"]())
    out["cached_equals_recompute"] = bool(np.array_equal(a, b))
  t = common.time_interleaved(fns, warmup=1, repeats=repeats)
  for k, s in t.items():
    out[f"{k}_p50_s"], out[f"{k}_p99_s"] = s["p50"], s["p99"]
    out[f"{k}_all_s"] = s["all"]
  out["per_token_cached_s"] = (out["cached_p50_s"] - out["prefill_p50_s"]) / max(
      action_tokens - 1, 1)
  if recompute:
    out["kv_cache_speedup"] = out["recompute_p50_s"] / out["cached_p50_s"]
  out["action_tokens_per_s"] = batch * action_tokens / out["cached_p50_s"]
  ctx = out["context_len"]
  per_tok = presets.decode_flops(config, ctx + action_tokens // 2)
  out["decode_flops_per_token"] = per_tok
  out["prefill_flops"] = presets.forward_flops(config, 1, prompt_len, batch)["total"]
  return out


def make_benchmark_policy(preset: str, chunk_len: int = 4, action_dim: int = 7):
  """A random-weight Policy (toy text tokenizer, 256 action bins, one camera, one robot).

  Returns (policy, observation, instruction). The model is `preset` with the vocabulary
  the tokenizers need; statistics are made up (they only scale the output).
  """
  import jax  # pylint: disable=g-import-not-at-top
  from vlax.actions import BinTokenizer, default_action_vocab  # pylint: disable=g-import-not-at-top
  from vlax.data.sequence import SequenceBuilder, SequenceConfig  # pylint: disable=g-import-not-at-top
  from vlax.data.statistics import compute_statistics  # pylint: disable=g-import-not-at-top
  from vlax.data.text_tokenizer import load_toy_tokenizer  # pylint: disable=g-import-not-at-top
  from vlax.inference.policy import Policy  # pylint: disable=g-import-not-at-top
  from vlax.models import presets  # pylint: disable=g-import-not-at-top
  from vlax.models.vla import VLA, init_params  # pylint: disable=g-import-not-at-top
  config = presets.get_preset(preset)
  size = config.vision.image_size
  text = load_toy_tokenizer()
  bins = BinTokenizer(num_bins=256)
  vocab = default_action_vocab(text.vocab_size, bins.vocab_size)
  builder = SequenceBuilder(SequenceConfig(max_len=64, cameras=("primary",),
                                           image_size=(size, size)), text, bins, vocab)
  config = dataclasses.replace(config, llm=dataclasses.replace(
      config.llm, vocab_size=builder.model_vocab_size))
  rng = np.random.default_rng(0)
  stats = {"bench_robot": compute_statistics(
      [{"action": rng.normal(size=(256, action_dim)),
        "proprio": rng.normal(size=(256, 2))}], dataset_name="bench_robot",
      progress=False)}
  meta = builder.metadata(dataset_names=["bench_robot"], chunk_len=chunk_len,
                          statistics=stats)
  meta["model"] = config.to_dict()
  params = init_params(VLA(config), jax.random.key(0))
  policy = Policy.from_params(params, meta, dataset="bench_robot")
  obs = {"image_primary": rng.integers(0, 256, (size, size, 3), dtype=np.uint8)}
  return policy, obs, "pick up the red block and put it in the bowl"


def bench_policy(preset: str, repeats: int) -> dict[str, Any]:
  """Policy.predict_action latency (image resize, prompt, decode, detokenize, unnormalize)."""
  try:
    policy, observation, instruction = make_benchmark_policy(preset)
  except Exception as e:  # pylint: disable=broad-except
    return {"error": f"could not build a Policy: {type(e).__name__}: {e}"}
  t0 = time.perf_counter()
  actions = policy.predict_action(observation, instruction)
  first = time.perf_counter() - t0
  t = common.time_fn(lambda: policy.predict_action(observation, instruction), warmup=1,
                     repeats=repeats)
  return {"predict_action_p50_s": t["p50"], "predict_action_p99_s": t["p99"],
          "predict_action_first_call_s": first,
          "decode_steps": int(policy.num_decode_steps()),
          "action_shape": list(np.shape(actions)), "predict_action_all_s": t["all"]}


def run(preset: str = "debug", quick: bool = True, tiny: bool = False,
        prompt_len: int = 16, action_tokens: int | None = None, repeats: int | None = None,
        batch: int = 1, vocab_size: int | None = None, recompute: bool = True,
        policy: bool = True, dtype: str | None = None) -> dict[str, Any]:
  from vlax.models import presets  # pylint: disable=g-import-not-at-top
  if tiny:
    preset = "tiny"
  config = presets.get_preset(preset)
  if dtype:  # weights and compute in one dtype (bfloat16 serving on an accelerator)
    config = dataclasses.replace(config, dtype=dtype, param_dtype=dtype)
  if vocab_size:
    config = dataclasses.replace(config, llm=dataclasses.replace(config.llm,
                                                                 vocab_size=vocab_size))
  action_tokens = action_tokens or (8 if tiny else 28)
  repeats = repeats or (3 if tiny else 20 if quick else 100)
  out: dict[str, Any] = {"benchmark": "inference_latency", "preset": preset,
                         "dtype": config.dtype,
                         "params": presets.count_params(config)["total"],
                         "repeats": repeats, "machine": common.machine_info()}
  out.update(bench_decoding(config, prompt_len, action_tokens, repeats, batch, recompute))
  if policy:
    pol = bench_policy(preset, repeats)
    out.update({f"policy_{k}": v for k, v in pol.items()})
  out["load_average_end"] = common.load_average()
  return out


def summary_rows(r: dict[str, Any]) -> list[list[Any]]:
  n = r["action_tokens"]
  rows = [[f"greedy_decode KV cache ({n} tok)", r["cached_p50_s"], r["cached_p99_s"]],
          ["  prefill only (1 tok)", r["prefill_p50_s"], r["prefill_p99_s"]]]
  if "recompute_p50_s" in r:
    rows.append([f"recompute, no cache ({n} tok)", r["recompute_p50_s"], r["recompute_p99_s"]])
  if "policy_predict_action_p50_s" in r:
    rows.append(["Policy.predict_action", r["policy_predict_action_p50_s"],
                 r["policy_predict_action_p99_s"]])
  return rows


def main(argv=None) -> dict[str, Any]:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--preset", default="debug")
  p.add_argument("--prompt_len", type=int, default=16)
  p.add_argument("--action_tokens", type=int, default=None)
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--vocab_size", type=int, default=None)
  p.add_argument("--repeats", type=int, default=None)
  p.add_argument("--no_recompute", action="store_true",
                 help="skip the no-cache decode (slow for large presets)")
  p.add_argument("--no_policy", action="store_true")
  p.add_argument("--quick", action="store_true")
  p.add_argument("--tiny", action="store_true")
  p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                 help="weights and compute dtype of the decoding benchmark (default: the "
                 "preset's, float32)")
  p.add_argument("--json", default=None)
  a = p.parse_args(argv)
  r = run(a.preset, a.quick, a.tiny, a.prompt_len, a.action_tokens, a.repeats, a.batch,
          a.vocab_size, not a.no_recompute, not a.no_policy, a.dtype)
  print(common.table(summary_rows(r), [f"latency [{r['preset']}]", "p50 s", "p99 s"]))
  print(f"KV cache speedup {r.get('kv_cache_speedup', float('nan')):.2f}x; per cached token "
        f"{r['per_token_cached_s'] * 1e3:.2f} ms; tokens equal: "
        f"{r.get('cached_equals_recompute')}")
  if "policy_error" in r:
    print(f"policy: {r['policy_error']}")
  common.write_json(a.json, r)
  return r


if __name__ == "__main__":
  main()
