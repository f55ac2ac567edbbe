"""RLDS reader: split slicing, per-host sharding, encoded images, and clear errors."""

import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from vlax.data import rlds, robot
from vlax.data.oxe import registry, toy
from vlax.data.oxe.registry import ActionEncoding, DatasetSpec
from vlax.errors import VlaxError

NUM_EPISODES = 12


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("rlds_toy"))
  toy.write_toy_robot_data(d, num_episodes=NUM_EPISODES, image_size=16, episode_len=4,
                           num_shards=4, datasets=("toy_reach_a",))
  return d


def _episode_ids(ds):
  out = []
  for t in ds.as_numpy_iterator():
    ids = t["episode_metadata"]["episode_id"]
    assert (ids == ids[0]).all()
    out.append(int(ids[0]))
  return out


def _files(ds):
  return {t["_episode_id"][0].decode().split("__")[0] for t in ds.as_numpy_iterator()}


def test_reads_trajectories_with_encoded_images(toy_dir):
  ds = rlds.read_trajectories("toy_reach_a", toy_dir, process_index=0, process_count=1)
  trajs = list(ds.as_numpy_iterator())
  assert len(trajs) == NUM_EPISODES
  t = trajs[0]
  assert t["action"].shape == (4, 3) and t["action"].dtype == np.float32
  assert t["observation"]["state"].shape == (4, 2)
  img = t["observation"]["image"]
  assert img.shape == (4,) and img.dtype == object and img[0][:2] == b"\xff\xd8"
  assert t["episode_metadata"]["episode_id"].shape == (4,)
  assert t["_episode_id"][0].decode().startswith("toy_reach_a-train.tfrecord")
  assert t["language_instruction"][0].startswith(b"move to the")


def test_split_slicing_is_disjoint_and_complete(toy_dir):
  a = _episode_ids(rlds.read_trajectories("toy_reach_a", toy_dir, split="train[:75%]",
                                          process_index=0, process_count=1))
  b = _episode_ids(rlds.read_trajectories("toy_reach_a", toy_dir, split="train[75%:]",
                                          process_index=0, process_count=1))
  assert len(a) == 9 and len(b) == 3
  assert not set(a) & set(b)
  assert sorted(a + b) == list(range(NUM_EPISODES))


def test_per_host_sharding_reads_disjoint_files(toy_dir):
  hosts = [rlds.read_trajectories("toy_reach_a", toy_dir, process_index=i, process_count=2)
           for i in range(2)]
  ids = [_episode_ids(h) for h in hosts]
  files = [_files(h) for h in hosts]
  assert ids[0] and ids[1]
  assert not set(ids[0]) & set(ids[1])
  assert sorted(ids[0] + ids[1]) == list(range(NUM_EPISODES))
  assert not files[0] & files[1]
  assert len(files[0] | files[1]) == 4


def test_bad_process_index(toy_dir):
  with pytest.raises(VlaxError, match="process_index"):
    rlds.read_trajectories("toy_reach_a", toy_dir, process_index=2, process_count=2)


def test_unknown_dataset_and_missing_version(toy_dir):
  with pytest.raises(VlaxError, match="unknown dataset 'toy_reach_z'.*toy_reach_a"):
    registry.get_spec("toy_reach_z")
  with pytest.raises(VlaxError, match="'nope'.*no directory"):
    rlds.read_trajectories("nope", toy_dir)
  with pytest.raises(VlaxError, match=r"'toy_reach_a'.*9\.9\.9.*versions found: 1\.0\.0"):
    rlds.read_trajectories("toy_reach_a", toy_dir, version="9.9.9")


def _features(image_feature=None, action_dim=2):
  return tfds.features.FeaturesDict({
      "steps": tfds.features.Dataset({
          "observation": {
              "image": image_feature or tfds.features.Image(shape=(8, 8, 3),
                                                            encoding_format="png"),
              "state": tfds.features.Tensor(shape=(2,), dtype=np.float32)},
          "action": tfds.features.Tensor(shape=(action_dim,), dtype=np.float32),
          "language_instruction": tfds.features.Text(),
      }),
  })


