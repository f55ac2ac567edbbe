"""The robot data pipeline: registered RLDS datasets -> one stream of standardized frames.

Per dataset (trajectory level, parallelism allocated by mixture weight):
  read (per-host file shard, images encoded) -> standardize (registry spec) -> check finite
  -> normalize action/proprio with the dataset's statistics (masked dims raw)
  -> chunk the next K actions (past the end: zero, masked) -> optional history window
  -> pad action/proprio to the mixture's max dims (+ pad masks) -> flatten to frames.
Then: weighted seeded interleave -> frame shuffle buffer (still encoded bytes) ->
decode + resize + (train) stateless augmentation -> tf.data.Options thread/RAM budget.

The frame format is the one in the project contract (see `make_robot_dataset`).
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import tensorflow as tf

from vlax.data import images as images_lib
from vlax.data import mixture as mixture_lib
from vlax.data import rlds
from vlax.data import seeds as seeds_lib
from vlax.data import traj as traj_lib
from vlax.data import transforms
from vlax.errors import VlaxError

CAMERAS = ("primary", "secondary", "wrist")


def _get_path(tree: Mapping[str, Any], key: str) -> Any:
  node = tree
  for part in key.split("/"):
    node = node[part]
  return node


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
      try:
        img = _get_path(obs, rel)
      except (KeyError, TypeError):
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


def to_frames_format(traj: Mapping[str, Any], *, spec: Any, stats: Mapping[str, Any],
                     dataset_index: int, cameras: Sequence[str], chunk_len: int,
                     history: int, max_action_dim: int, max_proprio_dim: int
                     ) -> dict[str, Any]:
  """Standardized trajectory -> per-step frames of the contract (images still encoded)."""
  length = tf.shape(traj["action"])[0]
  mode = stats.get("normalization_type", spec.normalization_type)
  action = transforms.normalize(traj["action"], stats["action"], mode)
  proprio = transforms.normalize(traj["proprio"], stats["proprio"], mode)
  chunk, time_valid = transforms.chunk_actions(action, chunk_len)  # [T,K,A], [T,K]
  chunk, dim_valid = transforms.pad_last_dim(chunk, max_action_dim)
  action_pad_mask = tf.logical_and(dim_valid, time_valid[:, :, None])
  proprio, proprio_mask = transforms.pad_last_dim(proprio, max_proprio_dim)
  obs = {}
  for cam in cameras:
    img = traj["images"][cam]
    cam_mask = tf.fill([length], traj["image_masks"][cam])
    if history > 1:
      img, _ = transforms.history_window(img, history)
    obs[f"image_{cam}"] = img
    obs[f"image_{cam}_mask"] = cam_mask
  if history > 1:
    proprio, step_mask = transforms.history_window(proprio, history)
    proprio_mask, _ = transforms.history_window(proprio_mask, history)
    obs["timestep_pad_mask"] = step_mask
  obs["proprio"] = proprio
  obs["proprio_pad_mask"] = proprio_mask
  return {
      "observation": obs,
      "action": chunk,
      "action_pad_mask": action_pad_mask,
      "action_dim": tf.fill([length], tf.constant(spec.action_dim, tf.int32)),
      "language_instruction": traj["language_instruction"],
      "dataset_name": tf.fill([length], spec.name),
      "dataset_index": tf.fill([length], tf.constant(dataset_index, tf.int32)),
  }


def make_robot_dataset(
    datasets: Sequence[Any],
    data_dir: str | Mapping[str, str],
    *,
    image_size: int | tuple[int, int] | Mapping[str, Any] = 224,
    cameras: Sequence[str] = ("primary", "wrist"),
    chunk_len: int = 1,
    history: int = 1,
    train: bool = True,
    seed: int = 0,
    shuffle_buffer: int = 10_000,
    split: str | Mapping[str, str] | None = None,
    stats_cache_dir: str | None = None,
    statistics: Mapping[str, Any] | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    balance_weights: bool = False,
    aspect: str = "stretch",
    augment: images_lib.AugmentConfig | bool | None = None,
    max_action_dim: int | None = None,
    max_proprio_dim: int | None = None,
    num_threads: int | None = None,
    read_threads: int | None = None,
    ram_budget_gb: float | None = None,
    deterministic: bool = True,
    repeat: bool | None = None,
    progress: bool = True,
) -> tuple[tf.data.Dataset, dict[str, Any]]:
  """Builds the robot frame stream of a weighted dataset mixture.

  Args:
    datasets: [(registry name, weight)] (or names, or "name:weight" strings).
    data_dir: directory (local or gs://) holding `<name>/<version>/`, or {name: dir}.
    image_size: model image size per camera: int, (H, W), or {camera: int | (H, W)}.
    cameras: output cameras; a dataset without one gets zeros + `image_<cam>_mask` False.
    chunk_len: K future actions per frame.
    history: observation window length (1 = current frame only).
    train: training stream (infinite, file shuffling, shuffle buffer, augmentation) or
      evaluation stream (finite, in order, no augmentation).
    seed: base seed of file order, interleave, shuffle and augmentation.
    shuffle_buffer: frames in the shuffle buffer (encoded images: ~15 KB per image).
    split: TFDS split for every dataset, or {name: split}; default each spec's
      train_split (train) / val_split (eval).
    stats_cache_dir: statistics cache root (default $VLAX_CACHE_DIR or ~/.cache/vlax).
    statistics: precomputed {name: stats} (e.g. from a checkpoint) instead of computing.
    process_index, process_count: this host's data shard (default: jax's).
    balance_weights: multiply weights by each dataset's number of transitions.
    aspect: "stretch" or "pad" (keep aspect ratio, pad to square/size).
    augment: AugmentConfig, or True/None (default config when train), or False.
    max_action_dim, max_proprio_dim: pad sizes (default: the mixture's max).
    num_threads: trajectory-level threads split by weight, and the private thread pool of
      the whole pipeline (default: 2 x CPU count).
    read_threads: files read in parallel, split by weight (default: 1 per dataset + weight).
    ram_budget_gb: tf.data autotune RAM budget (default TF's).
    deterministic: same seed -> same stream.
    repeat: repeat forever (default: train).

  Returns:
    (frames dataset, {name: statistics}). Frames (unbatched) have:
      observation/image_<cam> uint8 [H, W, 3] ([history, H, W, 3] if history > 1),
      observation/image_<cam>_mask bool [], observation/proprio float32 [P_max]
      ([history, P_max]), observation/proprio_pad_mask bool like proprio,
      observation/timestep_pad_mask bool [history] (history > 1 only),
      action float32 [K, A_max], action_pad_mask bool [K, A_max], action_dim int32 [],
      language_instruction, dataset_name tf.string [], dataset_index int32 [].
  """
  from vlax.data import statistics as stats_lib  # pylint: disable=g-import-not-at-top
  from vlax.data.oxe import registry  # pylint: disable=g-import-not-at-top
  entries = mixture_lib.parse_datasets(datasets)
  if chunk_len < 1 or history < 1:
    raise VlaxError(f"chunk_len and history must be >= 1, got {chunk_len}, {history}")
  cameras = tuple(cameras)
  if not cameras:
    raise VlaxError("make_robot_dataset needs at least one camera")
  specs = [registry.get_spec(n) for n, _ in entries]
  if process_index is None or process_count is None:
    pi, pc = rlds.default_process()
    process_index = pi if process_index is None else process_index
    process_count = pc if process_count is None else process_count
  repeat = train if repeat is None else repeat
  if augment is None or augment is True:
    augment_config = images_lib.AugmentConfig() if train else None
  elif augment is False:
    augment_config = None
  else:
    augment_config = augment if train else None

  def dir_for(name):
    if isinstance(data_dir, Mapping):
      if name not in data_dir:
        raise VlaxError(f"dataset {name!r}: no data_dir given for it")
      return data_dir[name]
    return data_dir

  all_stats = {}
  for spec in specs:
    if statistics is not None and spec.name in statistics:
      all_stats[spec.name] = statistics[spec.name]
    else:
      all_stats[spec.name] = stats_lib.get_dataset_statistics(
          spec.name, dir_for(spec.name), cache_dir=stats_cache_dir, progress=progress)
  a_max = max(s.action_dim for s in specs)
  p_max = max(s.proprio_dim for s in specs)
  if max_action_dim is not None:
    if max_action_dim < a_max:
      raise VlaxError(f"max_action_dim={max_action_dim} < largest action dim {a_max}")
    a_max = max_action_dim
  if max_proprio_dim is not None:
    if max_proprio_dim < p_max:
      raise VlaxError(f"max_proprio_dim={max_proprio_dim} < largest proprio dim {p_max}")
    p_max = max_proprio_dim

  probs = mixture_lib.mixture_weights(
      [w for _, w in entries], [all_stats[s.name]["num_transitions"] for s in specs],
      balance=balance_weights)
  cpus = os.cpu_count() or 1
  total_threads = num_threads or 2 * cpus
  traj_threads = mixture_lib.allocate_threads(total_threads, probs)
  reads = mixture_lib.allocate_threads(read_threads or len(specs) + min(cpus, 4), probs)
  host_seed = seeds_lib.fold(seed, process_index)

  streams = []
  for i, spec in enumerate(specs):
    ds_split = split.get(spec.name) if isinstance(split, Mapping) else split
    ds_split = ds_split or (spec.train_split if train else spec.val_split)
    ds = standardized_trajectories(
        spec, dir_for(spec.name), split=ds_split, cameras=cameras, with_images=True,
        shuffle_files=train, seed=seeds_lib.wrap(host_seed + i), process_index=process_index,
        process_count=process_count, num_parallel_reads=reads[i],
        num_parallel_calls=traj_threads[i])
    if repeat:
      ds = ds.repeat()
    ds = traj_lib.traj_map(
        ds, lambda t, spec=spec, i=i: to_frames_format(
            t, spec=spec, stats=all_stats[spec.name], dataset_index=i, cameras=cameras,
            chunk_len=chunk_len, history=history, max_action_dim=a_max,
            max_proprio_dim=p_max),
        num_parallel_calls=traj_threads[i])
    streams.append(traj_lib.flatten(ds))

  frames = mixture_lib.interleave(streams, probs, seed=host_seed, stop_on_empty=False)
  if train and shuffle_buffer > 1:
    frames = frames.shuffle(shuffle_buffer, seed=host_seed, reshuffle_each_iteration=True)
  frames = traj_lib.with_index(frames)

  sizes = {cam: images_lib.image_size_for(dict(image_size) if isinstance(
      image_size, Mapping) else image_size, cam) for cam in cameras}

  def decode_frame(frame):
    index = frame.pop("_index")
    obs = dict(frame["observation"])
    for ci, cam in enumerate(cameras):
      crop = augment_config is not None and cam in augment_config.crop_cameras
      obs[f"image_{cam}"] = images_lib.process(
          obs[f"image_{cam}"], sizes[cam], aspect=aspect, augment_config=augment_config,
          seed=traj_lib.element_seed(host_seed, index, salt=ci), crop=crop)
    return {**frame, "observation": obs}

  frames = traj_lib.frame_map(frames, decode_frame, num_parallel_calls=tf.data.AUTOTUNE)
  frames = traj_lib.with_budget(frames, threads=total_threads, ram_budget_gb=ram_budget_gb,
                                deterministic=deterministic)
  return frames.prefetch(2), all_stats
