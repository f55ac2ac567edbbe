"""Robot data pipeline throughput vs. the raw JPEG decode+resize ceiling, same run/cores.

  python benchmarks/data_throughput.py [--quick] [--json OUT]

Generates toy_reach_b RLDS data (2 cameras, 256 px JPEG sources with a noise texture so
the files are photo-sized), then measures on the same host, in the order ceiling,
pipeline, ceiling (the two ceiling windows are averaged against load drift):
  * ceiling: tf.data map (AUTOTUNE parallel) of decode + resize to 224 over the same JPEG
    bytes, in images/s; frames/s = images/s / 2 cameras;
  * pipeline: `make_robot_dataset` (train mode: file shuffling, interleave, shuffle buffer,
    normalization, chunk 4, decode, resize 224, augmentation), batched, as numpy, frames/s;
  * peak RSS of the process and RSS at the start/end of the timed pipeline window.
`data_vs_decode_ceiling` = pipeline frames/s / ceiling frames/s (higher is better, ~1 is
the most a pipeline bound by image decoding can reach).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import tempfile
import time

import numpy as np


def _rss_mb() -> float:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) / 1024
  return float("nan")


def _peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_bench_data(data_dir: str, num_episodes: int, episode_len: int, source_size: int,
                     seed: int = 0) -> str:
  """toy_reach_b episodes with textured images (so JPEGs are realistically sized)."""
  from vlax.data import rlds  # pylint: disable=g-import-not-at-top
  from vlax.data.oxe import toy  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  texture = rng.normal(0, 14, (8, source_size, source_size, 3))

  def episodes():
    for i, ep in enumerate(toy.toy_episodes("b", num_episodes, image_size=source_size,
                                            episode_len=episode_len, seed=seed)):
      for t, step in enumerate(ep["steps"]):
        for k in ("image", "wrist_image"):
          img = step["observation"][k].astype(np.float32) + texture[(i + t) % 8]
          step["observation"][k] = np.clip(img, 0, 255).astype(np.uint8)
      yield ep

  return rlds.write_rlds("toy_reach_b", data_dir, toy.toy_features("b", source_size),
                         episodes(), version=toy.VERSION, num_shards=4)


def ceiling_iterator(data_dir: str, image_size: int, batch_size: int):
  """Decode + resize of the dataset's own JPEG bytes, map-parallel (AUTOTUNE)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from vlax.data import rlds  # pylint: disable=g-import-not-at-top
  blobs = []
  for t in rlds.read_trajectories("toy_reach_b", data_dir, process_index=0,
                                  process_count=1).as_numpy_iterator():
    blobs += list(t["observation"]["image"]) + list(t["observation"]["wrist_image"])
    if len(blobs) >= 2000:
      break
  mean_bytes = float(np.mean([len(b) for b in blobs]))

  def decode_resize(b):
    img = tf.io.decode_image(b, channels=3, expand_animations=False)
    img = tf.image.resize(tf.cast(img, tf.float32), [image_size, image_size],
                          antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(img), 0, 255), tf.uint8)

  ds = (tf.data.Dataset.from_tensor_slices(blobs).repeat()
        .map(decode_resize, num_parallel_calls=tf.data.AUTOTUNE)
        .batch(batch_size).prefetch(2))
  it = ds.as_numpy_iterator()
  for _ in range(max(2, 200 // batch_size)):
    next(it)
  return it, mean_bytes


def pipeline_iterator(data_dir: str, cache_dir: str, image_size: int, chunk_len: int,
                      batch_size: int, shuffle_buffer: int):
  from vlax.data import robot  # pylint: disable=g-import-not-at-top
  ds, _ = robot.make_robot_dataset(
      [("toy_reach_b", 1.0)], data_dir, image_size=image_size,
      cameras=("primary", "wrist"), chunk_len=chunk_len, train=True, seed=0,
      shuffle_buffer=shuffle_buffer, stats_cache_dir=cache_dir, process_index=0,
      process_count=1, progress=False)
  it = ds.batch(batch_size).as_numpy_iterator()
  for _ in range(shuffle_buffer // batch_size + 4):  # fill the shuffle buffer first
    b = next(it)
  assert b["observation"]["image_primary"].shape[1:] == (image_size, image_size, 3)
  assert b["action"].shape[1] == chunk_len
  return it


def _timed(it, count: int, size) -> float:
  n = 0
  start = time.perf_counter()
  while n < count:
    n += size(next(it))
  return n, time.perf_counter() - start


def run(quick: bool = False, data_dir: str | None = None, episodes: int | None = None,
        frames: int | None = None) -> dict[str, object]:
  cfg = {
      "source_size": 256, "image_size": 224, "cameras": 2, "chunk_len": 4,
      "episodes": episodes or (16 if quick else 60), "episode_len": 20,
      "frames": frames or (256 if quick else 2048), "batch_size": 32,
      "shuffle_buffer": 256 if quick else 2000, "augmentation": True,
  }
  tmp = tempfile.mkdtemp(prefix="vlax_data_bench_")
  data_dir = data_dir or os.path.join(tmp, "data")
  t0 = time.perf_counter()
  write_bench_data(data_dir, cfg["episodes"], cfg["episode_len"], cfg["source_size"])
  gen_s = time.perf_counter() - t0
  # ceiling, pipeline, ceiling: each iterator is dropped before the next one starts (no
  # background prefetching during another's window); averaging the two ceiling windows
  # cancels linear load drift on a shared host.
  ceil = []
  for phase in ("ceiling", "pipeline", "ceiling"):
    if phase == "ceiling":
      it, mean_bytes = ceiling_iterator(data_dir, cfg["image_size"], cfg["batch_size"])
      n, t = _timed(it, 2 * cfg["frames"], lambda b: b.shape[0])
      ceil.append(n / t)
    else:
      it = pipeline_iterator(data_dir, os.path.join(tmp, "cache"), cfg["image_size"],
                             cfg["chunk_len"], cfg["batch_size"], cfg["shuffle_buffer"])
      rss_start = _rss_mb()
      n, t = _timed(it, cfg["frames"], lambda b: b["action"].shape[0])
      pipe = {"frames_per_s": n / t, "rss_start_mb": rss_start, "rss_end_mb": _rss_mb()}
    del it
    gc.collect()
  ceiling = {"images_per_s": float(np.mean(ceil)), "mean_jpeg_bytes": mean_bytes,
             "windows": [round(c, 1) for c in ceil]}
  ceiling_frames = ceiling["images_per_s"] / cfg["cameras"]
  return {
      "benchmark": "data_throughput",
      "config": cfg,
      "cpu_count": os.cpu_count(),
      "generate_s": round(gen_s, 2),
      "mean_jpeg_bytes": round(ceiling["mean_jpeg_bytes"]),
      "decode_ceiling_images_per_s": round(ceiling["images_per_s"], 1),
      "decode_ceiling_frames_per_s": round(ceiling_frames, 1),
      "decode_ceiling_windows_images_per_s": ceiling["windows"],
      "pipeline_frames_per_s": round(pipe["frames_per_s"], 1),
      "data_vs_decode_ceiling": round(pipe["frames_per_s"] / ceiling_frames, 3),
      "rss_start_mb": round(pipe["rss_start_mb"], 1),
      "rss_end_mb": round(pipe["rss_end_mb"], 1),
      "peak_rss_mb": round(_peak_rss_mb(), 1),
  }


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--quick", action="store_true", help="small sizes (seconds)")
  p.add_argument("--json", default=None, help="write the result JSON here")
  p.add_argument("--data_dir", default=None, help="where to generate data (default tmp)")
  p.add_argument("--episodes", type=int, default=None)
  p.add_argument("--frames", type=int, default=None)
  args = p.parse_args(argv)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  r = run(args.quick, args.data_dir, args.episodes, args.frames)
  rows = [
      ("decode+resize ceiling (images/s)", r["decode_ceiling_images_per_s"]),
      ("decode+resize ceiling (frames/s, 2 cams)", r["decode_ceiling_frames_per_s"]),
      ("full pipeline (frames/s)", r["pipeline_frames_per_s"]),
      ("pipeline / ceiling", r["data_vs_decode_ceiling"]),
      ("mean JPEG size (bytes)", r["mean_jpeg_bytes"]),
      ("RSS start -> end of timed window (MB)", f"{r['rss_start_mb']} -> {r['rss_end_mb']}"),
      ("peak RSS (MB)", r["peak_rss_mb"]),
      ("CPU cores", r["cpu_count"]),
  ]
  width = max(len(k) for k, _ in rows)
  for k, v in rows:
    print(f"{k:<{width}}  {v}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(r, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
