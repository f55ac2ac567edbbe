"""One declarative `DatasetSpec` per Open X-Embodiment dataset.

Facts (key names, shapes, gripper conventions) come from each dataset's published TFDS
features (see `vlax.data.oxe.schemas`) and the OXE / Octo / OpenVLA dataset notes. Each
standardizer turns a raw trajectory (every step field stacked over T, see
`vlax.data.oxe.registry`) into action float32 [T, A], proprio float32 [T, P] and
language_instruction tf.string [T]. Grippers come out as 1 = open, 0 = closed; flags and
grippers are left out of normalization by the masks.
"""

from __future__ import annotations

from typing import Callable

import tensorflow as tf

from vlax.data.oxe import schemas
from vlax.data.oxe import standardize as st
from vlax.data.oxe.registry import ActionEncoding as Enc
from vlax.data.oxe.registry import DatasetSpec, register
from vlax.data.oxe.standardize import lookup as g

_NO_CAM = {"primary": None, "secondary": None, "wrist": None}


def _mask(dim: int, raw: tuple[int, ...] = ()) -> tuple[bool, ...]:
  """Normalization mask: True everywhere except the `raw` indices (grippers, flags)."""
  return tuple(i not in raw for i in range(dim))


def _add(name: str, fn: Callable, *, cameras: dict[str, str], action_dim: int,
         proprio_dim: int, encoding: Enc, action_raw: tuple[int, ...] = (),
         proprio_raw: tuple[int, ...] = (), language_key: str, gripper: str,
         control_hz: float | None = None, description: str = "",
         normalization_type: str = "bounds") -> None:
  schema = schemas.get_schema(name)
  val_split = "val" if "val" in schema.splits else "train[95%:]"
  train_split = "train" if "val" in schema.splits else "train[:95%]"
  register(DatasetSpec(
      name=name, version=schema.version, image_keys={**_NO_CAM, **cameras},
      standardize=st.guard(name, fn, action_dim, proprio_dim), action_dim=action_dim,
      proprio_dim=proprio_dim, action_encoding=encoding,
      action_normalization_mask=_mask(action_dim, action_raw),
      proprio_normalization_mask=_mask(proprio_dim, proprio_raw), language_key=language_key,
      gripper=gripper, normalization_type=normalization_type, train_split=train_split,
      val_split=val_split, control_hz=control_hz, description=description or fn.__doc__ or ""))


def _obs_lang(t):
  return g(t, "observation", "natural_language_instruction")


def _step_lang(t):
  return g(t, "language_instruction")


# --- Google-robot style (dict actions, language in observation) -------------------------

def _fractal(t):
  """RT-1 robot: world_vector + rotation_delta + relative gripper (+1 close) -> absolute."""
  a = g(t, "action")
  obs = g(t, "observation")
  return {"action": st.concat(g(a, "world_vector"), g(a, "rotation_delta"),
                              st.relative_to_absolute(g(a, "gripper_closedness_action"))),
          "proprio": st.concat(g(obs, "base_pose_tool_reached"),
                               st.invert(g(obs, "gripper_closed"))),
          "language_instruction": _obs_lang(t)}


_add("fractal20220817_data", _fractal, cameras={"primary": "image"}, action_dim=7,
     proprio_dim=8, encoding=Enc.EEF_DELTA_7, action_raw=(6,), proprio_raw=(7,),
     language_key="observation/natural_language_instruction",
     gripper="raw gripper_closedness_action is relative (+1 close, -1 open, 0 keep): "
     "converted to absolute 1=open/0=closed; proprio gripper_closed (1=closed) inverted",
     control_hz=3.0)


def _kuka(t):
  """QT-Opt KUKA: like fractal; state tensors are zlib-compressed float32 bytes."""
  a = g(t, "action")
  obs = g(t, "observation")
  pose = st.inflate_float32(g(obs, "clip_function_input/base_pose_tool_reached"), 7)
  closed = st.inflate_float32(g(obs, "gripper_closed"), 1)
  return {"action": st.concat(g(a, "world_vector"), g(a, "rotation_delta"),
                              st.relative_to_absolute(g(a, "gripper_closedness_action"))),
          "proprio": st.concat(pose, st.invert(closed)),
          "language_instruction": _obs_lang(t)}


