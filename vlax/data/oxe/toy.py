"""Registry entries and writer of the built-in toy datasets `toy_reach_a/b/c`.

The debug config trains on a + b (two embodiments with different action spaces and
cameras, see `vlax.envs.toy_env`); c (2-D action, no gripper) is the "new robot" that
experiments/finetune_new_robot.py adapts a pretrained checkpoint to (mixture
`toy_new_robot`). `write_toy_robot_data(data_dir)` generates them as real
RLDS/TFDS datasets in a few seconds; `data_pipelines/make_toy_robot_data.py` is its CLI.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import numpy as np

from vlax.envs import toy_env
from vlax.envs.toy_env import EMBODIMENTS, ToyReachEnv, rollout_oracle
from vlax.data.oxe.registry import ActionEncoding, DatasetSpec, register, _REGISTRY

VERSION = "1.0.0"
TOY_DATASETS = {"toy_reach_a": "a", "toy_reach_b": "b", "toy_reach_c": "c"}


def _standardize_toy(traj: dict[str, Any]) -> dict[str, Any]:
  return {
      "action": traj["action"],
      "proprio": traj["observation"]["state"],
      "language_instruction": traj["language_instruction"],
  }


def _register() -> None:
  specs = [
      DatasetSpec(
          name="toy_reach_a", version=VERSION, image_keys={"primary": "image"},
          standardize=_standardize_toy, action_dim=3, proprio_dim=2,
          action_encoding=ActionEncoding.PLANAR_2,
          action_normalization_mask=(True, True, False),
          proprio_normalization_mask=(True, True),
          language_key="language_instruction", gripper="close=1 open=0 (toy)",
          description="Toy planar reaching: [dx, dy, gripper], one top-down camera."),
      DatasetSpec(
          name="toy_reach_b", version=VERSION,
          image_keys={"primary": "image", "wrist": "wrist_image"},
          standardize=_standardize_toy, action_dim=4, proprio_dim=4,
          action_encoding=ActionEncoding.OTHER,
          action_normalization_mask=(True, True, True, False),
          proprio_normalization_mask=(True, True, True, False),
          language_key="language_instruction", gripper="close=1 open=0 (toy)",
          description="Toy 3-D reaching: [dx, dy, dz, gripper], top-down + wrist cameras."),
      DatasetSpec(
          name="toy_reach_c", version=VERSION,
          image_keys={"primary": "image", "wrist": "wrist_image"},
          standardize=_standardize_toy, action_dim=2, proprio_dim=2,
          action_encoding=ActionEncoding.PLANAR_2,
          action_normalization_mask=(True, True),
          proprio_normalization_mask=(True, True),
          language_key="language_instruction", gripper="none",
          description="Toy planar reaching without gripper: [dx, dy], top-down + wrist "
                      "cameras (the fine-tuning recipe's new robot)."),
  ]
  for spec in specs:
    if spec.name not in _REGISTRY:
      register(spec)


_register()


def toy_features(embodiment: str, image_size: int):
  """TFDS features of a toy dataset (RLDS layout, JPEG images)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  e = EMBODIMENTS[embodiment]
  img = lambda: tfds.features.Image(shape=(image_size, image_size, 3),
                                    encoding_format="jpeg")
  obs = {"image": img(), "state": tfds.features.Tensor(shape=(e["proprio_dim"],),
                                                        dtype=np.float32)}
  if "wrist" in e["cameras"]:
    obs["wrist_image"] = img()
  from vlax.data import rlds  # pylint: disable=g-import-not-at-top
  return rlds.episode_features(obs, e["action_dim"],
                               {"episode_id": tfds.features.Scalar(dtype=np.int32)})


def toy_episodes(embodiment: str, num_episodes: int, *, image_size: int = 64,
                 episode_len: int = 20, seed: int = 0, end_at_success: bool = False,
                 num_blocks: int = toy_env.NUM_BLOCKS,
                 block_size: float = toy_env.BLOCK_SIZE,
                 target_colors: Sequence[str] | None = None,
                 distractor_colors: Sequence[str] | None = None):
  """Yields RLDS episodes of the oracle policy in ToyReachEnv (deterministic in seed).

  episode_len: the step limit; with `end_at_success` an episode ends at its successful
  step (5 steps on average), otherwise it always has `episode_len` steps.
  num_blocks, block_size, target_colors, distractor_colors: the scene (see ToyReachEnv;
  the colour pools keep a held-out colour out, `toy_env.held_out_colors`).
  """
  env = ToyReachEnv(embodiment, image_size=image_size, max_steps=episode_len, seed=seed,
                    num_blocks=num_blocks, block_size=block_size,
                    target_colors=target_colors, distractor_colors=distractor_colors)
  for i in range(num_episodes):
    steps = rollout_oracle(env, seed=seed * 100_003 + i, end_at_success=end_at_success)
    out = []
    for t, s in enumerate(steps):
      o = s["observation"]
      obs = {"image": o["image_primary"], "state": o["proprio"]}
      if "image_wrist" in o:
        obs["wrist_image"] = o["image_wrist"]
      last = t == len(steps) - 1
      out.append({"observation": obs, "action": s["action"],
                  "language_instruction": o["instruction"], "reward": float(last),
                  "discount": 1.0, "is_first": t == 0, "is_last": last,
                  "is_terminal": last})
    yield {"steps": out, "episode_metadata": {"episode_id": i}}


