"""Registry entries of the Meta-World expert-demo datasets (`metaworld_<task>`).

One RLDS dataset per Meta-World task, written by `data_pipelines/make_metaworld_demos.py`
from the scripted experts (`vlax.data.metaworld_env`). Names, instructions and schemas
live here without importing Meta-World or MuJoCo, so the registry, `vlax stats` and
`vlax inspect-data` work on written data without the `[sim]` extra.

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
      description=f"Meta-World {task} scripted-expert demos (sim), front + wrist cameras.")


for _task in MT50:
  if dataset_name(_task) not in _REGISTRY:
    register(_spec(_task))


# ---------------------------------------------------------------------------------------
# Writer (needs the [sim] extra): expert demos -> one RLDS dataset per task.


def features(image_size: int):
  """TFDS features of a Meta-World demo dataset (RLDS layout, JPEG images)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top - TF is heavy
  from vlax.data import rlds  # pylint: disable=g-import-not-at-top - TF is heavy
  img = lambda: tfds.features.Image(shape=(image_size, image_size, 3),
                                    encoding_format="jpeg")
  vec = lambda n: tfds.features.Tensor(shape=(n,), dtype=np.float32)
  obs = {"image": img(), "wrist_image": img(), "state": vec(PROPRIO_DIM),
         "full_state": vec(FULL_STATE_DIM)}
  return rlds.episode_features(obs, ACTION_DIM,
                               {"episode_id": tfds.features.Scalar(dtype=np.int32),
                                "seed": tfds.features.Scalar(dtype=np.int64)})


def _expert_worker(task: str, num_episodes: int, image_size: int, seed: int,
                   max_steps: int | None, queue) -> None:
  """Child process: runs the expert and puts ("episode", ep) / ("stats", d) / ("error",
  msg) on `queue`. MuJoCo's EGL rendering and TensorFlow crash in one process, so the
  simulator never shares a process with the TFDS writer."""
  from vlax.data import metaworld_env  # pylint: disable=g-import-not-at-top - needs [sim]
  from vlax.errors import VlaxError  # pylint: disable=g-import-not-at-top
  stats = {"attempts": 0, "failed": 0, "steps": 0}
  try:
    env = metaworld_env.MetaWorldEnv(task, image_size=image_size,
                                     max_steps=max_steps or metaworld_env.DEFAULT_MAX_STEPS)
    written, i = 0, 0
    while written < num_episodes:
      if i >= 3 * num_episodes + 10:
        raise VlaxError(f"{task}: the expert failed {stats['failed']} of {i} episodes")
      s = metaworld_env.train_seed(seed, i)
      steps, ok = metaworld_env.rollout_expert(env, s)
      i += 1
      stats["attempts"] = i
      if not ok:
        stats["failed"] += 1
        continue
      out = []
      for t, st in enumerate(steps):
        o = st["observation"]
        last = t == len(steps) - 1
        out.append({"observation": {"image": o["image_primary"],
                                    "wrist_image": o["image_wrist"], "state": o["proprio"],
                                    "full_state": st["full_state"]},
                    "action": st["action"], "language_instruction": o["instruction"],
                    "reward": float(last), "discount": 1.0, "is_first": t == 0,
                    "is_last": last, "is_terminal": last})
      stats["steps"] += len(out)
      queue.put(("episode", {"steps": out,
                             "episode_metadata": {"episode_id": written, "seed": s}}))
      written += 1
    env.close()
    queue.put(("stats", stats))
  except VlaxError as e:
    queue.put(("error", str(e)))
  except Exception as e:  # noqa: BLE001 - report anything to the parent, one line
    queue.put(("error", f"{task}: {type(e).__name__}: {e}"))


def expert_episodes(task: str, num_episodes: int, *, image_size: int = 64, seed: int = 0,
                    max_steps: int | None = None, stats: dict[str, Any] | None = None):
  """Yields `num_episodes` successful RLDS episodes of the scripted expert.

  Layout seeds are `metaworld_env.train_seed(seed, i)` for i = 0, 1, ...; failed episodes
  are dropped (counted in `stats["failed"]`) and the next seed is tried, up to
  3 x num_episodes + 10 attempts. The simulator runs in a spawned child process.
  """
  import multiprocessing  # pylint: disable=g-import-not-at-top
  from vlax.errors import VlaxError  # pylint: disable=g-import-not-at-top
  ctx = multiprocessing.get_context("spawn")
  queue = ctx.Queue(maxsize=8)
  proc = ctx.Process(target=_expert_worker, daemon=True,
                     args=(task, int(num_episodes), int(image_size), int(seed), max_steps,
                           queue))
  proc.start()
  try:
    while True:
      try:
        kind, value = queue.get(timeout=5)
      except Exception as e:  # noqa: BLE001 - queue.Empty: still working, or dead
        if proc.is_alive():
          continue
        raise VlaxError(f"{task}: the Meta-World worker died (exit code "
                        f"{proc.exitcode})") from e
      if kind == "episode":
        yield value
      elif kind == "stats":
        if stats is not None:
          stats.update(value)
        return
      else:
        raise VlaxError(value)
  finally:
    proc.join(timeout=30)
    if proc.is_alive():
      proc.terminate()


def write_demos(data_dir: str, tasks, *, num_episodes: int, image_size: int = 64,
                seed: int = 0, num_shards: int = 1, max_steps: int | None = None,
                log=None) -> dict[str, dict[str, Any]]:
  """Writes `metaworld_<task>` datasets under data_dir; returns {name: {path, episodes,
  attempts, failed, steps}}."""
  from vlax.data import metaworld_env, rlds  # pylint: disable=g-import-not-at-top
  out = {}
  for task in metaworld_env.resolve_tasks(tasks):
    stats: dict[str, Any] = {}
    name = dataset_name(task)
    path = rlds.write_rlds(
        name, data_dir, features(image_size),
        expert_episodes(task, num_episodes, image_size=image_size, seed=seed,
                        max_steps=max_steps, stats=stats),
        version=VERSION, num_shards=num_shards,
        description=f"Meta-World {task} scripted-expert demos (vlax)")
    out[name] = {"path": path, "episodes": int(num_episodes), **stats}
    if log is not None:
      log(f"{name}: {num_episodes} episodes ({stats['steps']} steps; expert failed "
          f"{stats['failed']} of {stats['attempts']}) -> {path}")
  return out