_add("kuka", _kuka, cameras={"primary": "image"}, action_dim=7, proprio_dim=8,
     encoding=Enc.EEF_DELTA_7, action_raw=(6,), proprio_raw=(7,),
     language_key="observation/natural_language_instruction",
     gripper="relative command (+1 close) -> absolute; proprio gripper_closed inverted",
     control_hz=10.0)


def _bridge_oxe(t):
  """BridgeData V2 as copied into OXE (0.1.0): dict action with boolean open_gripper."""
  a = g(t, "action")
  return {"action": st.concat(g(a, "world_vector"), g(a, "rotation_delta"),
                              g(a, "open_gripper")),
          "proprio": st.concat(g(t, "observation", "state")),
          "language_instruction": _obs_lang(t)}


_add("bridge", _bridge_oxe, cameras={"primary": "image"}, action_dim=7, proprio_dim=7,
     encoding=Enc.EEF_DELTA_7, action_raw=(6,), proprio_raw=(6,),
     language_key="observation/natural_language_instruction",
     gripper="open_gripper bool (True=open) cast to 1/0", control_hz=5.0)


def _bridge_dataset(t):
  """BridgeData V2 release 1.0.0: flat 7-D action whose gripper is a continuous opening."""
  a = g(t, "action")
  return {"action": st.concat(a[:, :6], st.binarize(a[:, 6])),
          "proprio": st.concat(g(t, "observation", "state")),
          "language_instruction": _step_lang(t)}


_add("bridge_dataset", _bridge_dataset, cameras={"primary": "image_0", "secondary": "image_1"},
     action_dim=7, proprio_dim=7, encoding=Enc.EEF_DELTA_7, action_raw=(6,), proprio_raw=(6,),
     language_key="language_instruction",
     gripper="continuous opening (1=open) binarized at 0.5", control_hz=5.0)


def _taco(t):
  """TACO play (CALVIN-style): rel_actions_world, gripper -1 close / +1 open."""
  rel = g(t, "action", "rel_actions_world")
  robot = g(t, "observation", "robot_obs")
  return {"action": st.concat(rel[:, :6], st.binarize(rel[:, 6], 0.0)),
          "proprio": st.concat(robot[:, :7]),
          "language_instruction": _obs_lang(t)}


_add("taco_play", _taco, cameras={"primary": "rgb_static", "wrist": "rgb_gripper"},
     action_dim=7, proprio_dim=7, encoding=Enc.EEF_DELTA_7, action_raw=(6,),
     language_key="observation/natural_language_instruction",
     gripper="+1 open / -1 close (CALVIN) -> 1/0; proprio = EE xyz, euler, gripper width",
     control_hz=15.0)


def _jaco(t):
  """Jaco play: xyz delta only (no rotation recorded) + relative gripper."""
  a = g(t, "action")
  return {"action": st.concat(g(a, "world_vector"),
                              st.relative_to_absolute(g(a, "gripper_closedness_action"))),
          "proprio": st.concat(g(t, "observation", "end_effector_cartesian_pos")),
          "language_instruction": _obs_lang(t)}


_add("jaco_play", _jaco, cameras={"primary": "image", "wrist": "image_wrist"}, action_dim=4,
     proprio_dim=7, encoding=Enc.EEF_DELTA_XYZ_4, action_raw=(3,),
     language_key="observation/natural_language_instruction",
     gripper="relative command (+1 close) -> absolute 1=open; no rotation dims are invented",
     control_hz=10.0)


def _cable(t):
  """Cable routing: xyz + rotation velocities, no gripper action."""
  a = g(t, "action")
  return {"action": st.concat(g(a, "world_vector"), g(a, "rotation_delta")),
          "proprio": st.concat(g(t, "observation", "robot_state")),
          "language_instruction": _obs_lang(t)}


_add("berkeley_cable_routing", _cable,
     cameras={"primary": "image", "secondary": "top_image", "wrist": "wrist45_image"},
     action_dim=6, proprio_dim=7, encoding=Enc.EEF_DELTA_6,
     language_key="observation/natural_language_instruction",
     gripper="none (no gripper action recorded; not invented)", control_hz=10.0)


