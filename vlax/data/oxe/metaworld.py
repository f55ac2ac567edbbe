"""Registry entries of the Meta-World expert-demo datasets (`metaworld_<task>`).

One RLDS dataset per Meta-World task, written by `vlax.data.metaworld_demos` (run by
`data_pipelines/make_metaworld_demos.py`) from the scripted experts of
`vlax.envs.metaworld_experts`. Schemas live here and the names in
`vlax.envs.metaworld_tasks` (pure Python); neither imports Meta-World, MuJoCo nor the
env, so the registry, `vlax stats` and `vlax inspect-data` work on written data without
the `[sim]` extra.

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
# The names live with the env (vlax.envs may not import vlax.data); re-exported here.
from vlax.envs.metaworld_tasks import (  # pylint: disable=unused-import (re-exported)
    ACTION_DIM, FULL_STATE_DIM, HELDOUT3, INSTRUCTIONS, MT10, MT50, PROPRIO_DIM,
    dataset_name, instruction, task_name)

VERSION = "1.0.0"


def task_of_dataset(name: str) -> str | None:
  for t in MT50:
    if dataset_name(t) == name:
      return t
  return None


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
