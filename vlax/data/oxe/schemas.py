"""The real TFDS feature specs of the registered OXE datasets, written down as data.

Each schema mirrors the dataset's published `features.json` (TFDS catalog / Open X-Embodiment
bucket): key names, shapes, dtypes, image encodings, where language lives, and the
episode-level fields next to `steps`. `features(name)` turns a schema into a real
`tfds.features.FeaturesDict`; `vlax.data.oxe.testing` uses it to write small on-disk datasets
with the genuine structure, and the schema doubles as documentation of what the registry's
standardizers read.

Image sizes can be reduced ONLY through the explicit `image_size` argument of `features()`
(tests use it to stay fast); names, dtypes and ranks never change.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Mapping

import numpy as np

from vlax.errors import VlaxError


@dataclasses.dataclass(frozen=True)
class Leaf:
  """One feature: kind is 'tensor', 'image', 'depth' (image-like tensor), or 'text'."""

  kind: str
  shape: tuple[int, ...] = ()
  dtype: str = "float32"
  encoding_format: str | None = None  # images: 'png' / 'jpeg'
  zlib: bool = False  # tensor stored zlib-compressed (kuka state)


def tensor(*shape: int, dtype: str = "float32", zlib: bool = False) -> Leaf:
  return Leaf("tensor", tuple(shape), dtype, zlib=zlib)


def scalar(dtype: str) -> Leaf:
  return Leaf("tensor", (), dtype)


def image(h: int, w: int, c: int = 3, dtype: str = "uint8", fmt: str = "png") -> Leaf:
  return Leaf("image", (h, w, c), dtype, encoding_format=fmt)


def depth(*shape: int, dtype: str = "float32") -> Leaf:
  """A depth map stored as a plain tensor (rank 2 or 3); shrinks with `image_size`."""
  return Leaf("depth", tuple(shape), dtype)


def text() -> Leaf:
  return Leaf("text", (), "string")


@dataclasses.dataclass(frozen=True)
class Schema:
  """`steps` holds one RLDS step; `episode` the fields next to `steps` in an episode."""

  name: str
  version: str
  steps: Mapping[str, Any]
  episode: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  splits: tuple[str, ...] = ("train",)
  source: str = ""  # where the facts come from


_SCHEMAS: dict[str, Schema] = {}

# Pieces shared by many datasets.
_FLAGS = {"is_first": scalar("bool"), "is_last": scalar("bool"), "is_terminal": scalar("bool")}
_LANG_OBS = {"natural_language_embedding": tensor(512), "natural_language_instruction": text()}
_FILE_PATH = {"episode_metadata": {"file_path": text()}}


def _rtx(action, observation, **extra) -> dict[str, Any]:
  """Steps of the Google-converted datasets: no discount, language in observation."""
  return {"action": action, **_FLAGS, "observation": {**observation, **_LANG_OBS},
          "reward": scalar("float32"), **extra}


def _converted(action, observation, **extra) -> dict[str, Any]:
  """Steps of the '*_converted_externally_to_rlds' template: per-step language."""
  return {"action": action, "discount": scalar("float32"), **_FLAGS,
          "language_embedding": tensor(512), "language_instruction": text(),
          "observation": observation, "reward": scalar("float32"), **extra}


_CATALOG = "TFDS catalog (tensorflow/datasets docs/catalog/{}.md)"


def _add(name: str, version: str, steps, episode=None, splits=("train",), source="") -> None:
  source = source or _CATALOG.format(name)
  _SCHEMAS[name] = Schema(name, version, steps, dict(episode or {}), tuple(splits), source)


_add("fractal20220817_data", "0.1.0", _rtx(
    {"base_displacement_vector": tensor(2), "base_displacement_vertical_rotation": tensor(1),
     "gripper_closedness_action": tensor(1), "rotation_delta": tensor(3),
     "terminate_episode": tensor(3, dtype="int32"), "world_vector": tensor(3)},
    {"base_pose_tool_reached": tensor(7), "gripper_closed": tensor(1),
     "gripper_closedness_commanded": tensor(1), "height_to_bottom": tensor(1),
     "image": image(256, 320, fmt="jpeg"), "orientation_box": tensor(2, 3),
     "orientation_start": tensor(4), "robot_orientation_positions_box": tensor(3, 3),
     "rotation_delta_to_go": tensor(3), "src_rotation": tensor(4), "vector_to_go": tensor(3),
     "workspace_bounds": tensor(3, 3)}),
    episode={"aspects": {k: scalar("bool") for k in
                         ("already_success", "feasible", "has_aspects", "success", "undesirable")},
             "attributes": {**{k: scalar("int64") for k in
                               ("collection_mode", "data_type", "env", "location",
                                "objects_family", "task_family")},
                            **{k + "_name": text() for k in
                               ("collection_mode", "data_type", "env", "location",
                                "objects_family", "task_family")}}})

_add("kuka", "0.1.0", _rtx(
    {"base_displacement_vector": tensor(2), "base_displacement_vertical_rotation": tensor(1),
     "gripper_closedness_action": tensor(1), "rotation_delta": tensor(3),
     "terminate_episode": tensor(3, dtype="int32"), "world_vector": tensor(3)},
    {"clip_function_input/base_pose_tool_reached": tensor(7, zlib=True),
     "clip_function_input/workspace_bounds": tensor(3, 3),
     "gripper_closed": tensor(1, zlib=True), "height_to_bottom": tensor(1),
     "image": image(512, 640, fmt="jpeg"), "task_id": tensor(1)}),
    episode={"success": scalar("bool")},
    source=_CATALOG.format("kuka") + "; zlib encoding of the two state tensors: Octo's "
    "kuka transform inflates them")

_add("bridge", "0.1.0", _rtx(
    {"open_gripper": scalar("bool"), "rotation_delta": tensor(3),
     "terminate_episode": scalar("float32"), "world_vector": tensor(3)},
    {"image": image(480, 640), "state": tensor(7)}),
    splits=("train", "test"))

_add("bridge_dataset", "1.0.0", _converted(
    tensor(7),
    {**{f"image_{i}": image(256, 256, fmt="jpeg") for i in range(4)}, "state": tensor(7)}),
    episode={"episode_metadata": {"file_path": text(), "episode_id": scalar("int32"),
                                  **{f"has_image_{i}": scalar("bool") for i in range(4)},
                                  "has_language": scalar("bool")}},
    splits=("train", "val"),
    source="BridgeData V2 RLDS release (rail-berkeley bridge_dataset 1.0.0), as used by Octo")

_add("taco_play", "0.1.0", _rtx(
    {"actions": tensor(7), "rel_actions_gripper": tensor(7), "rel_actions_world": tensor(7),
     "terminate_episode": scalar("float32")},
    {"depth_gripper": depth(84, 84), "depth_static": depth(150, 200),
     "rgb_gripper": image(84, 84), "rgb_static": image(150, 200), "robot_obs": tensor(15),
     "structured_language_instruction": text()}),
    splits=("train", "test"))

_add("jaco_play", "0.1.0", _rtx(
    {"gripper_closedness_action": tensor(1), "terminate_episode": tensor(3, dtype="int32"),
     "world_vector": tensor(3)},
    {"end_effector_cartesian_pos": tensor(7), "end_effector_cartesian_velocity": tensor(6),
     "image": image(224, 224), "image_wrist": image(224, 224), "joint_pos": tensor(8)}),
    splits=("train", "test"))

_add("berkeley_cable_routing", "0.1.0", _rtx(
    {"rotation_delta": tensor(3), "terminate_episode": scalar("float32"),
     "world_vector": tensor(3)},
    {"image": image(128, 128), "robot_state": tensor(7), "top_image": image(128, 128),
     "wrist225_image": image(128, 128), "wrist45_image": image(128, 128)}),
    splits=("train", "test"))

_add("roboturk", "0.1.0", _rtx(
    {"gripper_closedness_action": tensor(1), "rotation_delta": tensor(3),
     "terminate_episode": scalar("float32"), "world_vector": tensor(3)},
    {"front_rgb": image(480, 640)}),
    splits=("train", "test"))

_add("nyu_door_opening_surprising_effectiveness", "0.1.0", _rtx(
    {"gripper_closedness_action": tensor(1), "rotation_delta": tensor(3),
     "terminate_episode": scalar("float32"), "world_vector": tensor(3)},
    {"image": image(720, 960)}),
    splits=("train", "test"), source="OXE bucket features.json inventory")

_add("viola", "0.1.0", _rtx(
    {"gripper_closedness_action": scalar("float32"), "rotation_delta": tensor(3),
     "terminate_episode": scalar("float32"), "world_vector": tensor(3)},
    {"agentview_rgb": image(224, 224), "ee_states": tensor(16),
     "eye_in_hand_rgb": image(224, 224), "gripper_states": tensor(1),
     "joint_states": tensor(7)}),
    splits=("train", "test"))

_add("berkeley_autolab_ur5", "0.1.0", _rtx(
    {"gripper_closedness_action": scalar("float32"), "rotation_delta": tensor(3),
     "terminate_episode": scalar("float32"), "world_vector": tensor(3)},
    {"hand_image": image(480, 640), "image": image(480, 640),
     "image_with_depth": image(480, 640, 1, dtype="float32"), "robot_state": tensor(15)}),
    splits=("train", "test"))

_add("toto", "0.1.0", _rtx(
    {"open_gripper": scalar("bool"), "rotation_delta": tensor(3),
     "terminate_episode": scalar("float32"), "world_vector": tensor(3)},
    {"image": image(480, 640), "state": tensor(7)}),
    splits=("train", "test"))

_add("language_table", "0.1.0", {
    "action": tensor(2), **_FLAGS,
    "observation": {"effector_target_translation": tensor(2), "effector_translation": tensor(2),
                    "instruction": tensor(512, dtype="int32"),
                    "rgb": image(360, 640, fmt="jpeg")},
    "reward": scalar("float32")},
    episode={"episode_id": text()},
    source="language_table TFDS builder docstring + OXE bucket inventory")

_add("stanford_hydra_dataset_converted_externally_to_rlds", "0.1.0", _converted(
    tensor(7),
    {"image": image(240, 320), "state": tensor(27), "wrist_image": image(240, 320)},
    is_dense=scalar("bool")),
    episode=_FILE_PATH)

_add("austin_buds_dataset_converted_externally_to_rlds", "0.1.0", _converted(
    tensor(7), {"image": image(128, 128), "state": tensor(24), "wrist_image": image(128, 128)}),
    episode=_FILE_PATH)

_add("nyu_franka_play_dataset_converted_externally_to_rlds", "0.1.0", _converted(
    tensor(15),
    {"depth": depth(128, 128, 1, dtype="int32"),
     "depth_additional_view": depth(128, 128, 1, dtype="int32"),
     "image": image(128, 128), "image_additional_view": image(128, 128), "state": tensor(13)}),
    episode=_FILE_PATH, splits=("train", "val"))

_add("furniture_bench_dataset_converted_externally_to_rlds", "0.1.0", _converted(
    tensor(8),
    {"image": image(224, 224, fmt="jpeg"), "state": tensor(35),
     "wrist_image": image(224, 224, fmt="jpeg")},
    skill_completion=scalar("float32")),
    episode={"episode_metadata": {"file_path": text(), "furniture": text(),
                                  "initial_randomness": text()}},
    source="FurnitureBench RLDS builder (youngwoon/furniture_bench_rlds_dataset_builder) + "
    "OXE bucket inventory (jpeg images)")

_add("ucsd_kitchen_dataset_converted_externally_to_rlds", "0.1.0", _converted(
    tensor(8), {"image": image(480, 640), "state": tensor(21)}),
    episode=_FILE_PATH)

_SAILOR_OBS = {"image": image(128, 128), "state": tensor(8), "state_ee": tensor(16),
               "state_gripper": tensor(1), "state_joint": tensor(7),
               "wrist_image": image(128, 128)}
_add("austin_sailor_dataset_converted_externally_to_rlds", "0.1.0",
     _converted(tensor(7), _SAILOR_OBS), episode=_FILE_PATH)

_add("austin_sirius_dataset_converted_externally_to_rlds", "0.1.0", _converted(
    tensor(7), {**_SAILOR_OBS, "image": image(84, 84), "wrist_image": image(84, 84)},
    action_mode=tensor(1), intv_label=tensor(1)),
    episode=_FILE_PATH)

_add("bc_z", "0.1.0", _rtx(
    {"future/axis_angle_residual": tensor(30), "future/target_close": tensor(10, dtype="int64"),
     "future/xyz_residual": tensor(30)},
    {"episode_success": scalar("float32"), "image": image(171, 213, fmt="jpeg"),
     "present/autonomous": scalar("int64"), "present/axis_angle": tensor(3),
     "present/intervention": scalar("int64"), "present/sensed_close": tensor(1),
     "present/xyz": tensor(3), "sequence_length": scalar("int64")}),
    splits=("train", "val"))

_add("dlr_edan_shared_control_converted_externally_to_rlds", "0.1.0", _converted(
    tensor(7), {"image": image(360, 640), "state": tensor(7)}),
    episode=_FILE_PATH)

_add("iamlab_cmu_pickup_insert_converted_externally_to_rlds", "0.1.0", _converted(
    tensor(8), {"image": image(360, 640), "state": tensor(20), "wrist_image": image(240, 320)}),
    episode=_FILE_PATH)

_add("utaustin_mutex", "0.1.0", _converted(
    tensor(7), {"image": image(128, 128), "state": tensor(24), "wrist_image": image(128, 128)}),
    episode=_FILE_PATH)

_add("berkeley_fanuc_manipulation", "0.1.0", _converted(
    tensor(6), {"end_effector_state": tensor(7), "image": image(224, 224), "state": tensor(13),
                "wrist_image": image(224, 224)}),
    episode=_FILE_PATH)

_add("cmu_stretch", "0.1.0", _converted(
    tensor(8), {"image": image(128, 128), "state": tensor(4)}),
    episode=_FILE_PATH)

_FMB_STEPS = _converted(tensor(7), {
    "color_id": scalar("uint8"), "eef_force": tensor(3), "eef_pose": tensor(7),
    "eef_torque": tensor(3), "eef_vel": tensor(6),
    **{f"image_{v}": image(256, 256, fmt="jpeg")
       for v in ("side_1", "side_2", "wrist_1", "wrist_2")},
    **{f"image_{v}_depth": depth(256, 256) for v in ("side_1", "side_2", "wrist_1", "wrist_2")},
    "joint_pos": tensor(7), "joint_vel": tensor(7), "length": text(),
    "object_id": scalar("uint8"), "primitive": text(), "shape_id": scalar("uint8"),
    "size": text(), "state_gripper_pose": scalar("float32")})
_FMB_EPISODE = {"episode_metadata": {"episode_language_embedding": tensor(512),
                                     "episode_language_instruction": text(),
                                     "episode_task": text(), "file_path": text()}}
_add("fmb", "0.0.1", _FMB_STEPS, episode=_FMB_EPISODE,
     source=_CATALOG.format("fmb") + "; version 0.0.1 is the OXE bucket's")
_add("fmb_dataset", "1.0.0", _FMB_STEPS, episode=_FMB_EPISODE,
     source="OpenVLA's name for FMB; schema assumed equal to TFDS 'fmb' (not verified)")

_add("dobbe", "0.0.1", _converted(
    tensor(7), {"gripper": tensor(1), "quat": tensor(4), "rot": tensor(3), "state": tensor(7),
                "wrist_image": image(256, 256, fmt="jpeg"), "xyz": tensor(3)}),
    episode=_FILE_PATH, source=_CATALOG.format("dobbe") + "; version 0.0.1 is the OXE bucket's")

_add("droid", "1.0.1", {
    "action": tensor(7, dtype="float64"),
    "action_dict": {k: tensor(n, dtype="float64") for k, n in
                    (("cartesian_position", 6), ("cartesian_velocity", 6),
                     ("gripper_position", 1), ("gripper_velocity", 1),
                     ("joint_position", 7), ("joint_velocity", 7))},
    "discount": scalar("float32"), **_FLAGS,
    "language_instruction": text(), "language_instruction_2": text(),
    "language_instruction_3": text(),
    "observation": {"cartesian_position": tensor(6, dtype="float64"),
                    "exterior_image_1_left": image(180, 320, fmt="jpeg"),
                    "exterior_image_2_left": image(180, 320, fmt="jpeg"),
                    "gripper_position": tensor(1, dtype="float64"),
                    "joint_position": tensor(7, dtype="float64"),
                    "wrist_image_left": image(180, 320, fmt="jpeg")},
    "reward": scalar("float32")},
    episode={"episode_metadata": {"file_path": text(), "recording_folderpath": text()}},
    source="DROID RLDS release (OXE bucket droid 1.0.1)")

_add("utokyo_xarm_bimanual_converted_externally_to_rlds", "0.1.0", _converted(
    tensor(14), {"action_l": tensor(7), "action_r": tensor(7), "image": image(256, 256),
                 "pose_l": tensor(6), "pose_r": tensor(6)}),
    episode=_FILE_PATH, splits=("train", "val"))


def list_schemas() -> list[str]:
  return sorted(_SCHEMAS)


def get_schema(name: str) -> Schema:
  if name not in _SCHEMAS:
    close = difflib.get_close_matches(name, list(_SCHEMAS), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise VlaxError(f"no feature schema for dataset {name!r}{hint}")
  return _SCHEMAS[name]


def _scaled(shape: tuple[int, ...], image_size: tuple[int, int] | None) -> tuple[int, ...]:
  if image_size is None:
    return shape
  return tuple(image_size) + tuple(shape[2:])


def _connector(leaf: Leaf, image_size):
  import tensorflow_datasets as tfds
  f = tfds.features
  if leaf.kind == "text":
    return f.Text()
  if leaf.kind == "image":
    return f.Image(shape=_scaled(leaf.shape, image_size), dtype=np.dtype(leaf.dtype),
                   encoding_format=leaf.encoding_format)
  shape = _scaled(leaf.shape, image_size) if leaf.kind == "depth" else leaf.shape
  if not shape:
    return f.Scalar(dtype=np.dtype(leaf.dtype))
  encoding = f.Encoding.ZLIB if leaf.zlib else f.Encoding.NONE
  return f.Tensor(shape=shape, dtype=np.dtype(leaf.dtype), encoding=encoding)


def _tree(spec: Mapping[str, Any], image_size):
  import tensorflow_datasets as tfds
  return tfds.features.FeaturesDict({
      k: _tree(v, image_size) if isinstance(v, Mapping) else _connector(v, image_size)
      for k, v in spec.items()})


def features(name: str, image_size: tuple[int, int] | None = None):
  """The dataset's episode `tfds.features.FeaturesDict` (steps + episode-level fields).

  image_size: optional (H, W) that replaces the real size of every image and depth map
  (test data only); None keeps the real sizes.
  """
  import tensorflow_datasets as tfds
  schema = get_schema(name)
  top = {k: _tree(v, image_size) if isinstance(v, Mapping) else _connector(v, image_size)
         for k, v in schema.episode.items()}
  top["steps"] = tfds.features.Dataset(_step_dict(schema.steps, image_size))
  return tfds.features.FeaturesDict(top)


def _step_dict(spec: Mapping[str, Any], image_size) -> dict[str, Any]:
  return {k: _tree(v, image_size) if isinstance(v, Mapping) else _connector(v, image_size)
          for k, v in spec.items()}


def leaves(spec: Mapping[str, Any], prefix: tuple[str, ...] = ()):
  """Yields (path, Leaf) for every feature of a nested schema dict."""
  for k, v in spec.items():
    if isinstance(v, Mapping):
      yield from leaves(v, prefix + (k,))
    else:
      yield prefix + (k,), v
