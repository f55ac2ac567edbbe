"""OXE registry: real schemas on disk -> plain tfds -> raw trajectory -> standardize."""

import json
import os

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
tfds = pytest.importorskip("tensorflow_datasets")

from vlax.data.oxe import mixtures  # noqa: E402
from vlax.data.oxe import registry  # noqa: E402
from vlax.data.oxe import schemas  # noqa: E402
from vlax.data.oxe import testing  # noqa: E402
from vlax.errors import VlaxError  # noqa: E402

SMALL = (24, 32)  # test images: real key names / dtypes / ranks, reduced H x W
T_MIN = 6  # every generated episode has at least this many steps

# Relative gripper commands (+1 close, -1 open, 0 keep) and the absolute state they mean.
REL_CMD = [0.0, 1.0, 0.0, -1.0, 0.0, 1.0]
REL_ABS = [1.0, 0.0, 0.0, 1.0, 1.0, 0.0]


def _cmd(t):
  return REL_CMD[min(t, len(REL_CMD) - 1)]


def _abs(n):
  return np.array([REL_ABS[min(t, len(REL_ABS) - 1)] for t in range(n)], np.float32)


def _edit_fractal_like(ep, t, step):
  step["action"]["gripper_closedness_action"] = np.array([_cmd(t)], np.float32)
  obs = step["observation"]
  obs["gripper_closed"] = np.array([1.0], np.float32)
  key = ("clip_function_input/base_pose_tool_reached" if "task_id" in obs
         else "base_pose_tool_reached")
  obs[key] = (np.arange(7) + 10 * t).astype(np.float32)


def _edit_scalar_rel(ep, t, step):
  step["action"]["gripper_closedness_action"] = np.float32(_cmd(t))


def _edit_jaco(ep, t, step):
  step["action"]["gripper_closedness_action"] = np.array([_cmd(t)], np.float32)


def _edit_open_bool(ep, t, step):
  step["action"]["open_gripper"] = bool(t % 2)


def _edit_bridge_dataset(ep, t, step):
  step["action"][6] = 0.9 if t % 2 else 0.1


def _edit_taco(ep, t, step):
  step["action"]["rel_actions_world"][6] = 1.0 if t % 2 else -1.0


def _edit_stretch(ep, t, step):
  step["action"][6] = float(t % 2)
  step["action"][7] = 99.0  # terminate flag: must not reach the standardized action


def _edit_droid(ep, t, step):
  step["action_dict"]["gripper_position"] = np.array([float(t % 2)])
  step["observation"]["gripper_position"] = np.array([1.0])


def _edit_language_table(ep, t, step):
  codes = np.zeros(512, np.int32)
  text = "schiebe den grünen Würfel".encode("utf-8")
  codes[:len(text)] = np.frombuffer(text, np.uint8)
  step["observation"]["instruction"] = codes


def _edit_bimanual(ep, t, step):
  step["action"] = np.arange(14, dtype=np.float32) + t


# dataset -> (step editor, check(raw, standardized)).
def _check_fractal_like(raw, out):
  n = out["action"].shape[0]
  np.testing.assert_allclose(out["action"][:, 6], _abs(n))
  np.testing.assert_allclose(out["proprio"][:, 7], np.zeros(n))  # gripper_closed=1 -> 0
  expect = np.arange(7)[None] + 10 * np.arange(n)[:, None]
  np.testing.assert_allclose(out["proprio"][:, :7], expect)


def _check_rel(raw, out):
  np.testing.assert_allclose(out["action"][:, -1], _abs(out["action"].shape[0]))


def _check_alternating_open(raw, out):
  n = out["action"].shape[0]
  np.testing.assert_allclose(out["action"][:, 6], np.arange(n) % 2)


def _check_stretch(raw, out):
  _check_alternating_open(raw, out)
  assert not np.any(out["action"].numpy() == 99.0)