def _episode(n, rng, action=None):
  return {"steps": [{"observation": {"image": rng.integers(0, 255, (8, 8, 3), np.uint8),
                                     "state": np.zeros(2, np.float32)},
                     "action": (np.zeros(2, np.float32) if action is None else action[t]),
                     "language_instruction": "do it"} for t in range(n)]}


def _spec(name, standardize=None, action_dim=2, image_keys=None):
  def std(traj):
    return {"action": traj["action"], "proprio": traj["observation"]["state"],
            "language_instruction": traj["language_instruction"]}
  return registry.register(DatasetSpec(
      name=name, version="1.0.0", image_keys=image_keys or {"primary": "image"},
      standardize=standardize or std, action_dim=action_dim, proprio_dim=2,
      action_encoding=ActionEncoding.OTHER,
      action_normalization_mask=(True,) * action_dim), overwrite=True)


@pytest.fixture(scope="module")
def custom_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("rlds_custom"))
  rng = np.random.default_rng(0)
  rlds.write_rlds("t_plain", d, _features(), [_episode(3, rng) for _ in range(3)])
  rlds.write_rlds("t_empty", d, _features(),
                  [_episode(3, rng), _episode(0, rng), _episode(2, rng)])
  bad = np.zeros((3, 2), np.float32)
  bad[1, 1] = np.nan
  rlds.write_rlds("t_nan", d, _features(),
                  [_episode(3, rng), _episode(3, rng, action=bad)])
  rlds.write_rlds("t_uint8", d, _features(tfds.features.Tensor(shape=(8, 8, 3),
                                                               dtype=np.uint8)),
                  [_episode(3, rng) for _ in range(2)])
  return d


def _iterate(ds, name, d):
  return list(rlds.iterate(ds, context=f"dataset {name!r}: ",
                           version_dirs=[rlds.dataset_dir(name, d)]))


def test_missing_key_names_dataset_and_key(custom_dir):
  spec = _spec("t_plain", standardize=lambda t: {
      "action": t["action"], "proprio": t["observation"]["joint_state"]})
  with pytest.raises(VlaxError, match=r"'t_plain'.*missing key 'joint_state'"):
    robot.standardized_trajectories(spec, custom_dir, split="train")
  spec = _spec("t_plain", image_keys={"primary": "rgb"})
  with pytest.raises(VlaxError, match=r"'t_plain'.*missing image key 'observation/rgb'"):
    robot.standardized_trajectories(spec, custom_dir, split="train", cameras=("primary",))


def test_wrong_shape_names_key(custom_dir):
  spec = _spec("t_plain", action_dim=5)
  with pytest.raises(VlaxError, match=r"'t_plain'.*'action'.*expected \[T, 5\]"):
    robot.standardized_trajectories(spec, custom_dir, split="train")


def test_empty_episode_is_an_error_naming_file(custom_dir):
  ds = rlds.read_trajectories("t_empty", custom_dir, process_index=0, process_count=1)
  with pytest.raises(VlaxError, match=r"'t_empty'.*empty episode.*t_empty-train\.tfrecord"):
    _iterate(ds, "t_empty", custom_dir)
  ds = rlds.read_trajectories("t_empty", custom_dir, process_index=0, process_count=1,
                              empty_episodes="skip")
  assert len(list(ds.as_numpy_iterator())) == 2


def test_nan_action_error_names_dataset_episode_and_dimension(custom_dir):
  spec = _spec("t_nan")
  ds = robot.standardized_trajectories(spec, custom_dir, split="train", process_index=0,
                                       process_count=1)
  with pytest.raises(VlaxError, match=r"'t_nan'.*'action'.*tfrecord.*dimension.*1"):
    _iterate(ds, "t_nan", custom_dir)


