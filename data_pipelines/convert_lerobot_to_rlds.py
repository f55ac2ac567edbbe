"""Converts a local LeRobot dataset (codebase v3.0 or v2.1) into RLDS (TFDS format) and
prints the `DatasetSpec` registration for it, like convert_episodes_to_rlds.py (whose
RLDS writer and registration printer this reuses).

  python data_pipelines/convert_lerobot_to_rlds.py --input ~/lerobot/my_robot \
      --name my_robot --data_dir ~/vlax_data

What maps to what (LeRobot feature -> RLDS step):
  observation.images.<cam> (video or image)  -> observation/image_<cam>  uint8 [H, W, 3]
  observation.state                          -> observation/state        float32 [P]
  action                                     -> action                   float32 [A]
  task (task_index -> meta tasks)            -> language_instruction
  episode_index / frame_index                -> one RLDS episode, steps in frame order
Video frames are decoded (PyAV: AV1, H.264, ...) at each frame's own timestamp (v3.0:
the episode's `from_timestamp` in its shared file + the frame's `timestamp`), the nearest
frame within half a frame period, and stored as JPEG (quality 95) or PNG
(`--image_encoding png`, lossless). fps, the source version and the feature names are kept
in the dataset's description and in `lerobot_source.json` beside it. Episodes stream one
at a time (bounded RAM). Why a converter and not a direct reader: the whole vlax data
path (registry, statistics cache, tf.data pipeline with parallel decode) reads RLDS; one
conversion keeps it that way and costs one pass over the videos.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from typing import Any, Iterator

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import convert_episodes_to_rlds as episodes_rlds  # pylint: disable=g-import-not-at-top,wrong-import-position

from vlax.errors import VlaxError  # pylint: disable=wrong-import-position

SUPPORTED_VERSIONS = ("v2.1", "v3.0")
STATE_KEY, ACTION_KEY = "observation.state", "action"
SEEK_AHEAD_S = 2.0  # a video read jumps (seeks) rather than decode further ahead than this


def camera_name(key: str) -> str:
  """'observation.images.front' -> 'front'; 'observation.image' -> 'image'."""
  for prefix in ("observation.images.", "observation."):
    if key.startswith(prefix):
      key = key[len(prefix):]
      break
  return key.replace(".", "_").replace("/", "_")


def read_info(root: str) -> dict[str, Any]:
  """meta/info.json, checked: a LeRobot dataset of a supported version with an action."""
  path = os.path.join(root, "meta", "info.json")
  if not os.path.isdir(root):
    raise VlaxError(f"{root}: no such directory")
  if not os.path.exists(path):
    raise VlaxError(f"{root} is not a LeRobot dataset (no meta/info.json)")
  try:
    with open(path) as f:
      info = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise VlaxError(f"{path}: not readable JSON ({e})") from None
  version = info.get("codebase_version")
  if version not in SUPPORTED_VERSIONS:
    raise VlaxError(f"{path}: LeRobot codebase_version {version!r} is not supported "
                    f"(supported: {', '.join(SUPPORTED_VERSIONS)}; convert older datasets "
                    f"with LeRobot's own upgrade scripts first)")
  features = info.get("features") or {}
  if ACTION_KEY not in features:
    raise VlaxError(f"{path}: no 'action' feature (features: {sorted(features)})")
  if not info.get("fps"):
    raise VlaxError(f"{path}: no 'fps'")
  return info


def _read_jsonl(path: str) -> list[dict[str, Any]]:
  if not os.path.exists(path):
    raise VlaxError(f"missing LeRobot metadata file {path}")
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def read_episodes(root: str, info: dict[str, Any]) -> tuple[list[dict[str, Any]],
                                                           dict[int, str]]:
  """[{episode_index, length, data file, videos: {key: (file, from_timestamp)}}], tasks."""
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  video_keys = [k for k, f in info["features"].items() if f.get("dtype") == "video"]
  if info["codebase_version"] == "v2.1":
    tasks = {int(t["task_index"]): str(t["task"])
             for t in _read_jsonl(os.path.join(root, "meta", "tasks.jsonl"))}
    chunk = int(info.get("chunks_size", 1000))
    episodes = []
    for ep in _read_jsonl(os.path.join(root, "meta", "episodes.jsonl")):
      i = int(ep["episode_index"])
      fmt = {"episode_chunk": i // chunk, "episode_index": i}
      episodes.append({
          "episode_index": i, "length": int(ep["length"]),
          "data": os.path.join(root, info["data_path"].format(**fmt)),
          "videos": {k: (os.path.join(root, info["video_path"].format(video_key=k, **fmt)),
                         0.0) for k in video_keys}})
    return episodes, tasks
  tasks_path = os.path.join(root, "meta", "tasks.parquet")
  if not os.path.exists(tasks_path):
    raise VlaxError(f"missing LeRobot metadata file {tasks_path}")
  t = pq.read_table(tasks_path).to_pandas()
  tasks = {int(i): str(name) for name, i in zip(t.index, t["task_index"])}
  ep_dir = os.path.join(root, "meta", "episodes")
  files = sorted(os.path.join(d, f) for d, _, fs in os.walk(ep_dir) for f in fs
                 if f.endswith(".parquet"))
  if not files:
    raise VlaxError(f"missing LeRobot episode metadata ({ep_dir}/*/*.parquet)")
  episodes = []
  for path in files:
    for ep in pq.read_table(path).to_pylist():
      try:
        episodes.append(_v30_episode(root, info, ep, video_keys))
      except KeyError as e:
        raise VlaxError(f"{path}: episode metadata lacks column {e}") from None
  return sorted(episodes, key=lambda e: e["episode_index"]), tasks


def _v30_episode(root: str, info: dict[str, Any], ep: dict[str, Any],
                 video_keys: list[str]) -> dict[str, Any]:
  fmt = {"chunk_index": ep["data/chunk_index"], "file_index": ep["data/file_index"]}
  videos = {}
  for k in video_keys:
    vfmt = {"chunk_index": ep[f"videos/{k}/chunk_index"],
            "file_index": ep[f"videos/{k}/file_index"]}
    videos[k] = (os.path.join(root, info["video_path"].format(video_key=k, **vfmt)),
                 float(ep[f"videos/{k}/from_timestamp"]))
  return {"episode_index": int(ep["episode_index"]), "length": int(ep["length"]),
          "data": os.path.join(root, info["data_path"].format(**fmt)), "videos": videos}


class VideoFrames:
  """One video file, read forward: the frame nearest each requested time (seconds)."""

  def __init__(self, path: str, tolerance_s: float):
    # PyAV (the [lerobot] extra) bundles FFmpeg with AV1 decoding (dav1d): only needed here.
    import av  # pylint: disable=g-import-not-at-top
    self.path, self.tolerance_s = path, tolerance_s
    try:
      self._container = av.open(path)
    except (OSError, av.FFmpegError) as e:
      raise VlaxError(f"{path}: not a readable video ({e})") from None
    self._stream = self._container.streams.video[0]
    self._stream.thread_type = "AUTO"
    self._frames = self._container.decode(self._stream)
    self._cur = None  # (time_s, av.VideoFrame)

  def _time(self, frame) -> float:
    return float(frame.pts * self._stream.time_base)

  def _seek(self, t: float) -> None:
    """Restarts decoding at the keyframe at or before t - 1 s."""
    self._container.seek(int(max(t - 1.0, 0.0) / self._stream.time_base), backward=True,
                         stream=self._stream)
    self._frames = self._container.decode(self._stream)
    self._cur = None

  def at(self, t: float) -> np.ndarray:
    now = self._cur[0] if self._cur is not None else 0.0
    if now > t + self.tolerance_s or t - now > SEEK_AHEAD_S:  # backwards, or far ahead
      self._seek(t)
    while self._cur is None or self._cur[0] < t - self.tolerance_s:
      try:
        frame = next(self._frames)
      except StopIteration:
        raise VlaxError(f"{self.path}: no frame at {t:.4f} s (the video ends before)"
                        ) from None
      self._cur = (self._time(frame), frame)
    if abs(self._cur[0] - t) > self.tolerance_s:
      raise VlaxError(f"{self.path}: no frame within {self.tolerance_s:.4f} s of {t:.4f} s "
                      f"(nearest at {self._cur[0]:.4f} s)")
    return self._cur[1].to_ndarray(format="rgb24")

  def close(self) -> None:
    self._container.close()


def _image_cell(cell: Any, root: str, key: str) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  data = cell.get("bytes") if isinstance(cell, dict) else None
  src = io.BytesIO(data) if data else None
  if src is None:
    rel = cell.get("path") if isinstance(cell, dict) else None
    path = os.path.join(root, rel) if rel else None
    if not path or not os.path.exists(path):
      raise VlaxError(f"image feature {key!r}: a frame has no bytes and no file ({path})")
    src = path
  with Image.open(src) as img:
    return np.asarray(img.convert("RGB"), np.uint8)


def encode_frame(image: np.ndarray, encoding: str) -> bytes:
  """uint8 [H, W, 3] -> PNG (fast zlib level 1) or JPEG (quality 95) bytes, which TFDS
  stores as they are: PIL here is ~5x (PNG) to ~80x (JPEG) faster than TFDS's own encode."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  if encoding == "png":
    Image.fromarray(image).save(buf, format="PNG", compress_level=1)
  else:
    Image.fromarray(image).save(buf, format="JPEG", quality=95)
  return buf.getvalue()


