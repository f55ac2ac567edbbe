"""Registry entries of the Meta-World expert-demo datasets (`metaworld_<task>`).

One RLDS dataset per Meta-World task, written by `vlax.data.metaworld_demos` (run by
`data_pipelines/make_metaworld_demos.py`) from the scripted experts of
`vlax.data.metaworld_env`. Names, instructions and schemas live here, importing neither
Meta-World, MuJoCo nor the env, so the registry, `vlax stats` and `vlax inspect-data`
work on written data without the `[sim]` extra.

Schema of each dataset (RLDS steps):
  observation/image        uint8 [S, S, 3] JPEG, primary camera (front view of the table)
  observation/wrist_image  uint8 [S, S, 3] JPEG, Meta-World's `gripperPOV` camera
  observation/state        float32 [4]: hand xyz (m) + gripper opening (0 closed .. 1 open)
  observation/full_state   float32 [39]: Meta-World's full observation (goal included)
  action                   float32 [4]: hand xyz delta (clipped to [-1, 1], x 1 cm per
                           step in the sim) + gripper effort (+1 close, -1 open)
  language_instruction     one templated sentence per task
"""

from __future__ import annotations

from typing import Any

from vlax.data.oxe.registry import ActionEncoding, DatasetSpec, register, _REGISTRY

VERSION = "1.0.0"
PROPRIO_DIM = 4  # hand xyz + gripper opening
FULL_STATE_DIM = 39
ACTION_DIM = 4

MT10 = ("reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3",
        "drawer-close-v3", "button-press-topdown-v3", "peg-insert-side-v3",
        "window-open-v3", "window-close-v3")
# The other MT50 tasks (Meta-World 3.x spelling).
_MT50_REST = (
    "assembly-v3", "basketball-v3", "bin-picking-v3", "box-close-v3",
    "button-press-topdown-wall-v3", "button-press-v3", "button-press-wall-v3",
    "coffee-button-v3", "coffee-pull-v3", "coffee-push-v3", "dial-turn-v3",
    "disassemble-v3", "door-close-v3", "door-lock-v3", "door-unlock-v3",
    "faucet-close-v3", "faucet-open-v3", "hammer-v3", "hand-insert-v3",
    "handle-press-side-v3", "handle-press-v3", "handle-pull-side-v3", "handle-pull-v3",
    "lever-pull-v3", "pick-out-of-hole-v3", "pick-place-wall-v3", "plate-slide-back-side-v3",
    "peg-unplug-side-v3", "plate-slide-back-v3", "plate-slide-side-v3", "plate-slide-v3",
    "push-back-v3", "reach-wall-v3",
    "push-wall-v3", "shelf-place-v3", "soccer-v3", "stick-pull-v3", "stick-push-v3",
    "sweep-into-v3", "sweep-v3")
MT50 = tuple(dict.fromkeys(MT10 + _MT50_REST))

# The few-demo fine-tuning recipe: pretrain on 7 MT10 tasks, adapt to these 3.
HELDOUT3 = ("push-v3", "drawer-close-v3", "window-close-v3")

INSTRUCTIONS = {
    "reach-v3": "reach the goal position",
    "push-v3": "push the puck to the goal",
    "pick-place-v3": "pick up the puck and place it at the goal",
    "door-open-v3": "open the door",
    "drawer-open-v3": "open the drawer",
    "drawer-close-v3": "close the drawer",
    "button-press-topdown-v3": "press the button from the top",
    "peg-insert-side-v3": "insert the peg into the hole from the side",
    "window-open-v3": "open the window",
    "window-close-v3": "close the window",
}


def task_name(name: str) -> str:
  """Canonical task name (`drawer-close` -> `drawer-close-v3`); no validity check."""
  name = name.strip()
  return name if name.endswith("-v3") else f"{name}-v3"


def dataset_name(task: str) -> str:
  """`drawer-close-v3` -> `metaworld_drawer_close` (the registry / TFDS name)."""
  return "metaworld_" + task_name(task)[:-len("-v3")].replace("-", "_")


def task_of_dataset(name: str) -> str | None:
  for t in MT50:
    if dataset_name(t) == name:
      return t
  return None


def instruction(task: str) -> str:
  t = task_name(task)
  return INSTRUCTIONS.get(t) or t[:-len("-v3")].replace("-", " ")


def _standardize(traj: dict[str, Any]) -> dict[str, Any]:
  return {"action": traj["action"], "proprio": traj["observation"]["state"],
          "language_instruction": traj["language_instruction"]}


def _spec(task: str) -> DatasetSpec:
  return DatasetSpec(
      name=dataset_name(task), version=VERSION,
      image_keys={"primary": "image", "wrist": "wrist_image"},
      standardize=_standardize, action_dim=ACTION_DIM, proprio_dim=PROPRIO_DIM,
      action_encoding=ActionEncoding.EEF_DELTA_XYZ_4,
      action_normalization_mask=(True, True, True, False),
      proprio_normalization_mask=(True, True, True, True),
      language_key="language_instruction",
      gripper="effort +1 close / -1 open (Meta-World), kept raw",
      control_hz=80.0,  # 5 sim frames of 2.5 ms per step
      # data.proprio_source="full_state": the 39-D state as proprio (the state oracle)
      proprio_sources=(("full_state", "full_state", FULL_STATE_DIM),),
      description=f"Meta-World {task} scripted-expert demos (sim), front + wrist cameras.")


for _task in MT50:
  if dataset_name(_task) not in _REGISTRY:
    register(_spec(_task))
