"""openpi / LeRobot interop: LeRobot -> RLDS converter throughput and the openpi websocket
server's round trip on loopback.

  python benchmarks/ecosystem_interop.py [--input LEROBOT_DIR] [--episodes 10]
      [--frames 50] [--size 224] [--repeats 200] [--json OUT]

Converter: a LeRobot v3.0 dataset (without --input, one written here by the
`lerobot-dataset` package: two AV1 video cameras of SIZE x SIZE, 7-D state and action,
EPISODES x FRAMES frames) is read with video decode only (`LeRobotReader`, frames/s), then
converted end to end (decode + JPEG or PNG encode + TFDS write, frames/s; TensorFlow's
import, once per run, is reported apart).
Server: the debug-preset random policy of inference_latency.py (one camera) behind
`OpenPIPolicyServer` on 127.0.0.1, driven by openpi's `WebsocketClientPolicy` with a
LIBERO-style observation (two 224x224 uint8 images, 8-D state, prompt); round-trip p50/p99
next to `Policy.predict_action` in-process on the same observation, interleaved; and the
round trip of a no-op policy (the protocol's own cost: msgpack, websocket, threads).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import shutil
import sys
import tempfile
import threading
import time
import types
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "data_pipelines"))


@contextlib.contextmanager
def torchvision_stand_in():
  """lerobot-dataset imports torchvision without using it to write, and the registry's
  torchvision does not match our CPU torch: an empty module for that import when it is
  missing (also used by tests/e2e/test_lerobot_import.py). `datasets` probes for
  torchvision with find_spec when imported, so it is imported first."""
  if importlib.util.find_spec("torchvision") is not None:
    yield
    return
  import datasets  # pylint: disable=g-import-not-at-top,unused-import
  tv = types.ModuleType("torchvision")
  tv.transforms = types.ModuleType("torchvision.transforms")
  sys.modules["torchvision"], sys.modules["torchvision.transforms"] = tv, tv.transforms
  try:
    yield
  finally:
    del sys.modules["torchvision"], sys.modules["torchvision.transforms"]


def write_lerobot(root: str, episodes: int, frames: int, size: int) -> float:
  """A synthetic LeRobot v3.0 dataset (moving gradients, two video cameras); seconds."""
  with torchvision_stand_in():
    from ledataset.datasets.lerobot_dataset import LeRobotDataset  # pylint: disable=g-import-not-at-top
  img = {"dtype": "video", "shape": (size, size, 3), "names": ["height", "width", "channels"]}
  features = {"observation.images.image": img, "observation.images.wrist_image": img,
              "observation.state": {"dtype": "float32", "shape": (7,), "names": None},
              "action": {"dtype": "float32", "shape": (7,), "names": None}}
  t0 = time.perf_counter()
  ds = LeRobotDataset.create("bench/interop", fps=10, root=root, features=features,
                             use_videos=True)
  rng = np.random.default_rng(0)
  y, x = np.mgrid[0:size, 0:size]
  for e in range(episodes):
    for i in range(frames):
      a = np.stack([x + 3 * i, y + 2 * i, x + y + e], -1) % 256
      ds.add_frame({"observation.images.image": a.astype(np.uint8),
                    "observation.images.wrist_image": (255 - a).astype(np.uint8),
                    "observation.state": rng.normal(size=7).astype(np.float32),
                    "action": rng.normal(size=7).astype(np.float32), "task": "pick up"})
    ds.save_episode(parallel_encoding=False)  # no fork of a process running JAX
  ds.finalize()
  return time.perf_counter() - t0


def bench_converter(root: str) -> dict[str, Any]:
  import convert_lerobot_to_rlds as lr  # pylint: disable=g-import-not-at-top
  reader = lr.LeRobotReader(root)
  n = sum(e["length"] for e in reader.episodes)
  cams = len(reader.cameras)
  t0 = time.perf_counter()
  for _ in reader:
    pass
  read_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  from vlax.data import rlds  # pylint: disable=g-import-not-at-top,unused-import
  result = {"frames": n, "cameras": cams, "codec": "av1",
            "read_decode_s": read_s, "read_decode_frames_per_s": n / read_s,
            "tensorflow_import_s": time.perf_counter() - t0}  # once per conversion, not timed below
  for encoding in ("jpeg", "png"):
    out = tempfile.mkdtemp(prefix="vlax_interop_rlds_")
    try:
      t0 = time.perf_counter()
      lr.convert_lerobot(root, "interop_bench", out, image_encoding=encoding)
      convert_s = time.perf_counter() - t0
    finally:
      shutil.rmtree(out, ignore_errors=True)
    result[f"convert_{encoding}_s"] = convert_s
    result[f"convert_{encoding}_frames_per_s"] = n / convert_s
  return result


class _NoOpPolicy:
  """Answers zeros at once: what is left of a round trip is the protocol's own cost."""

  chunk_len, cameras, statistics = 4, ("primary",), {"noop": {"action": {"mean": [0] * 7}}}
  seq = types.SimpleNamespace(proprio_bins=0)

  def _resolve_dataset(self, dataset):
    del dataset
    return "noop"

  def action_dim(self, dataset):
    del dataset
    return 7

  def predict_action(self, observation, instruction, dataset=None):
    del observation, instruction, dataset
    return np.zeros((4, 7), np.float32)


