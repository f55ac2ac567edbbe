"""Meta-World scripted experts in a child process: numpy episodes for the demo writer.

MuJoCo's EGL rendering crashes in a process that has imported TensorFlow, and the TFDS
writer (`vlax.data.metaworld_demos`) needs TensorFlow, so the simulator runs in a
spawned child process (`_expert_worker`) that sends finished episodes to the parent.
The child imports this module to find its target, so it must never import TensorFlow
(`tests/unit/test_layering.py` checks all of `vlax.envs`).
"""

from __future__ import annotations

import multiprocessing
from typing import Any, Iterator

from vlax.envs import metaworld_env
from vlax.errors import VlaxError


def _expert_worker(task: str, num_episodes: int, image_size: int, seed: int,
                   max_steps: int | None, queue, action_noise: float = 0.0) -> None:
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
      steps, ok = metaworld_env.rollout_expert(env, s, action_noise)
      i += 1
      stats["attempts"] = i
      if not ok:
        stats["failed"] += 1
        continue
      stats["steps"] += len(steps)
      queue.put(("episode", {"seed": s, "steps": steps}))
      written += 1
    env.close()
    queue.put(("stats", stats))
  except VlaxError as e:
    queue.put(("error", str(e)))
  except Exception as e:  # noqa: BLE001 - report anything to the parent, one line
    queue.put(("error", f"{task}: {type(e).__name__}: {e}"))


def expert_episodes(task: str, num_episodes: int, *, image_size: int = 64, seed: int = 0,
                    max_steps: int | None = None, action_noise: float = 0.0,
                    stats: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
  """Yields `num_episodes` successful expert episodes {"seed", "steps"}, the steps as
  `metaworld_env.rollout_expert` returns them ({observation, action, full_state});
  `action_noise`: see `rollout_expert`.

  Layout seeds are `metaworld_env.train_seed(seed, i)` for i = 0, 1, ...; failed episodes
  are dropped (counted in `stats["failed"]`) and the next seed is tried, up to
  3 x num_episodes + 10 attempts. The simulator runs in a spawned child process.
  """
  ctx = multiprocessing.get_context("spawn")
  queue = ctx.Queue(maxsize=8)
  proc = ctx.Process(target=_expert_worker, daemon=True,
                     args=(task, int(num_episodes), int(image_size), int(seed), max_steps,
                           queue, float(action_noise)))
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
