"""LeRobot datasets in: v3.0 written by the real LeRobot dataset package (`lerobot-dataset`,
AV1 video + PNG image camera), v2.1 laid out here from the documented format; converted to
RLDS, registered from the printed spec, then `vlax stats`, `inspect-data`, `train` and
`eval` run on it.

lerobot-dataset imports `torchvision` at module level but does not use it to write
datasets, and the registry's torchvision wheels do not match the pinned CPU torch. So
when torchvision is not importable, `_import_lerobot` puts an empty stand-in module in
`sys.modules` for that one import and removes it afterwards (test-only; nothing in vlax
imports LeRobot).
"""

import importlib.util
import io
import json
import os
import shutil
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "data_pipelines"))

import convert_lerobot_to_rlds as lr  # pylint: disable=g-import-not-at-top,wrong-import-position

sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import ecosystem_interop  # pylint: disable=g-import-not-at-top,wrong-import-position  (its torchvision stand-in)


def _need(module):
  """Skipped where the [lerobot] extra is not installed, but an error in CI (.ci/run)."""
  return importlib.import_module(module) if os.environ.get("CI") else (
      pytest.importorskip(module))


av = _need("av")
pq = _need("pyarrow.parquet")
pa = _need("pyarrow")

FPS = 10
LENGTHS = (6, 8, 5)
TASKS = ("pick up the cup", "open the drawer")
VIDEO_HW, IMAGE_HW = (48, 64), (32, 32)


def _import_lerobot():
  _need("datasets")
  if importlib.util.find_spec("ledataset") is None and not os.environ.get("CI"):
    pytest.skip("lerobot-dataset is not installed")
  with ecosystem_interop.torchvision_stand_in():
    from ledataset.datasets.lerobot_dataset import LeRobotDataset  # pylint: disable=g-import-not-at-top
  return LeRobotDataset


