"""Synthetic robot frames in the contract's frame format (two embodiments), for the
sequence-builder and co-training tests (owned with tests/unit/test_sequence.py)."""

import numpy as np

from vlax.data import normalization

K = 4  # chunk length
A_MAX = 7
P_MAX = 5
IMG = 16
EMBODIMENTS = {  # name: (action_dim, proprio_dim, instruction, cameras present)
    "arm7": (7, 5, "pick up the red block", ("primary", "wrist")),
    "base3": (3, 2, "go to the blue target", ("primary",)),
}


def robot_actions(name: str, n: int, seed: int):
  """Smooth robot-unit chunks [n, K, A] (last dim of arm7 is a raw 0/1 gripper)."""
  a = EMBODIMENTS[name][0]
  rng = np.random.default_rng(seed)
  t = np.arange(K)[None, :, None]
  scale = np.linspace(0.05, 3.0, a)[None, None, :]
  x = scale * np.sin(rng.uniform(0, 6, (n, 1, a)) + 0.3 * t) + rng.uniform(-1, 1, (1, 1, a))
  if name == "arm7":
    x[..., -1] = (rng.uniform(size=(n, 1)) > 0.5).astype(float)
  return x.astype(np.float32)


def stats_for(x: np.ndarray, name: str) -> dict:
  a = x.shape[-1]
  flat = x.reshape(-1, a).astype(np.float64)
  mask = [True] * a
  if name == "arm7":
    mask[-1] = False
  s = {"mean": flat.mean(0).tolist(), "std": flat.std(0).tolist(),
       "min": flat.min(0).tolist(), "max": flat.max(0).tolist(),
       "q01": flat.min(0).tolist(), "q99": flat.max(0).tolist(), "mask": mask}
  return {"action": s, "proprio": s, "num_transitions": len(flat), "num_trajectories": 1}


def synthetic_frames(name: str, index: int, n: int = 6, seed: int = 0):
  """(numpy frames dict with leading dim n, robot-unit actions [n, K, A], stats)."""
  a, p, instr, cams = EMBODIMENTS[name]
  rng = np.random.default_rng(seed + 17 * index)
  raw = robot_actions(name, n, seed + index)
  stats = stats_for(raw, name)
  act = np.zeros((n, K, A_MAX), np.float32)
  act[:, :, :a] = normalization.normalize(raw, stats["action"])
  pad = np.zeros((n, K, A_MAX), bool)
  pad[:, :, :a] = True
  pad[-1, K // 2:, :] = False  # last frame: episode ends inside the chunk
  act[-1, K // 2:, :] = 0.0
  obs = {"proprio": np.zeros((n, P_MAX), np.float32),
         "proprio_pad_mask": np.zeros((n, P_MAX), bool)}
  obs["proprio"][:, :p] = rng.uniform(-1, 1, (n, p))
  obs["proprio_pad_mask"][:, :p] = True
  for cam in ("primary", "wrist"):
    present = cam in cams
    obs[f"image_{cam}"] = (rng.integers(0, 256, (n, IMG, IMG, 3)) * present).astype(np.uint8)
    obs[f"image_{cam}_mask"] = np.full((n,), present)
  frames = {"observation": obs, "action": act, "action_pad_mask": pad,
            "action_dim": np.full((n,), a, np.int32),
            "language_instruction": np.array([instr.encode()] * n),
            "dataset_name": np.array([name.encode()] * n),
            "dataset_index": np.full((n,), index, np.int32)}
  return frames, raw, stats