def _check_droid(raw, out):
  n = out["action"].shape[0]
  np.testing.assert_allclose(out["action"][:, 6], 1.0 - np.arange(n) % 2)
  np.testing.assert_allclose(out["proprio"][:, 6], np.zeros(n))
  np.testing.assert_allclose(out["action"][:, :6], raw["action_dict"]["cartesian_velocity"])


def _check_language_table(raw, out):
  assert raw["observation"]["instruction"].dtype == tf.int32
  texts = {s.decode("utf-8") for s in out["language_instruction"].numpy()}
  assert texts == {"schiebe den grünen Würfel"}
  np.testing.assert_allclose(out["action"], raw["action"])


def _check_bimanual(raw, out):
  np.testing.assert_allclose(out["action"], raw["action"])
  np.testing.assert_allclose(out["proprio"],
                             np.concatenate([raw["observation"]["pose_l"],
                                             raw["observation"]["pose_r"]], -1))


CASES = {
    "fractal20220817_data": (_edit_fractal_like, _check_fractal_like),
    "kuka": (_edit_fractal_like, _check_fractal_like),
    "bridge": (_edit_open_bool, _check_alternating_open),
    "bridge_dataset": (_edit_bridge_dataset, _check_alternating_open),
    "language_table": (_edit_language_table, _check_language_table),
    "jaco_play": (_edit_jaco, _check_rel),
    "berkeley_autolab_ur5": (_edit_scalar_rel, _check_rel),
    "toto": (_edit_open_bool, _check_alternating_open),
    "taco_play": (_edit_taco, _check_alternating_open),
    "cmu_stretch": (_edit_stretch, _check_stretch),
    "droid": (_edit_droid, _check_droid),
    "utokyo_xarm_bimanual_converted_externally_to_rlds": (_edit_bimanual, _check_bimanual),
    "berkeley_cable_routing": (None, None),
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("oxe"))
  for i, (name, (edit, _)) in enumerate(CASES.items()):
    testing.write_rlds_dataset(name, root, num_episodes=2, episode_len=(T_MIN, T_MIN + 2),
                               image_size=SMALL, seed=i, edit_step=edit)
  return root


def _path(root, name):
  return os.path.join(root, name, registry.get_spec(name).version)


@pytest.fixture(scope="module")
def raw(data_dir):
  return {name: testing.read_raw_trajectories(_path(data_dir, name)) for name in CASES}


@pytest.mark.parametrize("name", list(CASES))
def test_standardize_real_schema(name, raw):
  spec = registry.get_spec(name)
  trajs = raw[name]
  assert len(trajs) == 2
  for traj in trajs:
    n = int(tf.shape(traj["is_first"])[0])
    assert T_MIN <= n <= T_MIN + 2
    out = spec.standardize(traj)
    assert set(out) == {"action", "proprio", "language_instruction"}
    assert out["action"].dtype == tf.float32 and out["action"].shape == (n, spec.action_dim)
    assert out["proprio"].dtype == tf.float32 and out["proprio"].shape == (n, spec.proprio_dim)
    assert out["language_instruction"].dtype == tf.string
    assert out["language_instruction"].shape == (n,)
    assert all(s for s in out["language_instruction"].numpy())
    assert np.all(np.isfinite(out["action"].numpy()))
    check = CASES[name][1]
    if check is not None:
      check(traj, out)


@pytest.mark.parametrize("name", list(CASES))
def test_image_keys_are_encoded_bytes(name, raw):
  spec = registry.get_spec(name)
  traj = raw[name][0]
  n = int(tf.shape(traj["is_first"])[0])
  cams = [k for k in spec.image_keys.values() if k]
  assert cams, name
  for key in cams:
    assert key in traj["observation"], (name, key)
    img = traj["observation"][key]
    assert img.dtype == tf.string and img.shape == (n,)
    decoded = tf.io.decode_image(img[0])
    assert tuple(decoded.shape) == (*SMALL, 3)


