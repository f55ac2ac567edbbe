"""Train-step throughput and achieved FLOP/s vs. a large matmul on the same device.

  python benchmarks/train_step.py [--preset debug|medium|tiny] [--batch_size B]
      [--steps N] [--dtype float32|bfloat16] [--quick] [--json OUT]

Builds the real jitted train step of vlax.training (same shardings, optimizer, loss) on
all local devices (mesh fsdp = all), feeds a synthetic model batch (no TensorFlow needed,
so it runs on the GPU machines), and reports:
  * step time (median of timed steps after warm-up), examples/s, tokens/s (text tokens
    and full sequence = image + text tokens);
  * model FLOPs per step: the analytic matmul count (3 x forward,
    vlax.models.presets.forward_flops), used for FLOP/s; XLA's cost analysis of the
    compiled step is reported too but undercounts (a scanned layer stack's loop body is
    counted once);
  * achieved FLOP/s = FLOPs per step / step time;
  * the FLOP/s of a large square matmul (in the model's compute dtype) timed in the
    same run on the same devices; `train_flops_vs_matmul` = achieved / matmul (higher is
    better; ~0.3-0.6 is typical for a well-fed accelerator, CPU is lower).

`--scan_unroll 1,true` builds one train step per value of `model.scan_unroll` and times
them round-robin in this process (wall and process CPU seconds per step, medians); the
top-level figures are the first variant's, the others are under `variants`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import statistics
import sys
import time

import numpy as np

# Benchmarks own their devices: no virtual-device flags from a test environment.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def synthetic_batch(batch_size, num_cams, image_size, seq_len, vocab, prefix_len, seed=0):
  rng = np.random.default_rng(seed)
  pos = np.arange(seq_len)[None]
  tokens = rng.integers(1, vocab, size=(batch_size, seq_len)).astype(np.int32)
  ones = np.ones((batch_size, seq_len), bool)
  loss_mask = ones & (pos >= prefix_len)
  return {
      "images": rng.uniform(-1, 1, (batch_size, num_cams, image_size, image_size, 3)
                            ).astype(np.float32),
      "image_mask": np.ones((batch_size, num_cams), bool),
      "tokens": tokens, "input_mask": ones, "prefix_mask": ones & (pos < prefix_len),
      "loss_mask": loss_mask, "action_token_mask": loss_mask,
      "source": np.zeros(batch_size, np.int32), "dataset_index": np.zeros(batch_size, np.int32),
  }


def _parse_unroll(s: str):
  s = s.strip().lower()
  if s in ("true", "false"):
    return s == "true"
  return int(s)


def _cpu_s() -> float:
  """User + system CPU seconds of this process (steadier than wall time under load)."""
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--preset", default="debug")
  p.add_argument("--batch_size", type=int, default=None)
  p.add_argument("--seq_len", type=int, default=64)
  p.add_argument("--prefix_len", type=int, default=32)
  p.add_argument("--num_cams", type=int, default=1)
  p.add_argument("--vocab_size", type=int, default=None)
  p.add_argument("--model_overrides", default=None,
                 help="config.model.overrides, e.g. 'vision.patch_size=16' (experiments/debug.py)")
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--dtype", default=None, help="compute dtype (default: bf16 on GPU/TPU, "
                 "float32 on CPU)")
  p.add_argument("--remat", action="store_true")
  p.add_argument("--scan_unroll", default=None,
                 help="comma-separated model.scan_unroll values (true, false or an int), "
                 "timed interleaved; default: the model config's")
  p.add_argument("--matmul_n", type=int, default=None)
  p.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
  p.add_argument("--json", default=None, help="write the results as one JSON object here")
  args = p.parse_args(argv)

  import jax  # pylint: disable=g-import-not-at-top
  from vlax.models import presets  # pylint: disable=g-import-not-at-top
  from vlax.models import sharding  # pylint: disable=g-import-not-at-top
  from vlax.models.batch import Batch  # pylint: disable=g-import-not-at-top
  from vlax.training import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from vlax.training import perf  # pylint: disable=g-import-not-at-top
  from vlax.training import trainer  # pylint: disable=g-import-not-at-top

  backend = jax.default_backend()
  on_cpu = backend == "cpu"
  dtype = args.dtype or ("float32" if on_cpu else "bfloat16")
  if args.quick:
    args.steps, args.warmup = min(args.steps, 3), 1
  bs = args.batch_size or (4 if on_cpu else 64) * jax.local_device_count()
  bs -= bs % jax.device_count() or 0
  bs = max(bs, jax.device_count())

  config = trainer.default_train_config()
  config.model.preset = args.preset
  config.model.dtype = dtype
  config.model.remat = args.remat
  config.batch_size = bs
  config.num_steps = 1000
  config.optimizer.warmup_steps = 10
  overrides = [args.model_overrides] if args.model_overrides else []
  if args.vocab_size:
    overrides.append(f"llm.vocab_size={args.vocab_size}")
  if overrides:
    config.model.overrides = ",".join(overrides)
  model_config = trainer.build_model_config(config)
  vocab = model_config.llm.vocab_size
  image_size = model_config.vision.image_size
  batch = Batch.from_dict(
      synthetic_batch(bs, args.num_cams, image_size, args.seq_len, vocab, args.prefix_len))

  mesh = sharding.make_mesh(1, -1, 1)
  gbatch = mesh_lib.global_batch(batch, mesh)
  unrolls = ([None] if args.scan_unroll is None else
             [_parse_unroll(u) for u in args.scan_unroll.split(",") if u.strip()])
  runs = {}
  for u in unrolls:
    mc = model_config if u is None else dataclasses.replace(model_config, scan_unroll=u)
    t0 = time.perf_counter()
    setup = trainer.ModelSetup(config, mc, mesh, batch, num_datasets=1)
    state = setup.create_state(setup.init_params(0), 0)
    with setup.context():
      compiled = setup.train_step.lower(state, gbatch).compile()
    runs[str(mc.scan_unroll).lower()] = {"setup": setup, "state": state,
                                         "compile_s": time.perf_counter() - t0,
                                         "cost": compiled.cost_analysis(), "times": [],
                                         "cpu": []}
  for _ in range(args.warmup):
    for r in runs.values():
      r["state"], _ = r["setup"].step(r["state"], gbatch)
      jax.block_until_ready(r["state"])
  for _ in range(args.steps):  # round-robin, so load drift hits every variant alike
    for r in runs.values():
      c, t = _cpu_s(), time.perf_counter()
      r["state"], r["metrics"] = r["setup"].step(r["state"], gbatch)
      jax.block_until_ready(r["metrics"])
      r["times"].append(time.perf_counter() - t)
      r["cpu"].append(_cpu_s() - c)
  first = next(iter(runs.values()))
  compile_s, times, m = first["compile_s"], first["times"], first["metrics"]
  cost = first["cost"]
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  xla_flops = float((cost or {}).get("flops", float("nan")))
  step_s = statistics.median(times)
  loss = float(m["last"]["loss"])

  n_img_tokens = args.num_cams * model_config.vision.num_patches
  analytic = 3 * presets.forward_flops(model_config, num_images=args.num_cams,
                                       text_len=args.seq_len, batch=bs)["total"]
  # XLA counts per device program for SPMD; scale to the whole step.
  xla_total = xla_flops * jax.device_count() if jax.device_count() > 1 else xla_flops
  mm_n = args.matmul_n or (1024 if on_cpu else 8192)
  if args.quick:
    mm_n = min(mm_n, 1024 if on_cpu else 4096)
  mm = perf.matmul_flops_per_s(mm_n, dtype)  # the ceiling perf/mfu uses on CPU
  # XLA's cost analysis counts a while loop's body once, and the model scans its layers,
  # so it undercounts by about the depth: the analytic count is the one used.
  flops = float(analytic)
  out = {
      "benchmark": "train_step", "preset": args.preset, "backend": backend,
      "device_kind": jax.devices()[0].device_kind, "num_devices": jax.device_count(),
      "host": platform.node(), "dtype": dtype, "remat": args.remat,
      "scan_unroll": next(iter(runs)), "cpu_seconds": statistics.median(first["cpu"]),
      "batch_size": bs, "num_cams": args.num_cams, "seq_len": args.seq_len,
      "image_tokens_per_example": n_img_tokens, "vocab_size": vocab,
      "params": presets.count_params(model_config)["total"],
      "compile_seconds": compile_s, "step_seconds": step_s,
      "step_seconds_all": times, "loss": loss,
      "examples_per_s": bs / step_s,
      "text_tokens_per_s": bs * args.seq_len / step_s,
      "sequence_tokens_per_s": bs * (args.seq_len + n_img_tokens) / step_s,
      "flops_per_step_xla": xla_total, "flops_per_step_analytic": float(analytic),
      "achieved_flops_per_s": flops / step_s,
      **mm,
  }
  out["train_flops_vs_matmul"] = out["achieved_flops_per_s"] / mm["matmul_flops_per_s"]
  if len(runs) > 1:
    out["variants"] = {
        k: {"step_seconds": statistics.median(r["times"]),
            "cpu_seconds": statistics.median(r["cpu"]), "compile_seconds": r["compile_s"],
            "loss": float(r["metrics"]["last"]["loss"]), "step_seconds_all": r["times"],
            "achieved_flops_per_s": flops / statistics.median(r["times"])}
        for k, r in runs.items()}
  print(f"train_step[{args.preset}, {backend} x{jax.device_count()}, {dtype}, batch {bs}]: "
        f"{step_s * 1e3:.1f} ms/step, {out['examples_per_s']:.1f} ex/s, "
        f"{out['sequence_tokens_per_s']:.0f} seq tok/s; "
        f"{flops / 1e9:.2f} GFLOP/step analytic (xla cost analysis "
        f"{xla_total / 1e9:.2f}) -> {out['achieved_flops_per_s'] / 1e9:.2f} GFLOP/s vs matmul "
        f"{mm['matmul_flops_per_s'] / 1e9:.2f} GFLOP/s (ratio "
        f"{out['train_flops_vs_matmul']:.3f})")
  for k, v in out.get("variants", {}).items():
    print(f"  scan_unroll={k}: {v['step_seconds'] * 1e3:.1f} ms/step wall, "
          f"{v['cpu_seconds'] * 1e3:.1f} ms CPU, compile {v['compile_seconds']:.1f} s, "
          f"loss {v['loss']:.5f}")
  if args.json:
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
      json.dump(out, f, indent=2)
  return out


if __name__ == "__main__":
  main()