def _roboturk(t):
  """RoboTurk real: gripper_closedness_action +1 close."""
  a = g(t, "action")
  return {"action": st.concat(g(a, "world_vector"), g(a, "rotation_delta"),
                              st.clip_invert(g(a, "gripper_closedness_action"))),
          "proprio": st.empty(g(a, "world_vector")),
          "language_instruction": _obs_lang(t)}


_add("roboturk", _roboturk, cameras={"primary": "front_rgb"}, action_dim=7, proprio_dim=0,
     encoding=Enc.EEF_DELTA_7, action_raw=(6,),
     language_key="observation/natural_language_instruction",
     gripper="+1 close: clipped to [0,1] and inverted; no proprio", control_hz=10.0)


def _nyu_door(t):
  """Hello-robot door opening: wrist camera only, relative gripper."""
  a = g(t, "action")
  return {"action": st.concat(g(a, "world_vector"), g(a, "rotation_delta"),
                              st.relative_to_absolute(g(a, "gripper_closedness_action"))),
          "proprio": st.empty(g(a, "world_vector")),
          "language_instruction": _obs_lang(t)}


_add("nyu_door_opening_surprising_effectiveness", _nyu_door, cameras={"wrist": "image"},
     action_dim=7, proprio_dim=0, encoding=Enc.EEF_DELTA_7, action_raw=(6,),
     language_key="observation/natural_language_instruction",
     gripper="relative command (+1 close) -> absolute; no proprio", control_hz=3.0)


def _viola(t):
  """VIOLA: scalar gripper command +1 close / -1 open."""
  a = g(t, "action")
  obs = g(t, "observation")
  return {"action": st.concat(g(a, "world_vector"), g(a, "rotation_delta"),
                              st.clip_invert(g(a, "gripper_closedness_action"))),
          "proprio": st.concat(g(obs, "joint_states"), g(obs, "gripper_states")),
          "language_instruction": _obs_lang(t)}


_add("viola", _viola, cameras={"primary": "agentview_rgb", "wrist": "eye_in_hand_rgb"},
     action_dim=7, proprio_dim=8, encoding=Enc.EEF_DELTA_7, action_raw=(6,), proprio_raw=(7,),
     language_key="observation/natural_language_instruction",
     gripper="+1 close: clipped and inverted; proprio = 7 joints + gripper width",
     control_hz=20.0)


def _ur5(t):
  """Berkeley UR5: gripper 1 close / -1 open / 0 no change (relative)."""
  a = g(t, "action")
  robot = g(t, "observation", "robot_state")
  return {"action": st.concat(g(a, "world_vector"), g(a, "rotation_delta"),
                              st.relative_to_absolute(g(a, "gripper_closedness_action"))),
          "proprio": st.concat(robot[:, 6:14]),
          "language_instruction": _obs_lang(t)}


_add("berkeley_autolab_ur5", _ur5, cameras={"primary": "image", "wrist": "hand_image"},
     action_dim=7, proprio_dim=8, encoding=Enc.EEF_DELTA_7, action_raw=(6,),
     language_key="observation/natural_language_instruction",
     gripper="relative (+1 close, -1 open, 0 keep) -> absolute; proprio = robot_state[6:14] "
     "(EE xyz, quaternion, gripper)", control_hz=5.0)


def _toto(t):
  """TOTO: boolean open_gripper; proprio = 7 joint angles."""
  a = g(t, "action")
  return {"action": st.concat(g(a, "world_vector"), g(a, "rotation_delta"),
                              g(a, "open_gripper")),
          "proprio": st.concat(g(t, "observation", "state")),
          "language_instruction": _obs_lang(t)}


_add("toto", _toto, cameras={"primary": "image"}, action_dim=7, proprio_dim=7,
     encoding=Enc.EEF_DELTA_7, action_raw=(6,),
     language_key="observation/natural_language_instruction",
     gripper="open_gripper bool cast to 1/0", control_hz=30.0)


def _language_table(t):
  """Language Table: 2-D planar effector delta; instruction is int32 UTF-8 bytes."""
  obs = g(t, "observation")
  return {"action": st.concat(g(t, "action")),
          "proprio": st.concat(g(obs, "effector_translation")),
          "language_instruction": st.decode_utf8_codes(g(obs, "instruction"))}