def test_corrupt_record_names_file(toy_dir, tmp_path):
  d = str(tmp_path / "corrupt")
  shutil.copytree(toy_dir, d)
  vdir = os.path.join(d, "toy_reach_a", "1.0.0")
  f = sorted(x for x in os.listdir(vdir) if ".tfrecord" in x)[1]
  data = bytearray(open(os.path.join(vdir, f), "rb").read())
  for i in range(200, 260):
    data[i] ^= 0xFF
  open(os.path.join(vdir, f), "wb").write(bytes(data))
  ds = rlds.read_trajectories("toy_reach_a", d, process_index=0, process_count=1)
  with pytest.raises(VlaxError, match=rf"'toy_reach_a'.*corrupt record file.*{f}"):
    _iterate(ds, "toy_reach_a", d)


def test_uint8_image_features_are_supported(custom_dir, tmp_path):
  _spec("t_uint8")
  ds, _ = robot.make_robot_dataset([("t_uint8", 1.0)], custom_dir, image_size=8,
                                   cameras=("primary",), train=False, split="train",
                                   stats_cache_dir=str(tmp_path), progress=False,
                                   process_index=0, process_count=1)
  frames = list(ds.as_numpy_iterator())
  raw = list(rlds.read_trajectories("t_uint8", custom_dir, process_index=0,
                                    process_count=1).as_numpy_iterator())
  assert raw[0]["observation"]["image"].dtype == np.uint8
  expected = np.concatenate([r["observation"]["image"] for r in raw])
  got = np.stack([f["observation"]["image_primary"] for f in frames])
  np.testing.assert_array_equal(got, expected)


def test_more_hosts_than_files_slices_episodes(toy_dir):
  ids = [_episode_ids(rlds.read_trajectories("toy_reach_a", toy_dir, process_index=i,
                                             process_count=5)) for i in range(5)]
  flat = sum(ids, [])
  assert all(ids) and len(flat) == len(set(flat))
  assert sorted(flat) == list(range(NUM_EPISODES))


def test_sliced_split_with_fewer_files_than_hosts(toy_dir):
  # "train[75%:]" is 3 episodes in one of the 4 files: the whole split has enough files
  # for 2 hosts, the slice does not (the multi-host validation bug).
  ids = [_episode_ids(rlds.read_trajectories("toy_reach_a", toy_dir, split="train[75%:]",
                                             process_index=i, process_count=2))
         for i in range(2)]
  whole = _episode_ids(rlds.read_trajectories("toy_reach_a", toy_dir, split="train[75%:]",
                                              process_index=0, process_count=1))
  assert all(ids) and not set(ids[0]) & set(ids[1])
  assert sorted(ids[0] + ids[1]) == sorted(whole) and len(whole) == 3


def test_fewer_episodes_than_hosts_gives_each_host_one(toy_dir):
  ids = [_episode_ids(rlds.read_trajectories("toy_reach_a", toy_dir, split="train[75%:]",
                                             process_index=i, process_count=5))
         for i in range(5)]
  whole = _episode_ids(rlds.read_trajectories("toy_reach_a", toy_dir, split="train[75%:]",
                                              process_index=0, process_count=1))
  assert ids == [whole[:1], whole[1:2], whole[2:], whole[:1], whole[1:2]]


def test_host_split_strings():
  sizes = {"train": 1000, "val": 7}
  assert rlds.host_split("train[95%:]", sizes, 0, 2) == "train[950:975]"
  assert rlds.host_split("train[95%:]", sizes, 1, 2) == "train[975:1000]"
  assert rlds.host_split("train[995:]+val", sizes, 1, 3) == "train[999:1000]+val[0:3]"
  with pytest.raises(VlaxError, match="selects no episodes"):
    rlds.host_split("train[5:5]", sizes, 0, 2, name="x")
