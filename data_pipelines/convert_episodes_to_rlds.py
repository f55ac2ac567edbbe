"""Converts a folder of raw robot episodes (.npz, or .hdf5/.h5 when h5py is installed)
into an RLDS (TFDS) dataset, and prints a registry entry template for it.

  python data_pipelines/convert_episodes_to_rlds.py --input_dir episodes/ \
      --name my_robot --data_dir ~/vlax_data

One file = one episode. Recognized keys (T = steps):
  images/<camera> or image_<camera>   uint8 [T, H, W, 3]   (camera names kept)
  image                               uint8 [T, H, W, 3]   (-> camera "primary")
  state (or proprio)                  float [T, P]         (optional)
  action                              float [T, A] or [T]  (required)
  language (or language_instruction)  str scalar or [T]    (optional)
Episodes are streamed one file at a time (bounded RAM). The written dataset is read back
with `vlax.data.rlds` once the printed `DatasetSpec` is registered.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
from typing import Any, Iterator

import numpy as np

EXTS = (".npz", ".hdf5", ".h5")


def _load(path: str) -> dict[str, Any]:
  if path.endswith(".npz"):
    with np.load(path, allow_pickle=False) as f:
      return {k: f[k] for k in f.files}
  try:
    import h5py  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise SystemExit(f"error: {path}: reading .hdf5 needs h5py (pip install h5py)") from None
  out = {}
  with h5py.File(path, "r") as f:
    def visit(name, obj):
      if isinstance(obj, h5py.Dataset):
        out[name] = obj[()]
    f.visititems(visit)
  return out


def _text(v: Any) -> str:
  v = np.asarray(v)
  v = v.reshape(-1)[0] if v.size else ""
  return v.decode() if isinstance(v, bytes) else str(v)


def parse_episode(raw: dict[str, Any], path: str) -> dict[str, Any]:
  """Raw file dict -> {"images": {cam: [T,H,W,3]}, "state", "action", "language"}."""
  from vlax.errors import VlaxError  # pylint: disable=g-import-not-at-top
  if "action" not in raw:
    raise VlaxError(f"{path}: no 'action' key (keys: {sorted(raw)})")
  action = np.asarray(raw["action"], np.float32)
  if action.ndim == 1:
    action = action[:, None]
  t = action.shape[0]
  images = {}
  for k, v in raw.items():
    cam = None
    if k.startswith("images/"):
      cam = k[len("images/"):]
    elif k.startswith("image_"):
      cam = k[len("image_"):]
    elif k == "image":
      cam = "primary"
    if cam is None:
      continue
    v = np.asarray(v)
    if v.dtype != np.uint8 or v.ndim != 4 or v.shape[0] != t or v.shape[-1] not in (1, 3):
      raise VlaxError(f"{path}: key {k!r} must be uint8 [T={t}, H, W, 3], got "
                      f"{v.dtype} {v.shape}")
    images[cam.replace("/", "_")] = v if v.shape[-1] == 3 else np.repeat(v, 3, -1)
  state = raw.get("state", raw.get("proprio"))
  state = (np.zeros((t, 0), np.float32) if state is None else
           np.asarray(state, np.float32).reshape(t, -1))
  if state.shape[0] != t:
    raise VlaxError(f"{path}: 'state' has {state.shape[0]} steps, 'action' has {t}")
  lang = raw.get("language", raw.get("language_instruction", ""))
  lang = np.asarray(lang)
  langs = ([_text(x) for x in lang.reshape(-1)] if lang.ndim and lang.size == t else
           [_text(lang)] * t)
  for name, v in (("action", action), ("state", state)):
    if not np.isfinite(v).all():
      bad = np.argwhere(~np.isfinite(v))[0]
      raise VlaxError(f"{path}: NaN/Inf in {name!r} step {bad[0]} dimension {bad[1]}")
  return {"images": images, "state": state, "action": action, "language": langs}


def rlds_features(first: dict[str, Any], encoding: str):
  """The TFDS features of episodes shaped like `first` (a `parse_episode` result)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  obs = {f"image_{c}": tfds.features.Image(shape=(None, None, 3), encoding_format=encoding)
         for c in first["images"]}
  if first["state"].shape[1]:
    obs["state"] = tfds.features.Tensor(shape=(first["state"].shape[1],), dtype=np.float32)
  from vlax.data import rlds  # pylint: disable=g-import-not-at-top
  return rlds.episode_features(obs, first["action"].shape[1],
                               {"file_path": tfds.features.Text()})


def episode_example(ep: dict[str, Any], path: str) -> dict[str, Any]:
  """A parsed episode -> one RLDS example (steps with is_first/is_last, reward at the end)."""
  t = ep["action"].shape[0]
  steps = []
  for i in range(t):
    obs = {f"image_{c}": v[i] for c, v in ep["images"].items()}
    if ep["state"].shape[1]:
      obs["state"] = ep["state"][i]
    last = i == t - 1
    steps.append({"observation": obs, "action": ep["action"][i],
                  "language_instruction": ep["language"][i], "reward": float(last),
                  "discount": 1.0, "is_first": i == 0, "is_last": last,
                  "is_terminal": last})
  return {"steps": steps, "episode_metadata": {"file_path": path}}


