"""Meta-World scripted-expert demos -> one RLDS dataset per task (`metaworld_<task>`).

The writer behind `data_pipelines/make_metaworld_demos.py` (needs the `[sim]` extra).
MuJoCo's EGL rendering crashes in a process that has imported TensorFlow, and the TFDS
writer needs TensorFlow, so the simulator runs in a spawned child process
(`_expert_worker`) that sends finished episodes to this one. This module must therefore
stay importable without TensorFlow: the child imports it to find its target.
Names and schemas of the datasets are in `vlax.data.oxe.metaworld`.
"""

from __future__ import annotations

import multiprocessing
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from vlax.data import metaworld_env
from vlax.data.oxe import metaworld as mw_names
from vlax.errors import VlaxError


def features(image_size: int):
  """TFDS features of a Meta-World demo dataset (RLDS layout, JPEG images)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top - TF is heavy
  from vlax.data import rlds  # pylint: disable=g-import-not-at-top - TF is heavy
  img = lambda: tfds.features.Image(shape=(image_size, image_size, 3),
                                    encoding_format="jpeg")
  vec = lambda n: tfds.features.Tensor(shape=(n,), dtype=np.float32)
  obs = {"image": img(), "wrist_image": img(), "state": vec(mw_names.PROPRIO_DIM),
         "full_state": vec(mw_names.FULL_STATE_DIM)}
  return rlds.episode_features(obs, mw_names.ACTION_DIM,
                               {"episode_id": tfds.features.Scalar(dtype=np.int32),
                                "seed": tfds.features.Scalar(dtype=np.int64)})


def _expert_worker(task: str, num_episodes: int, image_size: int, seed: int,
                   max_steps: int | None, queue) -> None:
  """Child process: runs the expert and puts ("episode", ep) / ("stats", d) / ("error",
  msg) on `queue`."""
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
                    max_steps: int | None = None,
                    stats: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
  """Yields `num_episodes` successful RLDS episodes of the scripted expert.

  Layout seeds are `metaworld_env.train_seed(seed, i)` for i = 0, 1, ...; failed episodes
  are dropped (counted in `stats["failed"]`) and the next seed is tried, up to
  3 x num_episodes + 10 attempts. The simulator runs in a spawned child process.
  """
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


def write_demos(data_dir: str, tasks: str | Sequence[str], *, num_episodes: int,
                image_size: int = 64, seed: int = 0, num_shards: int = 1,
                max_steps: int | None = None,
                log: Callable[[str], None] | None = None) -> dict[str, dict[str, Any]]:
  """Writes `metaworld_<task>` datasets under data_dir; returns {name: {path, episodes,
  attempts, failed, steps}}."""
  from vlax.data import rlds  # pylint: disable=g-import-not-at-top - TF is heavy
  out = {}
  for task in metaworld_env.resolve_tasks(tasks):
    stats: dict[str, Any] = {}
    name = mw_names.dataset_name(task)
    path = rlds.write_rlds(
        name, data_dir, features(image_size),
        expert_episodes(task, num_episodes, image_size=image_size, seed=seed,
                        max_steps=max_steps, stats=stats),
        version=mw_names.VERSION, num_shards=num_shards,
        description=f"Meta-World {task} scripted-expert demos (vlax)")
    out[name] = {"path": path, "episodes": int(num_episodes), **stats}
    if log is not None:
      log(f"{name}: {num_episodes} episodes ({stats['steps']} steps; expert failed "
          f"{stats['failed']} of {stats['attempts']}) -> {path}")
  return out