_add("language_table", _language_table, cameras={"primary": "rgb"}, action_dim=2,
     proprio_dim=2, encoding=Enc.PLANAR_2, language_key="observation/instruction",
     gripper="none (planar pusher)", control_hz=10.0)


def _bc_z(t):
  """BC-Z: first of the 10 future residuals; target_close (1 = closed) inverted."""
  a = g(t, "action")
  obs = g(t, "observation")
  return {"action": st.concat(g(a, "future/xyz_residual")[:, :3],
                              g(a, "future/axis_angle_residual")[:, :3],
                              st.invert(g(a, "future/target_close")[:, :1])),
          "proprio": st.concat(g(obs, "present/xyz"), g(obs, "present/axis_angle"),
                               st.invert(g(obs, "present/sensed_close"))),
          "language_instruction": _obs_lang(t)}


_add("bc_z", _bc_z, cameras={"primary": "image"}, action_dim=7, proprio_dim=7,
     encoding=Enc.EEF_DELTA_7, action_raw=(6,), proprio_raw=(6,),
     language_key="observation/natural_language_instruction",
     gripper="future/target_close (1=closed) inverted; rotation is an axis-angle delta",
     control_hz=10.0)


# --- '*_converted_externally_to_rlds' template (flat action, per-step language) --------

def _flat(t):
  return g(t, "action")


def _state(t):
  return g(t, "observation", "state")


def _hydra(t):
  """Stanford HYDRA: gripper 1 = close; state = [xyz, quat, euler, joints, vel, gripper]."""
  a, s = _flat(t), _state(t)
  return {"action": st.concat(a[:, :6], st.invert(a[:, 6])),
          "proprio": st.concat(s[:, :3], s[:, 7:10], s[:, -3:-2]),
          "language_instruction": _step_lang(t)}


_add("stanford_hydra_dataset_converted_externally_to_rlds", _hydra,
     cameras={"primary": "image", "wrist": "wrist_image"}, action_dim=7, proprio_dim=7,
     encoding=Enc.EEF_DELTA_7, action_raw=(6,), language_key="language_instruction",
     gripper="1=close inverted", control_hz=10.0)


def _franka_clip_invert_joint8(t):
  """Franka (UT Austin family): gripper command +1 close / -1 open; state[:8] joints+gripper."""
  a = _flat(t)
  return {"action": st.concat(a[:, :6], st.clip_invert(a[:, 6])),
          "proprio": st.concat(_state(t)[:, :8]),
          "language_instruction": _step_lang(t)}


_add("austin_buds_dataset_converted_externally_to_rlds", _franka_clip_invert_joint8,
     cameras={"primary": "image", "wrist": "wrist_image"}, action_dim=7, proprio_dim=8,
     encoding=Enc.EEF_DELTA_7, action_raw=(6,), language_key="language_instruction",
     gripper="+1 close clipped and inverted; proprio = 7 joints + gripper", control_hz=20.0)

_add("utaustin_mutex", _franka_clip_invert_joint8,
     cameras={"primary": "image", "wrist": "wrist_image"}, action_dim=7, proprio_dim=8,
     encoding=Enc.EEF_DELTA_7, action_raw=(6,), language_key="language_instruction",
     gripper="+1 close clipped and inverted; proprio = 7 joints + gripper", control_hz=20.0)


def _nyu_franka(t):
  """NYU Franka play: 15-D action = 7 joint vel, EE delta xyz/rpy, gripper, terminate."""
  a = _flat(t)
  return {"action": st.concat(a[:, 7:13], st.clip01(a[:, 13])),
          "proprio": st.concat(_state(t)[:, 7:13]),
          "language_instruction": _step_lang(t)}


_add("nyu_franka_play_dataset_converted_externally_to_rlds", _nyu_franka,
     cameras={"primary": "image", "secondary": "image_additional_view"}, action_dim=7,
     proprio_dim=6, encoding=Enc.EEF_DELTA_7, action_raw=(6,),
     language_key="language_instruction",
     gripper="+1 open clipped to [0,1] (as Octo); proprio = EE xyz + rpy", control_hz=3.0)