def _episodes(files: list[str], first: dict[str, Any]) -> Iterator[dict[str, Any]]:
  from vlax.errors import VlaxError  # pylint: disable=g-import-not-at-top
  for path in files:
    ep = first if path == files[0] else parse_episode(_load(path), path)
    if sorted(ep["images"]) != sorted(first["images"]) or (
        ep["action"].shape[1] != first["action"].shape[1] or
        ep["state"].shape[1] != first["state"].shape[1]):
      raise VlaxError(f"{path}: cameras/action/state dims differ from {files[0]}")
    yield episode_example(ep, path)


def registry_template(name: str, version: str, first: dict[str, Any],
                      files: list[str], gripper_dims: list[int] | None = None) -> str:
  """Python source of a DatasetSpec for the converted data (edit, then register it).

  gripper_dims: action dimensions known to be grippers (kept raw); default: a guess.
  """
  cams = list(first["images"])
  roles = {}
  for c in cams:
    role = "wrist" if "wrist" in c or "hand" in c else (
        "primary" if "primary" not in roles else "secondary")
    roles.setdefault(role, f"image_{c}")
  a = first["action"]
  adim, pdim = a.shape[1], first["state"].shape[1]
  # Guess: a last action dim that only takes two values is a gripper -> keep raw.
  last_binary = adim > 1 and len(np.unique(a[:, -1])) <= 2
  mask = tuple([True] * (adim - 1) + [not last_binary]) if adim else ()
  gripper_note = f"gripper guessed: {last_binary}"
  if gripper_dims is not None:
    mask = tuple(i not in gripper_dims for i in range(adim))
    gripper_note = f"gripper dims by name: {list(gripper_dims)}"
  std_proprio = 'traj["observation"]["state"]' if pdim else "None"
  # The default val split (train[95%:]) is empty below 20 episodes: evaluate on the last.
  val_split = ("" if len(files) >= 20 else
               f'    val_split="train[-1:]",  # {len(files)} episodes: the last (also trained on)\n')
  return f'''# Registry entry for {name} (converted from {len(files)} episodes). Check every line.
from vlax.data.oxe.registry import ActionEncoding, DatasetSpec, register


def _standardize_{name}(traj):
  return {{
      "action": traj["action"],  # [T, {adim}]
      "proprio": {std_proprio},  # [T, {pdim}]
      "language_instruction": traj["language_instruction"],
  }}


register(DatasetSpec(
    name={name!r},
    version={version!r},
    image_keys={roles!r},
    standardize=_standardize_{name},
    action_dim={adim},
    proprio_dim={pdim},
    action_encoding=ActionEncoding.OTHER,  # e.g. EEF_DELTA_7, JOINT_POS
    action_normalization_mask={mask!r},  # False = keep raw ({gripper_note})
    proprio_normalization_mask={tuple([True] * pdim)!r},
    language_key="language_instruction",
    gripper="TODO: open=1 closed=0?",
    normalization_type="bounds",
{val_split}))
'''


def convert_episodes(input_dir: str, name: str, data_dir: str, *, version: str = "1.0.0",
                     image_encoding: str = "jpeg", num_shards: int = 1
                     ) -> tuple[str, str]:
  """Converts every episode file in `input_dir`; returns (dataset dir, registry template)."""
  from vlax.data import rlds  # pylint: disable=g-import-not-at-top
  from vlax.errors import VlaxError  # pylint: disable=g-import-not-at-top
  files = sorted(f for f in glob.glob(os.path.join(input_dir, "*")) if f.endswith(EXTS))
  if not files:
    raise VlaxError(f"{input_dir}: no episode files ({', '.join(EXTS)})")
  first = parse_episode(_load(files[0]), files[0])
  path = rlds.write_rlds(name, data_dir, rlds_features(first, image_encoding),
                         _episodes(files, first), version=version, num_shards=num_shards,
                         description=f"converted from {input_dir}")
  return path, registry_template(name, version, first, files)


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--input_dir", required=True)
  p.add_argument("--name", required=True, help="dataset (and registry) name")
  p.add_argument("--data_dir", required=True, help="output root")
  p.add_argument("--version", default="1.0.0")
  p.add_argument("--image_encoding", default="jpeg", choices=("jpeg", "png"))
  p.add_argument("--num_shards", type=int, default=1)
  args = p.parse_args(argv)
  return report(lambda: convert_episodes(args.input_dir, args.name, args.data_dir,
                                         version=args.version,
                                         image_encoding=args.image_encoding,
                                         num_shards=args.num_shards))


def report(convert) -> int:
  """Runs `convert() -> (path, registration)` for a command line: the registration on
  stdout (to save as a VLAX_DATASETS file), the path on stderr, bad input as one `error:`
  line and exit status 2."""
  from vlax.errors import VlaxError  # pylint: disable=g-import-not-at-top
  try:
    path, template = convert()
  except VlaxError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"# wrote {path}", file=sys.stderr)
  print(template)
  return 0


if __name__ == "__main__":
  sys.exit(main())