def test_episode_metadata_is_broadcast(raw):
  traj = raw["bridge_dataset"][0]
  n = int(tf.shape(traj["is_first"])[0])
  meta = traj["episode_metadata"]
  assert meta["file_path"].shape == (n,) and meta["file_path"].dtype == tf.string
  assert meta["has_image_0"].shape == (n,)
  assert raw["language_table"][0]["episode_id"].shape == (n,)
  assert bool(traj["is_first"][0]) and bool(traj["is_last"][-1]) and not bool(traj["is_last"][0])


def test_kuka_state_stays_zlib_bytes_until_standardized(raw):
  state = raw["kuka"][0]["observation"]["clip_function_input/base_pose_tool_reached"]
  assert state.dtype == tf.string  # compressed on disk, inflated by the standardizer


def test_plain_tfds_builder_by_name_and_version(data_dir):
  builder = tfds.builder("toto:0.1.0", data_dir=data_dir)
  assert builder.info.splits["train"].num_examples == 2
  skip_image = {"steps": {"observation": {"image": tfds.decode.SkipDecoding()}}}
  ds = builder.as_dataset(split="train", decoders=skip_image)
  episode = next(iter(ds))
  step = next(iter(episode["steps"]))
  assert step["observation"]["state"].shape == (7,)
  assert step["action"]["open_gripper"].dtype == tf.bool


def test_written_features_json_has_real_keys(data_dir):
  with open(os.path.join(_path(data_dir, "fractal20220817_data"), "features.json")) as f:
    text = f.read()
  for key in ("base_pose_tool_reached", "gripper_closedness_action", "terminate_episode",
              "natural_language_instruction", "workspace_bounds", "attributes"):
    assert key in text
  json.loads(text)


def test_real_image_sizes_by_default():
  feats = schemas.features("fractal20220817_data")
  assert feats["steps"]["observation"]["image"].shape == (256, 320, 3)
  feats = schemas.features("bridge")
  assert feats["steps"]["observation"]["image"].shape == (480, 640, 3)
  feats = schemas.features("bridge_dataset")
  assert feats["steps"]["observation"]["image_3"].shape == (256, 256, 3)
  small = schemas.features("taco_play", image_size=(8, 8))
  assert small["steps"]["observation"]["depth_static"].shape == (8, 8)
  assert small["steps"]["observation"]["robot_obs"].shape == (15,)


OXE = [n for n in registry.list_datasets() if n in schemas.list_schemas()]


def test_catalog_covers_magic_soups():
  for mix in ("oxe_magic_soup", "oxe_magic_soup_plus"):
    for name, weight in mixtures.get_mixture(mix):
      assert name in OXE and weight > 0, (mix, name)
  assert len(OXE) >= 30


@pytest.mark.parametrize("name", OXE)
def test_spec_matches_its_schema(name):
  spec = registry.get_spec(name)
  schema = schemas.get_schema(name)
  assert spec.version == schema.version
  assert len(spec.action_normalization_mask) == spec.action_dim
  assert len(spec.proprio_normalization_mask) == spec.proprio_dim
  assert set(spec.image_keys) <= {"primary", "secondary", "wrist"}
  obs = schema.steps["observation"]
  for key in filter(None, spec.image_keys.values()):
    assert obs[key].kind == "image", (name, key)
  node = schema.steps
  for part in spec.language_key.split("/"):
    node = node[part]
  assert isinstance(node, schemas.Leaf)


def _in_memory_raw(name, length=5, seed=0):
  """Raw trajectory straight from a random episode (images as arrays; unused here)."""
  ep = testing.random_episode(name, length, rng=np.random.default_rng(seed), image_size=(4, 4))
  steps = ep.pop("steps")
  traj = tf.nest.map_structure(lambda *xs: tf.constant(np.stack(xs)), *steps)
  for key, value in ep.items():
    traj[key] = tf.nest.map_structure(lambda x: tf.constant([x] * length), value)
  return traj