def _furniture(t):
  """FurnitureBench: action = xyz delta, quaternion delta, gripper (+1 close)."""
  a, s = _flat(t), _state(t)
  return {"action": st.concat(a[:, :3], st.quat_to_euler(a[:, 3:7]), st.clip_invert(a[:, 7])),
          "proprio": st.concat(s[:, :7], s[:, -1:]),
          "language_instruction": _step_lang(t)}


_add("furniture_bench_dataset_converted_externally_to_rlds", _furniture,
     cameras={"primary": "image", "wrist": "wrist_image"}, action_dim=7, proprio_dim=8,
     encoding=Enc.EEF_DELTA_7, action_raw=(6,), language_key="language_instruction",
     gripper="+1 close clipped and inverted; quaternion delta converted to roll-pitch-yaw",
     control_hz=10.0)


def _ucsd_kitchen(t):
  """UCSD kitchen: absolute EE pose (mm, degrees) + gripper; terminate flag dropped."""
  return {"action": st.concat(_flat(t)[:, :7]), "proprio": st.concat(_state(t)[:, :7]),
          "language_instruction": _step_lang(t)}


_add("ucsd_kitchen_dataset_converted_externally_to_rlds", _ucsd_kitchen,
     cameras={"primary": "image"}, action_dim=7, proprio_dim=7, encoding=Enc.EEF_POS_7,
     action_raw=(6,), language_key="language_instruction",
     gripper="raw gripper kept (convention undocumented); proprio = 7 joint angles",
     control_hz=2.0)


def _austin_sailor(t):
  """SAILOR: gripper +1 close; state = EE xyz, quaternion, gripper."""
  a = _flat(t)
  return {"action": st.concat(a[:, :6], st.clip_invert(a[:, 6])),
          "proprio": st.concat(_state(t)), "language_instruction": _step_lang(t)}


_add("austin_sailor_dataset_converted_externally_to_rlds", _austin_sailor,
     cameras={"primary": "image", "wrist": "wrist_image"}, action_dim=7, proprio_dim=8,
     encoding=Enc.EEF_DELTA_7, action_raw=(6,), language_key="language_instruction",
     gripper="+1 close clipped and inverted", control_hz=20.0)

_add("austin_sirius_dataset_converted_externally_to_rlds", _austin_sailor,
     cameras={"primary": "image", "wrist": "wrist_image"}, action_dim=7, proprio_dim=8,
     encoding=Enc.EEF_DELTA_7, action_raw=(6,), language_key="language_instruction",
     gripper="+1 close clipped and inverted; proprio = 7 joints + gripper", control_hz=20.0,
     description="Sirius: gripper +1 close; state = 7 joints + gripper.")


def _dlr_edan(t):
  """DLR EDAN: gripper 1 = close, inverted."""
  a = _flat(t)
  return {"action": st.concat(a[:, :6], st.invert(a[:, 6])),
          "proprio": st.concat(_state(t)), "language_instruction": _step_lang(t)}


_add("dlr_edan_shared_control_converted_externally_to_rlds", _dlr_edan,
     cameras={"primary": "image"}, action_dim=7, proprio_dim=7, encoding=Enc.EEF_DELTA_7,
     action_raw=(6,), language_key="language_instruction", gripper="1=close inverted",
     control_hz=5.0)


def _iamlab(t):
  """IAM lab pick/insert: absolute EE pose (xyz, quaternion) + gripper (1 = open)."""
  a = _flat(t)
  return {"action": st.concat(a[:, :3], st.quat_to_euler(a[:, 3:7]), a[:, 7]),
          "proprio": st.concat(_state(t)[:, :8]), "language_instruction": _step_lang(t)}


_add("iamlab_cmu_pickup_insert_converted_externally_to_rlds", _iamlab,
     cameras={"primary": "image", "wrist": "wrist_image"}, action_dim=7, proprio_dim=8,
     encoding=Enc.EEF_POS_7, action_raw=(6,), language_key="language_instruction",
     gripper="raw open/close kept (1=open per Octo); quaternion -> roll-pitch-yaw",
     control_hz=20.0)


def _fanuc(t):
  """Fanuc: 6-D EE delta; the gripper comes from the state's open status (1 = closed)."""
  s = _state(t)
  return {"action": st.concat(_flat(t), st.invert(s[:, 6])),
          "proprio": st.concat(s[:, :7]), "language_instruction": _step_lang(t)}