class LeRobotReader:
  """Episodes of a local LeRobot dataset, parsed like `parse_episode` returns them.

  image_encoding: None -> frames as uint8 arrays; "png" / "jpeg" -> encoded bytes per frame.
  """

  def __init__(self, root: str, image_encoding: str | None = None):
    self.root = root
    self.image_encoding = image_encoding
    self.info = read_info(root)
    self.fps = float(self.info["fps"])
    try:
      self.episodes, self.tasks = read_episodes(root, self.info)
    except (KeyError, ValueError, TypeError) as e:  # a field missing or of the wrong type
      raise VlaxError(f"{root}: malformed LeRobot metadata ({type(e).__name__}: {e})"
                      ) from None
    if not self.episodes:
      raise VlaxError(f"{root}: the LeRobot dataset has no episodes")
    feats = self.info["features"]
    self.cameras = {k: f["dtype"] for k, f in feats.items() if f.get("dtype") in
                    ("video", "image")}
    self.has_state = STATE_KEY in feats
    self._check_files()
    self._table = (None, None)  # (path, pandas frame) of the data file being read
    self._videos: dict[str, VideoFrames] = {}

  def _check_files(self) -> None:
    """Every data and video file is there (before anything is written)."""
    for ep in self.episodes:
      if not os.path.exists(ep["data"]):
        raise VlaxError(f"missing LeRobot data file {ep['data']} (episode "
                        f"{ep['episode_index']})")
      for key, (path, _) in ep["videos"].items():
        if not os.path.exists(path):
          raise VlaxError(f"missing video file {path} (feature {key!r}, episode "
                          f"{ep['episode_index']})")

  def _rows(self, ep: dict[str, Any]):
    import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
    if self._table[0] != ep["data"]:
      self._table = (ep["data"], pq.read_table(ep["data"]).to_pandas())
    df = self._table[1]
    rows = df[df["episode_index"] == ep["episode_index"]].sort_values("frame_index")
    if len(rows) != ep["length"]:
      raise VlaxError(f"{ep['data']}: episode {ep['episode_index']} has {len(rows)} frames, "
                      f"its metadata says {ep['length']}")
    return rows

  def _video(self, key: str, path: str) -> VideoFrames:
    """The open reader of camera `key` (v3.0: one file holds many episodes, read on)."""
    if key not in self._videos or self._videos[key].path != path:
      if key in self._videos:
        self._videos[key].close()
      self._videos[key] = VideoFrames(path, 0.5 / self.fps)
    return self._videos[key]

  def episode(self, ep: dict[str, Any]) -> dict[str, Any]:
    rows = self._rows(ep)
    t = len(rows)
    action = np.stack(rows[ACTION_KEY].to_numpy()).astype(np.float32).reshape(t, -1)
    state = (np.stack(rows[STATE_KEY].to_numpy()).astype(np.float32).reshape(t, -1)
             if self.has_state else np.zeros((t, 0), np.float32))
    images = {}
    for key, kind in self.cameras.items():
      if kind == "image":
        frames = [_image_cell(c, self.root, key) for c in rows[key]]
      else:
        path, start = ep["videos"][key]
        video = self._video(key, path)
        frames = [video.at(start + float(ts)) for ts in rows["timestamp"]]
      if self.image_encoding:
        images[camera_name(key)] = [encode_frame(f, self.image_encoding) for f in frames]
      else:
        images[camera_name(key)] = np.stack(frames)
    unknown = sorted({int(i) for i in rows["task_index"]} - set(self.tasks))
    if unknown:
      raise VlaxError(f"{ep['data']}: episode {ep['episode_index']} uses task_index "
                      f"{unknown}, not in the dataset's tasks metadata")
    language = [self.tasks[int(i)] for i in rows["task_index"]]
    return {"images": images, "state": state, "action": action, "language": language}

  def __iter__(self) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
      for ep in self.episodes:
        yield f"{self.root}#episode_{ep['episode_index']:06d}", self.episode(ep)
    finally:
      for v in self._videos.values():
        v.close()


