"""Throughput of action tokenization and of the sequence builder (CPU, tf.data).

Measures:
  * FAST encode / decode (chunks/s, action tokens/s) and bin encode (numpy and in-graph);
  * the sequence builder as a tf.data map (examples/s, tokens/s of valid tokens) on
    synthetic standardized robot frames (bins and FAST) and on web examples, with small
    images so the number is the tokenization ceiling rather than image conversion.

Usage: python benchmarks/tokenizer_throughput.py [--quick] [--json OUT]
`run(quick) -> dict` is what benchmarks/run_all.py can call.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _smooth_chunks(n: int, k: int, a: int, seed: int = 0) -> list[np.ndarray]:
  rng = np.random.default_rng(seed)
  t = np.linspace(0, 1, k)[:, None]
  return [np.clip(0.8 * np.sin(2 * np.pi * (t * rng.uniform(0.2, 1.0, (1, a))
                                            + rng.uniform(0, 1, (1, a))))
                  + 0.05 * rng.normal(size=(k, a)), -1, 1) for _ in range(n)]


def _timeit(fn, min_time: float) -> tuple[float, int]:
  """(seconds per call, calls) after one warm-up call."""
  fn()
  n, t0 = 0, time.perf_counter()
  while True:
    fn()
    n += 1
    dt = time.perf_counter() - t0
    if dt >= min_time:
      return dt / n, n


def bench_action_tokenizers(quick: bool) -> dict:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from vlax.actions import BinTokenizer, FASTTokenizer  # pylint: disable=g-import-not-at-top
  k, a = 10, 7
  n = 200 if quick else 1000
  chunks = _smooth_chunks(n, k, a)
  min_time = 0.5 if quick else 2.0
  out = {"chunk_len": k, "action_dim": a}
  t0 = time.perf_counter()
  fast = FASTTokenizer(vocab_size=1024, scale=10.0).fit(_smooth_chunks(2000, k, a, seed=1))
  out["fast_fit_s"] = time.perf_counter() - t0
  ids = [fast.encode(c) for c in chunks]
  ntok = sum(len(i) for i in ids)
  out["fast_tokens_per_chunk"] = ntok / n
  sec, _ = _timeit(lambda: [fast.encode(c) for c in chunks], min_time)
  out["fast_encode_chunks_per_s"] = n / sec
  out["fast_encode_tokens_per_s"] = ntok / sec
  sec, _ = _timeit(lambda: fast.encode_batch(chunks), min_time)
  out["fast_encode_batch_chunks_per_s"] = n / sec
  sec, _ = _timeit(lambda: [fast.decode(i, k, a) for i in ids], min_time)
  out["fast_decode_chunks_per_s"] = n / sec
  out["fast_decode_tokens_per_s"] = ntok / sec
  bins = BinTokenizer()
  sec, _ = _timeit(lambda: [bins.encode(c) for c in chunks], min_time)
  out["bins_encode_chunks_per_s"] = n / sec
  bid = [bins.encode(c) for c in chunks]
  sec, _ = _timeit(lambda: [bins.decode(i, k, a) for i in bid], min_time)
  out["bins_decode_chunks_per_s"] = n / sec
  stacked = tf.constant(np.stack(chunks), tf.float32)
  enc = tf.function(lambda x: tf.map_fn(bins.encode_tf, x,
                                        fn_output_signature=tf.TensorSpec([k * a], tf.int32)))
  sec, _ = _timeit(lambda: enc(stacked).numpy(), min_time)
  out["bins_encode_tf_chunks_per_s"] = n / sec
  return out


def _frames(n: int, img: int, k: int, a_max: int):
  rng = np.random.default_rng(0)
  instr = ["move to the red block", "pick up the green cube", "push the blue ball left",
           "open the drawer"]
  act = np.clip(np.stack(_smooth_chunks(n, k, a_max)), -1, 1).astype(np.float32)
  dims = np.where(np.arange(n) % 2 == 0, a_max, 3).astype(np.int32)
  pad = np.arange(a_max)[None, None, :] < dims[:, None, None]
  pad = np.broadcast_to(pad, act.shape).copy()
  return {
      "observation": {
          "image_primary": rng.integers(0, 256, (n, img, img, 3), dtype=np.uint8),
          "image_primary_mask": np.ones(n, bool),
          "proprio": np.zeros((n, 4), np.float32), "proprio_pad_mask": np.ones((n, 4), bool)},
      "action": act * pad, "action_pad_mask": pad, "action_dim": dims,
      "language_instruction": np.array([instr[i % 4].encode() for i in range(n)]),
      "dataset_name": np.array([b"bench"] * n), "dataset_index": np.zeros(n, np.int32)}


def _consume(ds) -> tuple[float, int, int]:
  """(seconds, examples, valid tokens) to drain `ds` in batches of 64 (after warm-up)."""
  it = iter(ds.batch(64).prefetch(2))
  next(it)
  t0, n, tok = time.perf_counter(), 0, 0
  for ex in it:
    m = ex["input_mask"].numpy()
    n += m.shape[0]
    tok += int(m.sum())
  return time.perf_counter() - t0, n, tok


def bench_sequence_builder(quick: bool) -> dict:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from vlax.actions import BinTokenizer, FASTTokenizer, default_action_vocab  # pylint: disable=g-import-not-at-top
  from vlax.data.sequence import SequenceBuilder, SequenceConfig  # pylint: disable=g-import-not-at-top
  from vlax.data import web  # pylint: disable=g-import-not-at-top
  from vlax.data.text_tokenizer import load_toy_tokenizer  # pylint: disable=g-import-not-at-top
  n = 1000 if quick else 5000
  k, a_max, img = 10, 7, 32
  text = load_toy_tokenizer()
  frames = _frames(n, img, k, a_max)
  cfg = SequenceConfig(max_len=128, cameras=("primary",), image_size=(img, img))
  out = {"examples": n, "chunk_len": k, "image_size": img, "cpu_count": os.cpu_count()}
  fast = FASTTokenizer(vocab_size=1024, scale=10.0).fit(_smooth_chunks(2000, k, a_max, 1))
  for name, tok in [("bins", BinTokenizer()), ("fast", fast)]:
    b = SequenceBuilder(cfg, text, tok, default_action_vocab(text.vocab_size,
                                                             tok.vocab_size))
    ds = b.robot_dataset(tf.data.Dataset.from_tensor_slices(frames))
    sec, m, tokens = _consume(ds)
    out[f"robot_{name}_examples_per_s"] = m / sec
    out[f"robot_{name}_tokens_per_s"] = tokens / sec
  exs = web.toy_examples(min(n, 1000), img, seed=0)
  reps = max(1, n // len(exs))
  wds = tf.data.Dataset.from_tensor_slices({
      "image": np.stack([e["image"] for e in exs]),
      "prompt": [e["prompt"] for e in exs], "answer": [e["answer"] for e in exs],
      "dataset_index": np.zeros(len(exs), np.int32)}).repeat(reps)
  b = SequenceBuilder(cfg, text, BinTokenizer(), default_action_vocab(text.vocab_size, 256))
  sec, m, tokens = _consume(b.web_dataset(wds))
  out["web_examples_per_s"] = m / sec
  out["web_tokens_per_s"] = tokens / sec
  return out


def run(quick: bool = True) -> dict:
  return {"action_tokenizers": bench_action_tokenizers(quick),
          "sequence_builder": bench_sequence_builder(quick)}


def _table(res: dict) -> str:
  lines = [f"{'measurement':45s} {'value':>14s}"]
  for group, d in res.items():
    for key, v in d.items():
      val = f"{v:14.1f}" if isinstance(v, float) else f"{v:>14}"
      lines.append(f"{group + '/' + key:45s} {val}")
  return "\n".join(lines)


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true", help="small sizes (seconds)")
  ap.add_argument("--json", default=None, help="write the results as JSON here")
  args = ap.parse_args(argv)
  res = run(args.quick)
  print(_table(res))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(res, f, indent=2)
    print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
  main()
