"""Meta-World task names, instructions and the sizes of their observations and actions.

Pure Python (no Meta-World, MuJoCo or numpy): the env, the expert worker, the dataset
registry (`vlax.data.oxe.metaworld`) and the eval all read the names from here, so the
registry, `vlax stats` and `vlax inspect-data` work on written data without the `[sim]`
extra.
"""

from __future__ import annotations

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
  """`drawer-close-v3` -> `metaworld_drawer_close` (the registry / TFDS name; the env
  reports it so that the eval finds the task's statistics)."""
  return "metaworld_" + task_name(task)[:-len("-v3")].replace("-", "_")


def instruction(task: str) -> str:
  t = task_name(task)
  return INSTRUCTIONS.get(t) or t[:-len("-v3")].replace("-", " ")