@pytest.mark.parametrize("name", OXE)
def test_every_spec_standardizes_its_schema(name):
  spec = registry.get_spec(name)
  out = spec.standardize(_in_memory_raw(name))
  assert out["action"].shape == (5, spec.action_dim)
  assert out["proprio"].shape == (5, spec.proprio_dim)
  assert out["language_instruction"].shape == (5,)
  grip = [i for i, m in enumerate(spec.action_normalization_mask) if not m]
  assert np.all(np.isfinite(out["action"].numpy()))
  assert grip or spec.action_encoding in (registry.ActionEncoding.EEF_DELTA_6,
                                           registry.ActionEncoding.PLANAR_2)


def test_every_spec_runs_inside_tf_data(data_dir):
  for name in ("kuka", "language_table", "fractal20220817_data"):
    spec = registry.get_spec(name)
    ds = testing.raw_trajectory_dataset(_path(data_dir, name)).map(spec.standardize)
    assert ds.element_spec["action"].shape.as_list() == [None, spec.action_dim]
    assert len(list(ds)) == 2


def test_standardize_source_is_the_datasets_own():
  import inspect
  assert "def _kuka(" in inspect.getsource(registry.get_spec("kuka").standardize)
  assert "def _toto(" in inspect.getsource(registry.get_spec("toto").standardize)


def test_relative_gripper_conversion():
  from vlax.data.oxe import standardize as st
  got = st.relative_to_absolute(tf.constant([0.0, 0.0, -1.0, 0.05, 1.0]))[:, 0]
  np.testing.assert_allclose(got, [0.0, 0.0, 1.0, 1.0, 0.0])  # first cmd opens -> was closed
  np.testing.assert_allclose(st.relative_to_absolute(tf.zeros([3]))[:, 0], [1.0, 1.0, 1.0])


def test_quaternion_to_euler():
  from vlax.data.oxe import standardize as st
  half = np.sqrt(0.5)
  q = tf.constant([[0.0, 0.0, 0.0, 1.0], [half, 0.0, 0.0, half], [0.0, 0.0, half, half]])
  np.testing.assert_allclose(st.quat_to_euler(q), [[0, 0, 0], [np.pi / 2, 0, 0],
                                                   [0, 0, np.pi / 2]], atol=1e-5)


def test_missing_key_names_dataset_and_key(raw):
  traj = dict(raw["toto"][0])
  traj["observation"] = {k: v for k, v in traj["observation"].items() if k != "state"}
  with pytest.raises(VlaxError, match=r"toto.*observation/state"):
    registry.get_spec("toto").standardize(traj)
  traj = {k: v for k, v in raw["kuka"][0].items() if k != "action"}
  with pytest.raises(VlaxError, match=r"kuka.*'action'"):
    registry.get_spec("kuka").standardize(traj)


def test_unknown_dataset_lists_close_matches():
  with pytest.raises(VlaxError, match=r"unknown dataset 'bridge_datset'.*bridge_dataset"):
    registry.get_spec("bridge_datset")
  with pytest.raises(VlaxError, match="no feature schema"):
    schemas.get_schema("nope")


def test_mixtures():
  soup = mixtures.get_mixture("oxe_magic_soup")
  assert len(soup) == 25 and dict(soup)["kuka"] == pytest.approx(0.8341046294)
  plus = dict(mixtures.get_mixture("oxe_magic_soup_plus"))
  assert plus["droid"] == pytest.approx(0.06)
  assert "nyu_door_opening_surprising_effectiveness" not in plus
  assert mixtures.get_mixture("bridge_only") == [("bridge_dataset", 1.0)]
  assert mixtures.get_mixture("fractal_only") == [("fractal20220817_data", 1.0)]
  known = set(registry.list_datasets()) | {"toy_reach_a", "toy_reach_b"}
  for name in mixtures.list_mixtures():
    for dataset, weight in mixtures.get_mixture(name):
      assert dataset in known and weight > 0, (name, dataset)
  with pytest.raises(VlaxError, match=r"unknown mixture 'oxe_magic_sup'.*oxe_magic_soup"):
    mixtures.get_mixture("oxe_magic_sup")


def test_write_rejects_bad_arguments(tmp_path):
  with pytest.raises(VlaxError, match="episode_len"):
    testing.write_rlds_dataset("toto", str(tmp_path), episode_len=(5, 2))