_add("berkeley_fanuc_manipulation", _fanuc,
     cameras={"primary": "image", "wrist": "wrist_image"}, action_dim=7, proprio_dim=7,
     encoding=Enc.EEF_DELTA_7, action_raw=(6,), proprio_raw=(6,),
     language_key="language_instruction",
     gripper="no gripper action recorded: state gripper status (1=closed) inverted",
     control_hz=10.0)


def _cmu_stretch(t):
  """CMU Stretch: 8-D action minus the terminate flag; gripper binary kept."""
  return {"action": st.concat(_flat(t)[:, :7]), "proprio": st.concat(_state(t)),
          "language_instruction": _step_lang(t)}


_add("cmu_stretch", _cmu_stretch, cameras={"primary": "image"}, action_dim=7, proprio_dim=4,
     encoding=Enc.EEF_DELTA_7, action_raw=(6,), proprio_raw=(3,),
     language_key="language_instruction", gripper="binary gripper action kept as is",
     control_hz=10.0)


def _fmb(t):
  """FMB: 7-D EE action; proprio = EE pose (xyz, quaternion) + gripper pose."""
  obs = g(t, "observation")
  return {"action": st.concat(_flat(t)),
          "proprio": st.concat(g(obs, "eef_pose"), g(obs, "state_gripper_pose")),
          "language_instruction": _step_lang(t)}


for _name in ("fmb", "fmb_dataset"):
  _add(_name, _fmb,
       cameras={"primary": "image_side_1", "secondary": "image_side_2",
                "wrist": "image_wrist_1"},
       action_dim=7, proprio_dim=8, encoding=Enc.EEF_DELTA_7, action_raw=(6,),
       proprio_raw=(7,), language_key="language_instruction",
       gripper="raw gripper kept (as Octo/OpenVLA)", control_hz=10.0)


def _dobbe(t):
  """Dobb-E (Stick/Hello Stretch): 7-D action, state 7-D, wrist camera only."""
  return {"action": st.concat(_flat(t)), "proprio": st.concat(_state(t)),
          "language_instruction": _step_lang(t)}


_add("dobbe", _dobbe, cameras={"primary": "wrist_image"}, action_dim=7, proprio_dim=7,
     encoding=Enc.EEF_DELTA_7, action_raw=(6,), proprio_raw=(6,),
     language_key="language_instruction", gripper="raw gripper kept (as OpenVLA)",
     control_hz=3.75)


def _droid(t):
  """DROID: EE velocity action from action_dict; gripper position (1 = closed) inverted."""
  ad = g(t, "action_dict")
  obs = g(t, "observation")
  return {"action": st.concat(g(ad, "cartesian_velocity"),
                              st.invert(g(ad, "gripper_position"))),
          "proprio": st.concat(g(obs, "cartesian_position"),
                               st.invert(g(obs, "gripper_position"))),
          "language_instruction": _step_lang(t)}


_add("droid", _droid,
     cameras={"primary": "exterior_image_1_left", "secondary": "exterior_image_2_left",
              "wrist": "wrist_image_left"},
     action_dim=7, proprio_dim=7, encoding=Enc.EEF_DELTA_7, action_raw=(6,), proprio_raw=(6,),
     language_key="language_instruction",
     gripper="gripper_position (0=open, 1=closed) inverted", control_hz=15.0)


def _xarm_bimanual(t):
  """UTokyo xArm bimanual: 14-D absolute EE poses (L then R), each xyz, ypr, gripper."""
  obs = g(t, "observation")
  return {"action": st.concat(_flat(t)),
          "proprio": st.concat(g(obs, "pose_l"), g(obs, "pose_r")),
          "language_instruction": _step_lang(t)}


_add("utokyo_xarm_bimanual_converted_externally_to_rlds", _xarm_bimanual,
     cameras={"primary": "image"}, action_dim=14, proprio_dim=12,
     encoding=Enc.EEF_POS_BIMANUAL_14, action_raw=(6, 13), language_key="language_instruction",
     gripper="raw gripper positions kept (convention undocumented)", control_hz=10.0)

del _name
_ = tf  # standardizers above are TensorFlow code