def _video_frame(g):
  """Smooth frames (codec-friendly), each a different brightness: a wrong timestamp shows."""
  y, x = np.mgrid[0:VIDEO_HW[0], 0:VIDEO_HW[1]]
  base = 20 + (g * 9) % 180
  img = np.stack([base + x // 2, base + y // 2, base + (x + y) // 4], -1)
  return np.clip(img, 0, 255).astype(np.uint8)


def _image_frame(rng):
  """Random 16 x 16 blocks of colour (JPEG-friendly, different in every frame)."""
  blocks = rng.integers(0, 256, (IMAGE_HW[0] // 16, IMAGE_HW[1] // 16, 3), dtype=np.uint8)
  return np.kron(blocks, np.ones((16, 16, 1), np.uint8))


def make_episodes(seed=0):
  rng = np.random.default_rng(seed)
  episodes, g = [], 0
  for e, t in enumerate(LENGTHS):
    gripper = (rng.random((t, 1)) > 0.5).astype(np.float32)
    episodes.append({
        "front": np.stack([_video_frame(g + i) for i in range(t)]),
        "wrist": np.stack([_image_frame(rng) for _ in range(t)]),
        "state": rng.normal(size=(t, 3)).astype(np.float32),
        "action": np.concatenate([rng.normal(size=(t, 3)), gripper], 1).astype(np.float32),
        "task": TASKS[e % 2]})
    g += t
  return episodes


FEATURES = {
    "observation.images.front": {"dtype": "video", "shape": VIDEO_HW + (3,),
                                 "names": ["height", "width", "channels"]},
    "observation.images.wrist": {"dtype": "image", "shape": IMAGE_HW + (3,),
                                 "names": ["height", "width", "channels"]},
    "observation.state": {"dtype": "float32", "shape": (3,), "names": ["j0", "j1", "j2"]},
    "action": {"dtype": "float32", "shape": (4,), "names": ["dx", "dy", "dz", "gripper"]},
}


def write_v30(root, episodes):
  """The real LeRobot package writes the dataset (v3.0, AV1 in MP4)."""
  dataset = _import_lerobot().create("vlax_test/tiny", fps=FPS, root=str(root),
                                     features=FEATURES, use_videos=True)
  for ep in episodes:
    for i in range(len(ep["action"])):
      dataset.add_frame({"observation.images.front": ep["front"][i],
                         "observation.images.wrist": ep["wrist"][i],
                         "observation.state": ep["state"][i], "action": ep["action"][i],
                         "task": ep["task"]})
    dataset.save_episode(parallel_encoding=False)  # no fork of a process running JAX
  dataset.finalize()
  return str(root)


def _png(img):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, format="PNG")
  return buf.getvalue()


def _write_mp4(path, frames):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with av.open(path, "w") as out:
    stream = out.add_stream("libsvtav1", rate=FPS)
    stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
    for f in frames:
      for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
        out.mux(packet)
    for packet in stream.encode():
      out.mux(packet)


def write_v21(root, episodes):
  """A v2.1 dataset from the documented layout: per-episode parquet and MP4 files."""
  os.makedirs(os.path.join(root, "meta"))
  info = {"codebase_version": "v2.1", "robot_type": "test", "fps": FPS,
          "total_episodes": len(episodes), "chunks_size": 1000,
          "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
          "video_path": ("videos/chunk-{episode_chunk:03d}/{video_key}/"
                         "episode_{episode_index:06d}.mp4"),
          "features": {k: dict(v, shape=list(v["shape"])) for k, v in FEATURES.items()}}
  with open(os.path.join(root, "meta", "info.json"), "w") as f:
    json.dump(info, f)
  with open(os.path.join(root, "meta", "tasks.jsonl"), "w") as f:
    for i, task in enumerate(TASKS):
      f.write(json.dumps({"task_index": i, "task": task}) + "\n")
  index = 0
  with open(os.path.join(root, "meta", "episodes.jsonl"), "w") as f:
    for e, ep in enumerate(episodes):
      t = len(ep["action"])
      f.write(json.dumps({"episode_index": e, "tasks": [ep["task"]], "length": t}) + "\n")
      table = pa.table({
          "observation.images.wrist": [{"bytes": _png(x), "path": None} for x in ep["wrist"]],
          "observation.state": list(ep["state"]), "action": list(ep["action"]),
          "timestamp": np.arange(t, dtype=np.float32) / FPS,
          "frame_index": np.arange(t), "episode_index": np.full(t, e),
          "index": np.arange(index, index + t), "task_index": np.full(t, TASKS.index(ep["task"]))})
      index += t
      path = os.path.join(root, info["data_path"].format(episode_chunk=0, episode_index=e))
      os.makedirs(os.path.dirname(path), exist_ok=True)
      pq.write_table(table, path)
      _write_mp4(os.path.join(root, info["video_path"].format(
          episode_chunk=0, episode_index=e, video_key="observation.images.front")),
          ep["front"])
  return str(root)


def read_rlds(path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  ds = tfds.builder_from_directory(path).as_dataset(split="train")
  episodes = []
  for ep in tfds.as_numpy(ds):
    steps = list(ep["steps"])
    stacked = {k: np.stack([s[k] for s in steps]) for k in steps[0] if k != "observation"}
    stacked["observation"] = {k: np.stack([s["observation"][k] for s in steps])
                              for k in steps[0]["observation"]}
    episodes.append((ep["episode_metadata"]["file_path"].decode(), stacked))
  return [steps for _, steps in sorted(episodes, key=lambda e: e[0])]


def check_converted(path, episodes, png=True):
  """Actions, states, language and episode boundaries exact; images within codec error
  (the PNG image camera exact when stored as PNG)."""
  got = read_rlds(path)
  assert len(got) == len(episodes)
  for steps, ep in zip(got, episodes):
    np.testing.assert_array_equal(steps["action"], ep["action"])
    np.testing.assert_array_equal(steps["observation"]["state"], ep["state"])
    wrist = steps["observation"]["image_wrist"]
    if png:
      np.testing.assert_array_equal(wrist, ep["wrist"])
    else:  # JPEG quality 95
      assert np.abs(wrist.astype(np.float32) - ep["wrist"]).mean() < 4.0
    assert [s.decode() for s in steps["language_instruction"]] == [ep["task"]] * len(ep["action"])
    assert steps["is_first"].tolist() == [True] + [False] * (len(ep["action"]) - 1)
    assert steps["is_last"].tolist() == [False] * (len(ep["action"]) - 1) + [True]
    front = steps["observation"]["image_front"].astype(np.float32)
    err = np.abs(front - ep["front"]).mean(axis=(1, 2, 3))
    assert err.max() < (3.0 if png else 4.0), err  # AV1 (LeRobot's settings), smooth frames
    # Each decoded frame is its own source frame, not a neighbour (the right timestamp).
    for i in range(len(front)):
      for j in (i - 1, i + 1):
        if 0 <= j < len(front):
          assert err[i] < np.abs(front[i] - ep["front"][j]).mean()
  src = json.load(open(os.path.join(path, "lerobot_source.json")))
  assert src["fps"] == FPS and src["num_episodes"] == len(episodes)


@pytest.fixture(scope="module")
def v30(tmp_path_factory):
  episodes = make_episodes()
  return write_v30(tmp_path_factory.mktemp("lerobot") / "v30", episodes), episodes


@pytest.fixture(scope="module")
def v21(tmp_path_factory):
  episodes = make_episodes(seed=1)
  return write_v21(str(tmp_path_factory.mktemp("lerobot") / "v21"), episodes), episodes


def test_v30_from_lerobot_trains_and_evaluates(v30, tmp_path, capsys):
  from vlax import cli  # pylint: disable=g-import-not-at-top
  root, episodes = v30
  with open(os.path.join(root, "meta", "info.json")) as f:
    assert json.load(f)["codebase_version"] == "v3.0"
  data_dir = str(tmp_path / "rlds")
  assert lr.main(["--input", root, "--name", "lerobot_v30_test", "--data_dir", data_dir,
                  "--image_encoding", "png"]) == 0
  template = capsys.readouterr().out
  assert "image_keys={'primary': 'image_front', 'wrist': 'image_wrist'}" in template
  assert "action_normalization_mask=(True, True, True, False)" in template  # named gripper
  check_converted(os.path.join(data_dir, "lerobot_v30_test", "1.0.0"), episodes)

  exec(compile(template, "lerobot_v30_test_spec", "exec"), {})  # registers the dataset
  assert cli.main(["stats", "--dataset", "lerobot_v30_test", "--data-dir", data_dir]) == 0
  stats = json.loads(capsys.readouterr().out)
  assert stats["num_trajectories"] == 3 and stats["num_transitions"] == sum(LENGTHS)
  assert cli.main(["inspect-data", "--dataset", "lerobot_v30_test", "--data-dir", data_dir,
                   "--batch-size", "2"]) == 0
  assert "lerobot_v30_test" in capsys.readouterr().out
  work = str(tmp_path / "work")
  assert cli.main([
      "train", "--workdir", work, "--config.model.preset=tiny",
      "--config.data.image_size=32", "--config.batch_size=8", "--config.num_steps=2",
      "--config.data.robot_datasets=lerobot_v30_test", f"--config.data.data_dir={data_dir}",
      "--config.data.web_weight=0.0", "--config.data.shuffle_buffer=8",
      "--config.logging.progress=False", "--config.logging.tensorboard=False",
      "--config.async_checkpointing=False", "--config.eval_every=0"]) == 0
  out = str(tmp_path / "eval")
  assert cli.main(["eval", "--checkpoint", os.path.join(work, "checkpoints"), "--out", out,
                   "--max-batches", "1"]) == 0
  assert os.path.exists(os.path.join(out, "report.json"))


def test_v21_layout_converts(v21, tmp_path):
  root, episodes = v21
  path, template = lr.convert_lerobot(root, "lerobot_v21_test", str(tmp_path / "rlds"))
  assert "LeRobot v2.1 at 10 fps" in template
  check_converted(path, episodes, png=False)  # the default: JPEG


def test_video_frames_in_any_order(tmp_path):
  """Backwards and far-ahead requests (seeks) give the same frames as a straight decode."""
  frames = np.stack([_video_frame(g) for g in range(60)])  # 6 s at 10 fps
  path = str(tmp_path / "v.mp4")
  _write_mp4(path, frames)
  with av.open(path) as c:
    straight = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
  reader = lr.VideoFrames(path, 0.5 / FPS)
  order = [0, 1, 45, 46, 10, 59, 3, 30, 29]
  for i in order:
    np.testing.assert_array_equal(reader.at(i / FPS), straight[i])
  with pytest.raises(lr.VlaxError, match="no frame at 6.5"):
    reader.at(6.5)
  reader.close()


def test_bad_inputs_one_line_errors(v21, tmp_path, capsys):
  root, _ = v21
  (tmp_path / "not_lerobot").mkdir()
  bad_version = str(tmp_path / "old")
  shutil.copytree(root, bad_version)
  info_path = os.path.join(bad_version, "meta", "info.json")
  info = json.load(open(info_path))
  json.dump(dict(info, codebase_version="v1.6"), open(info_path, "w"))
  no_video = str(tmp_path / "no_video")
  shutil.copytree(root, no_video)
  os.remove(os.path.join(no_video, "videos", "chunk-000", "observation.images.front",
                         "episode_000001.mp4"))
  for src, msg in [(str(tmp_path / "not_lerobot"), "is not a LeRobot dataset"),
                   (bad_version, "codebase_version 'v1.6' is not supported"),
                   (no_video, "missing video file")]:
    rc = lr.main(["--input", src, "--name", "bad", "--data_dir", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and msg in err and len(err.splitlines()) == 1, err
  assert "episode 1" in err and "episode_000001.mp4" in err