def write_toy_robot_data(data_dir: str, *, num_episodes: int = 100, image_size: int = 64,
                         episode_len: int = 20, seed: int = 0, num_shards: int = 2,
                         datasets: Sequence[str] = ("toy_reach_a", "toy_reach_b"),
                         end_at_success: bool = False,
                         num_blocks: int = toy_env.NUM_BLOCKS,
                         block_size: float = toy_env.BLOCK_SIZE,
                         target_colors: Sequence[str] | None = None,
                         distractor_colors: Sequence[str] | None = None,
                         overwrite: bool = False) -> dict[str, str]:
  """Writes the toy RLDS datasets under `data_dir`; returns {name: version dir}.

  Default: the debug pretraining robots a + b; pass `datasets` for toy_reach_c.

  Skips a dataset that was already written with the same settings (recorded in
  `<version dir>/vlax_toy_settings.json`) unless `overwrite`; different settings rewrite it,
  so a changed config never trains on stale toy data.
  Each dataset gets its own seed stream (`seed` + its index in TOY_DATASETS), so a, b
  and c differ and do not depend on which others are written.
  """
  from vlax.data import rlds  # pylint: disable=g-import-not-at-top
  out = {}
  for name in datasets:
    if name not in TOY_DATASETS:
      raise ValueError(f"unknown toy dataset {name!r}; use {list(TOY_DATASETS)}")
    k = list(TOY_DATASETS).index(name)  # a fixed stream per dataset, whatever the list
    path = os.path.join(str(data_dir), name, VERSION)
    settings = {"num_episodes": int(num_episodes), "image_size": int(image_size),
                "episode_len": int(episode_len), "seed": int(seed + k),
                "end_at_success": bool(end_at_success), "num_shards": int(num_shards),
                "num_blocks": int(num_blocks), "block_size": float(block_size)}
    # Recorded only when set: data written before colour pools existed stays valid.
    for key, value in (("target_colors", target_colors),
                       ("distractor_colors", distractor_colors)):
      if value is not None:
        settings[key] = list(value)
    settings_path = os.path.join(path, SETTINGS_FILE)
    if (not overwrite and os.path.exists(os.path.join(path, "dataset_info.json"))
        and _read_settings(settings_path) in (settings, None)):
      out[name] = path  # None: written before settings were recorded; keep it
      continue
    emb = TOY_DATASETS[name]
    out[name] = rlds.write_rlds(
        name, data_dir, toy_features(emb, image_size),
        toy_episodes(emb, num_episodes, image_size=image_size, episode_len=episode_len,
                     seed=seed + k, end_at_success=end_at_success,
                     num_blocks=num_blocks, block_size=block_size,
                     target_colors=target_colors, distractor_colors=distractor_colors),
        version=VERSION, num_shards=num_shards,
        description=f"vlax toy reaching data, embodiment {emb}")
    with open(settings_path, "w") as f:
      json.dump(settings, f, sort_keys=True)
  return out


SETTINGS_FILE = "vlax_toy_settings.json"


def write_for_data_config(data_dir: str, data_config: Any, datasets: Sequence[str],
                          image_size: int | None = None) -> dict[str, str]:
  """write_toy_robot_data with the `config.data.toy_*` settings (training and eval call
  this, so both generate the same deterministic episodes)."""
  d = data_config
  return write_toy_robot_data(
      data_dir, num_episodes=int(d.get("toy_episodes")),
      image_size=int(image_size or d.get("image_size")),
      episode_len=int(d.get("toy_episode_len")),
      end_at_success=bool(d.get("toy_end_at_success")), datasets=tuple(datasets),
      **toy_env.scene_kwargs(d))


def _read_settings(path: str) -> dict[str, Any] | None:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)
