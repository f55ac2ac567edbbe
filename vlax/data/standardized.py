"""A registered dataset -> standardized trajectories (the common layout every robot shares).

`standardize` applies a registry spec's per-dataset function to one raw RLDS trajectory
and checks the result: float32 'action' [T, action_dim], 'proprio' [T, proprio_dim], the
instruction, and per camera the encoded frames ('' where the camera is missing). Nothing
is normalized yet: `vlax.data.statistics` reads these trajectories to compute the
statistics, and `vlax.data.robot` normalizes, chunks and batches them.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import tensorflow as tf

from vlax.data import rlds
from vlax.data import traj as traj_lib
from vlax.errors import VlaxError
from vlax.utils import lookup

CAMERAS = ("primary", "secondary", "wrist")


def _describe_keys(tree: Mapping[str, Any], prefix: str = "") -> list[str]:
  out = []
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out += _describe_keys(v, f"{prefix}{k}/")
    else:
      out.append(f"{prefix}{k}")
  return out


def standardize(spec: Any, raw: Mapping[str, Any], cameras: Sequence[str] = (),
                with_images: bool = True) -> dict[str, Any]:
  """Raw RLDS trajectory -> {'action' [T, A], 'proprio' [T, P], 'language_instruction',
  'images': {cam: tf.string [T] ('' = missing)}, 'image_masks': {cam: bool}, '_episode_id'}.

  Schema problems (missing key, wrong shape) are found while tracing, so they raise a
  VlaxError naming the dataset, its directory and the key right away.
  """
  name = spec.name
  try:
    out = spec.standardize(dict(raw))
  except KeyError as e:
    raise VlaxError(f"dataset {name!r}: missing key {e} while standardizing; the data has "
                    f"keys {_describe_keys(raw)}") from None
  if "action" not in out:
    raise VlaxError(f"dataset {name!r}: standardize returned no 'action'")
  length = tf.shape(raw["_episode_id"])[0]
  action = tf.cast(out["action"], tf.float32)
  if action.shape.rank == 1:
    action = action[:, None]
  if action.shape.rank != 2 or action.shape[-1] != spec.action_dim:
    raise VlaxError(f"dataset {name!r}: key 'action' has shape {action.shape} after "
                    f"standardize, expected [T, {spec.action_dim}] (spec.action_dim)")
  proprio = out.get("proprio")
  if proprio is None or spec.proprio_dim == 0:
    proprio = tf.zeros([length, spec.proprio_dim], tf.float32)
  proprio = tf.cast(proprio, tf.float32)
  if proprio.shape.rank == 1:
    proprio = proprio[:, None]
  if proprio.shape.rank != 2 or proprio.shape[-1] != spec.proprio_dim:
    raise VlaxError(f"dataset {name!r}: key 'proprio' has shape {proprio.shape} after "
                    f"standardize, expected [T, {spec.proprio_dim}] (spec.proprio_dim)")
  episode_id = raw["_episode_id"]
  language = out.get("language_instruction")
  if language is None:
    language = tf.fill([length], "")
  result = {
      "action": rlds.check_finite(action, name, "action", episode_id),
      "proprio": rlds.check_finite(proprio, name, "proprio", episode_id),
      "language_instruction": tf.reshape(tf.cast(language, tf.string), [length]),
      "_episode_id": episode_id,
  }
  if with_images:
    imgs, masks = {}, {}
    obs = raw.get("observation", {})
    for cam in cameras:
      key = (spec.image_keys or {}).get(cam)
      if key is None:
        imgs[cam] = tf.fill([length], "")
        masks[cam] = False
        continue
      rel = key[len("observation/"):] if key.startswith("observation/") else key
      found, img = lookup(obs, rel, sep="/")
      if not found:
        raise VlaxError(f"dataset {name!r}: missing image key 'observation/{rel}' for "
                        f"camera {cam!r}; observation has keys {_describe_keys(obs)}"
                        ) from None
      if img.dtype == tf.uint8:  # plain uint8 tensor feature: ship raw bytes, no re-encode
        if img.shape.rank != 4:
          raise VlaxError(f"dataset {name!r}: image key 'observation/{rel}' has shape "
                          f"{img.shape}, expected [T, H, W, C]")
        img = tf.map_fn(tf.io.serialize_tensor, img, fn_output_signature=tf.string)
      elif img.dtype != tf.string:
        raise VlaxError(f"dataset {name!r}: image key 'observation/{rel}' has dtype "
                        f"{img.dtype.name}, expected encoded bytes or uint8")
      imgs[cam] = img
      masks[cam] = True
    result["images"] = imgs
    result["image_masks"] = masks
  return result


def standardized_trajectories(spec: Any, data_dir: str, *, split: str,
                              cameras: Sequence[str] = (), with_images: bool = True,
                              shuffle_files: bool = False, seed: int | None = None,
                              process_index: int | None = None,
                              process_count: int | None = None,
                              num_parallel_reads: int | None = None,
                              num_parallel_calls: int | None = tf.data.AUTOTUNE
                              ) -> tf.data.Dataset:
  """Reads one registered dataset and standardizes each trajectory (not normalized)."""
  ds = rlds.read_trajectories(spec.name, data_dir, version=spec.version, split=split,
                              shuffle_files=shuffle_files, seed=seed,
                              process_index=process_index, process_count=process_count,
                              num_parallel_reads=num_parallel_reads,
                              num_parallel_calls=num_parallel_calls)
  return traj_lib.traj_map(
      ds, lambda raw: standardize(spec, raw, cameras, with_images),
      num_parallel_calls=num_parallel_calls)
