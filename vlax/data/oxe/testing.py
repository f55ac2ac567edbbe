"""Small on-disk RLDS datasets with the real OXE feature specs, for tests and benchmarks.

`write_rlds_dataset` writes a genuine TFDS dataset directory (features.json,
dataset_info.json, TFRecord shards) with the dataset's real schema from
`vlax.data.oxe.schemas` and random values, readable offline with
`tfds.builder_from_directory(path)` or `tfds.builder("name:version", data_dir=data_dir)`.
`read_raw_trajectories` reads episodes back the way the robot pipeline does: steps stacked
over T with images still encoded bytes, episode-level fields broadcast to [T, ...].
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping

import numpy as np

from vlax.data.oxe import schemas
from vlax.errors import VlaxError

INSTRUCTIONS = ("pick up the red block", "open the drawer", "put the spoon in the pot",
                "push the blue cube to the left", "fold the towel")

# edit_step(episode_index, t, step) may change a generated step in place before writing.
StepEditor = Callable[[int, int, dict[str, Any]], None]


def _random_leaf(leaf: schemas.Leaf, path: tuple[str, ...], rng: np.random.Generator,
                 image_size, instruction: str) -> Any:
  if leaf.kind == "text":
    if "instruction" in path[-1]:
      return instruction
    return f"{path[-1]}_{int(rng.integers(1_000_000))}"
  shape = leaf.shape
  if leaf.kind in ("image", "depth") and image_size is not None:
    shape = tuple(image_size) + tuple(shape[2:])
  dtype = np.dtype(leaf.dtype)
  if path[-1] == "instruction" and dtype.kind == "i":  # language_table: UTF-8 byte codes
    codes = np.zeros(shape, dtype)
    data = np.frombuffer(instruction.encode("utf-8"), np.uint8)
    codes[:len(data)] = data
    return codes
  if dtype == np.bool_:
    return rng.random(shape) < 0.5 if shape else bool(rng.random() < 0.5)
  if dtype.kind in "iu":
    high = 256 if leaf.kind in ("image", "depth") else 3
    value = rng.integers(0, high, size=shape).astype(dtype)
    return value if shape else dtype.type(value)
  value = (rng.random(shape) if leaf.kind in ("image", "depth")
           else rng.normal(size=shape)).astype(dtype)
  return value if shape else dtype.type(value)


def _random_tree(spec: Mapping[str, Any], rng, image_size, instruction, prefix=()):
  out = {}
  for key, value in spec.items():
    path = prefix + (key,)
    if isinstance(value, Mapping):
      out[key] = _random_tree(value, rng, image_size, instruction, path)
    else:
      out[key] = _random_leaf(value, path, rng, image_size, instruction)
  return out


def random_episode(name: str, length: int, *, rng: np.random.Generator,
                   image_size: tuple[int, int] | None = None, episode_index: int = 0,
                   edit_step: StepEditor | None = None) -> dict[str, Any]:
  """One episode dict (steps list + episode-level fields) following `name`'s schema."""
  schema = schemas.get_schema(name)
  instruction = INSTRUCTIONS[int(rng.integers(len(INSTRUCTIONS)))]
  steps = []
  for t in range(length):
    step = _random_tree(schema.steps, rng, image_size, instruction)
    for flag, value in (("is_first", t == 0), ("is_last", t == length - 1),
                        ("is_terminal", t == length - 1)):
      if flag in step:
        step[flag] = value
    if "reward" in step:
      step["reward"] = np.float32(t == length - 1)
    if "discount" in step:
      step["discount"] = np.float32(1.0)
    if edit_step is not None:
      edit_step(episode_index, t, step)
    steps.append(step)
  episode = _random_tree(schema.episode, rng, image_size, instruction)
  meta = episode.get("episode_metadata", {})
  for key in list(meta):
    if key.startswith("has_"):
      meta[key] = True
  if "episode_id" in meta:
    meta["episode_id"] = np.int32(episode_index)
  episode["steps"] = steps
  return episode


def write_rlds_dataset(name: str, data_dir: str, num_episodes: int = 3,
                       episode_len: tuple[int, int] = (5, 9),
                       image_size: tuple[int, int] | None = None, seed: int = 0,
                       version: str | None = None,
                       edit_step: StepEditor | None = None) -> str:
  """Writes `num_episodes` random episodes of dataset `name`; returns DATA_DIR/name/version.

  episode_len: inclusive (min, max) number of steps per episode.
  image_size: (H, W) replacing the real image / depth sizes (None = real sizes).
  version: defaults to the registered schema's version.
  Other splits of the real dataset (e.g. 'val') get one episode each, 'train' gets the rest.
  """
  import tensorflow_datasets as tfds
  from tensorflow_datasets.core import dataset_info as dataset_info_lib

  schema = schemas.get_schema(name)
  version = version or schema.version
  lo, hi = episode_len
  if num_episodes < 1 or lo < 1 or hi < lo:
    raise VlaxError(f"write_rlds_dataset({name!r}): need num_episodes >= 1 and "
                    f"1 <= min <= max episode_len, got {num_episodes}, {episode_len}")
  path = os.path.join(data_dir, name, version)
  os.makedirs(path, exist_ok=True)
  rng = np.random.default_rng(seed)
  identity = dataset_info_lib.DatasetIdentity(
      name=name, version=tfds.core.Version(version), data_dir=path,
      module_name="vlax.data.oxe.testing")
  info = tfds.core.DatasetInfo(
      builder=identity, features=schemas.features(name, image_size=image_size),
      description=f"vlax generated test data with the schema of {name} {version}")
  splits = ["train"] + [s for s in schema.splits if s in ("val",)]
  writer = tfds.core.SequentialWriter(ds_info=info, max_examples_per_shard=1_000_000)
  writer.initialize_splits(splits)
  index = 0
  for split in splits:
    count = num_episodes if split == "train" else 1
    episodes = []
    for _ in range(count):
      length = int(rng.integers(lo, hi + 1))
      episodes.append(random_episode(name, length, rng=rng, image_size=image_size,
                                     episode_index=index, edit_step=edit_step))
      index += 1
    writer.add_examples({split: episodes})
  writer.close_all()
  return path


def to_raw_trajectory(episode: Mapping[str, Any]) -> dict[str, Any]:
  """An episode read with steps undecoded -> raw trajectory (tf.data-map safe).

  Step fields are already stacked over T; every episode-level field is broadcast to
  [T, ...] under its own key (e.g. traj["episode_metadata"]["file_path"]).
  """
  import tensorflow as tf
  steps = dict(episode["steps"])
  length = tf.shape(steps["is_first"])[0]

  def broadcast(x):
    x = tf.convert_to_tensor(x)
    return tf.broadcast_to(x[None], tf.concat([[length], tf.shape(x)], axis=0))

  for key, value in episode.items():
    if key != "steps":
      steps[key] = tf.nest.map_structure(broadcast, value)
  return steps


def raw_trajectory_dataset(path: str, split: str = "train"):
  """tf.data.Dataset of raw trajectories (images stay encoded bytes) from a dataset dir."""
  import tensorflow_datasets as tfds
  builder = tfds.builder_from_directory(path)
  ds = builder.as_dataset(split=split, decoders={"steps": tfds.decode.SkipDecoding()},
                          shuffle_files=False)
  return ds.map(to_raw_trajectory)


def read_raw_trajectories(path: str, n: int | None = None,
                          split: str = "train") -> list[dict[str, Any]]:
  """The first `n` (default all) raw trajectories of a dataset directory, eager tensors."""
  ds = raw_trajectory_dataset(path, split)
  if n is not None:
    ds = ds.take(n)
  return list(ds)