def _round_trips(app, request, repeats: int, local=None) -> dict[str, dict[str, Any]]:
  from openpi_client.websocket_client_policy import WebsocketClientPolicy  # pylint: disable=g-import-not-at-top
  server = app.make_server("127.0.0.1", 0)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  try:
    client = WebsocketClientPolicy(host="127.0.0.1", port=server.socket.getsockname()[1])
    fns = {"round_trip": lambda: client.infer(request)}
    if local is not None:
      fns["in_process"] = local
    return common.time_interleaved(fns, warmup=3, repeats=repeats)
  finally:
    server.shutdown()
    thread.join(timeout=10)


def bench_server(repeats: int) -> dict[str, Any]:
  from inference_latency import make_benchmark_policy  # pylint: disable=g-import-not-at-top
  from vlax.inference.openpi_server import OpenPIPolicyServer  # pylint: disable=g-import-not-at-top
  policy, obs, prompt = make_benchmark_policy("debug")
  rng = np.random.default_rng(1)
  request = {"observation/image": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
             "observation/wrist_image": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
             "observation/state": rng.normal(size=8).astype(np.float32), "prompt": prompt}
  local_obs = {"image_primary": request["observation/image"]}
  timings = _round_trips(OpenPIPolicyServer(policy, "bench_robot"), request, repeats,
                         lambda: policy.predict_action(local_obs, prompt))
  noop = _round_trips(OpenPIPolicyServer(_NoOpPolicy(), "noop"), request, repeats)
  rt, ip = timings["round_trip"], timings["in_process"]
  return {"request_bytes": 2 * 224 * 224 * 3 + 8 * 4,
          "round_trip_p50_s": rt["p50"], "round_trip_p99_s": rt["p99"],
          "in_process_p50_s": ip["p50"], "in_process_p99_s": ip["p99"],
          "noop_round_trip_p50_s": noop["round_trip"]["p50"],
          "noop_round_trip_p99_s": noop["round_trip"]["p99"], "repeats": repeats}


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--input", default=None, help="an existing LeRobot dataset to convert")
  p.add_argument("--episodes", type=int, default=10)
  p.add_argument("--frames", type=int, default=50)
  p.add_argument("--size", type=int, default=224)
  p.add_argument("--repeats", type=int, default=200)
  p.add_argument("--skip", default="", help="converter and/or server")
  p.add_argument("--json", default=None)
  args = p.parse_args(argv)
  result: dict[str, Any] = {"machine": common.machine_info()}
  if "converter" not in args.skip:
    root, tmp = args.input, None
    if root is None:
      tmp = tempfile.mkdtemp(prefix="vlax_interop_lerobot_")
      root = os.path.join(tmp, "ds")
      result["write_lerobot_s"] = write_lerobot(root, args.episodes, args.frames, args.size)
    try:
      result["converter"] = bench_converter(root)
    finally:
      if tmp:
        shutil.rmtree(tmp, ignore_errors=True)
  if "server" not in args.skip:
    result["server"] = bench_server(args.repeats)
  rows = [(k, v) for k, v in common.flat_numbers(result) if not k.startswith("machine")]
  print(common.table(rows, ["figure", "value"]))
  common.write_json(args.json, result)
  return 0


if __name__ == "__main__":
  sys.exit(main())
