"""Meta-World scripted-expert demos -> one RLDS dataset per task (`metaworld_<task>`).

The writer behind `data_pipelines/make_metaworld_demos.py` (needs the `[sim]` extra).
The simulator runs in a child process (`vlax.envs.metaworld_experts`: MuJoCo's EGL
rendering crashes next to TensorFlow); this module turns its numpy episodes into RLDS
steps and writes them with TFDS. The spawned child re-imports the parent's main script
(and so this module), so TensorFlow is imported here only inside functions. Names and
schemas of the datasets are in `vlax.data.oxe.metaworld`.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import numpy as np

from vlax.data.oxe import metaworld as mw_names
from vlax.envs import metaworld_env, metaworld_experts


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


def _rlds_episode(episode_id: int, episode: dict[str, Any]) -> dict[str, Any]:
  """An expert episode ({seed, steps}) in the dataset's RLDS layout (reward 1 at the
  last, successful step)."""
  steps = episode["steps"]
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
  return {"steps": out, "episode_metadata": {"episode_id": episode_id,
                                             "seed": episode["seed"]}}


def expert_episodes(task: str, num_episodes: int, *, image_size: int = 64, seed: int = 0,
                    max_steps: int | None = None, action_noise: float = 0.0,
                    stats: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
  """Yields `num_episodes` successful RLDS episodes of the scripted expert (see
  `vlax.envs.metaworld_experts.expert_episodes` for seeds and retries)."""
  episodes = metaworld_experts.expert_episodes(task, num_episodes, image_size=image_size,
                                               seed=seed, max_steps=max_steps,
                                               action_noise=action_noise, stats=stats)
  for i, episode in enumerate(episodes):
    yield _rlds_episode(i, episode)


def write_demos(data_dir: str, tasks: str | Sequence[str], *, num_episodes: int,
                image_size: int = 64, seed: int = 0, num_shards: int = 1,
                max_steps: int | None = None, action_noise: float = 0.0,
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
                        max_steps=max_steps, action_noise=action_noise, stats=stats),
        version=mw_names.VERSION, num_shards=num_shards,
        description=f"Meta-World {task} scripted-expert demos (vlax)")
    out[name] = {"path": path, "episodes": int(num_episodes), **stats}
    if log is not None:
      log(f"{name}: {num_episodes} episodes ({stats['steps']} steps; expert failed "
          f"{stats['failed']} of {stats['attempts']}) -> {path}")
  return out