def _examples(first: tuple[str, dict[str, Any]], rest: Iterator[tuple[str, dict[str, Any]]]
              ) -> Iterator[dict[str, Any]]:
  yield episodes_rlds.episode_example(first[1], first[0])
  for name, ep in rest:
    yield episodes_rlds.episode_example(ep, name)


def gripper_dims(info: dict[str, Any]) -> list[int] | None:
  """Action dimensions whose LeRobot name says gripper (None: names unknown -> guess)."""
  names = info["features"][ACTION_KEY].get("names")
  if isinstance(names, dict):  # {"motors": [...]} in some datasets
    names = next(iter(names.values()), None)
  if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
    return None
  return [i for i, n in enumerate(names) if "gripper" in n.lower()]


def convert_lerobot(input_dir: str, name: str, data_dir: str, *, version: str = "1.0.0",
                    image_encoding: str = "jpeg", num_shards: int = 1) -> tuple[str, str]:
  """Converts the LeRobot dataset at `input_dir`; returns (dataset dir, registration)."""
  from vlax.data import rlds  # pylint: disable=g-import-not-at-top
  if image_encoding not in ("jpeg", "png"):
    raise VlaxError(f"image_encoding must be jpeg or png, got {image_encoding!r}")
  reader = LeRobotReader(input_dir, image_encoding)
  episodes = iter(reader)
  first = next(episodes)
  source = {"source": os.path.abspath(input_dir), "format": "lerobot",
            "codebase_version": reader.info["codebase_version"], "fps": reader.fps,
            "robot_type": reader.info.get("robot_type"),
            "features": {k: {"dtype": f.get("dtype"), "shape": f.get("shape"),
                             "names": f.get("names")}
                         for k, f in reader.info["features"].items()},
            "num_episodes": len(reader.episodes)}
  path = rlds.write_rlds(name, data_dir,
                         episodes_rlds.rlds_features(first[1], image_encoding),
                         _examples(first, episodes), version=version, num_shards=num_shards,
                         description=f"converted from LeRobot: {json.dumps(source)}")
  with open(os.path.join(path, "lerobot_source.json"), "w") as f:
    json.dump(source, f, indent=1)
  template = episodes_rlds.registry_template(
      name, version, first[1], [e["episode_index"] for e in reader.episodes],
      gripper_dims(reader.info))
  return path, f"# LeRobot {reader.info['codebase_version']} at {reader.fps:g} fps\n{template}"


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--input", required=True, help="LeRobot dataset root (has meta/info.json)")
  p.add_argument("--name", required=True, help="dataset (and registry) name")
  p.add_argument("--data_dir", required=True, help="output root")
  p.add_argument("--version", default="1.0.0")
  p.add_argument("--image_encoding", default="jpeg", choices=("jpeg", "png"),
                 help="how frames are stored in RLDS: jpeg (quality 95; small, fast to "
                      "read in training) or png (lossless)")
  p.add_argument("--num_shards", type=int, default=1)
  args = p.parse_args(argv)
  # TensorFlow's C++ INFO/oneDNN lines stay out of the terminal (set before TF loads).
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
  return episodes_rlds.report(lambda: convert_lerobot(args.input, args.name, args.data_dir,
                                                     version=args.version,
                                                     image_encoding=args.image_encoding,
                                                     num_shards=args.num_shards))


if __name__ == "__main__":
  sys.exit(main())
