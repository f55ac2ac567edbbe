"""The robot data pipeline: registered RLDS datasets -> one stream of standardized frames.

Per dataset (trajectory level, parallelism allocated by mixture weight):
  read (per-host file shard, images encoded) -> standardize (registry spec) -> check finite
  -> normalize action/proprio with the dataset's statistics (masked dims raw)
  -> chunk the next K actions (past the end: zero, masked) -> optional history window
  -> pad action/proprio to the mixture's max dims (+ pad masks) -> flatten to frames.
Then: weighted seeded interleave -> frame shuffle buffer (still encoded bytes) ->
decode + resize + (train) stateless augmentation, random shift and proprio dropout ->
tf.data.Options thread/RAM budget.

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
from vlax.data import standardized as standardized_lib
from vlax.data import statistics as stats_lib
from vlax.data import traj as traj_lib
from vlax.data import transforms
from vlax.data.oxe import registry
from vlax.errors import VlaxError

# The standardization step lives in `vlax.data.standardized`; re-exported here.
CAMERAS = standardized_lib.CAMERAS
standardize = standardized_lib.standardize
standardized_trajectories = standardized_lib.standardized_trajectories

# Salts of the train-time recipe switches' stateless seeds (`traj.element_seed`). Colour /
# crop augmentation uses the camera index as its salt; these are far from it, so turning a
# switch on leaves every other random stream as it was.
SHIFT_SALT = 1_000  # + camera index
PROPRIO_DROP_SALT = 2_000
PROPRIO_NOISE_SALT = 3_000


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
    random_shift: int = 0,
    proprio_dropout: float = 0.0,
    proprio_noise: float = 0.0,
    proprio_source: str = "proprio",
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
    random_shift: train only: DrQ random shift of every camera by up to this many pixels
      (edge pad + random crop back), one shift per camera and frame, the same for every
      step of its history (0 = off).
    proprio_dropout: train only: probability that a frame's proprio is left out of the
      prompt; adds observation/proprio_dropped bool [] when > 0 (0 = off).
    proprio_noise: train only: Gaussian noise of this std added to the normalized
      proprio (before the prompt bins it), so a policy with few demos cannot key on
      exact state values of its demos' layouts (0 = off).
    proprio_source: "proprio" (each dataset's own) or another vector a spec lists in its
      `proprio_sources` (Meta-World's "full_state"), read, normalized and padded as the
      proprio; a dataset without it is a VlaxError naming it.
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
  entries = mixture_lib.parse_datasets(datasets)
  if chunk_len < 1 or history < 1:
    raise VlaxError(f"chunk_len and history must be >= 1, got {chunk_len}, {history}")
  cameras = tuple(cameras)
  if int(random_shift) < 0:
    raise VlaxError(f"random_shift must be >= 0 pixels, got {random_shift}")
  if not 0.0 <= float(proprio_dropout) <= 1.0:
    raise VlaxError(f"proprio_dropout must be in [0, 1], got {proprio_dropout}")
  if not float(proprio_noise) >= 0.0:
    raise VlaxError(f"proprio_noise must be >= 0, got {proprio_noise}")
  shift = int(random_shift) if train else 0
  noise = float(proprio_noise) if train else 0.0
  drop_p = float(proprio_dropout) if train else 0.0
  specs = [registry.with_proprio_source(registry.get_spec(n), proprio_source)
           for n, _ in entries]
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
          spec.name, dir_for(spec.name), cache_dir=stats_cache_dir, progress=progress,
          proprio_source=proprio_source)
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
      if shift:
        obs[f"image_{cam}"] = images_lib.random_shift(
            obs[f"image_{cam}"], shift,
            traj_lib.element_seed(host_seed, index, salt=SHIFT_SALT + ci))
    if drop_p:
      u = tf.random.stateless_uniform(
          [], seed=traj_lib.element_seed(host_seed, index, salt=PROPRIO_DROP_SALT))
      obs["proprio_dropped"] = u < drop_p
    if noise:
      p = obs["proprio"]
      obs["proprio"] = p + noise * tf.random.stateless_normal(
          tf.shape(p), seed=traj_lib.element_seed(host_seed, index, salt=PROPRIO_NOISE_SALT),
          dtype=p.dtype)
    return {**frame, "observation": obs}

  frames = traj_lib.frame_map(frames, decode_frame, num_parallel_calls=tf.data.AUTOTUNE)
  frames = traj_lib.with_budget(frames, threads=total_threads, ram_budget_gb=ram_budget_gb,
                                deterministic=deterministic)
  return frames.prefetch(2), all_stats
