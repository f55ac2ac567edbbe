"""ToyReach: a tiny, fast, seeded reaching environment with three embodiments.

Several coloured blocks lie on a table seen from above; the instruction names one
("move to the red block"). The correct action is a clipped step from the end effector
towards the named block, so it is a learnable function of the image and the instruction.
The same class generates the debug config's RLDS data (`data_pipelines/
make_toy_robot_data.py`) and can roll out a policy.

Embodiments (different action spaces and cameras on purpose):
  * "a" (`toy_reach_a`): planar. action = [dx, dy, gripper] (3-D), proprio = [x, y],
    one camera: primary.
  * "b" (`toy_reach_b`): 3-D arm starting above the table. action = [dx, dy, dz, gripper]
    (4-D), proprio = [x, y, z, gripper], cameras: primary (top-down, the end effector drawn
    larger the higher it is) and wrist (a zoomed view centred on the end effector).
  * "c" (`toy_reach_c`, the "new robot" of the fine-tuning recipe, not in the debug
    pretraining mixture): planar, no gripper. action = [dx, dy] (2-D), proprio = [x, y],
    cameras: primary + wrist. Success = end effector within `grasp_radius` of the target.
Positions are in [-1, 1]; gripper is 1 (close) when within `grasp_radius` of the target,
else 0 (raw, not normalized).

Colour control (instruction following, held-out concepts): `target_colors` /
`distractor_colors` restrict which colours the named block and the other blocks may have
(`required_distractors` are always among the others), and `instruction_color` puts another
word in the instruction ("move to the zorp block") while the metrics still measure the
drawn target. With any of them set, an episode seed still gives the same layout (block
positions, which block is the target, start) as the default scene: only the colours
change, so conditions evaluated on the same seeds are paired.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 80, 230),
    "yellow": (230, 210, 40),
    "purple": (150, 60, 200),
}
EMBODIMENTS = {
    "a": {"action_dim": 3, "proprio_dim": 2, "cameras": ("primary",), "gripper": True},
    "b": {"action_dim": 4, "proprio_dim": 4, "cameras": ("primary", "wrist"),
          "gripper": True},
    "c": {"action_dim": 2, "proprio_dim": 2, "cameras": ("primary", "wrist"),
          "gripper": False},
}
BACKGROUND = (90, 90, 90)
# The default scene (and `config.data.toy_num_blocks` / `toy_block_size` defaults).
NUM_BLOCKS = 3
BLOCK_SIZE = 0.09  # half-width in world units ([-1, 1] table)


class ToyReachEnv:
  """reset() -> observation; step(action) -> (observation, reward, done, info)."""

  def __init__(self, embodiment: str = "a", *, image_size: int = 64,
               num_blocks: int = NUM_BLOCKS, block_size: float = BLOCK_SIZE,
               max_steps: int = 20, max_step_size: float = 0.15,
               grasp_radius: float = 0.1, seed: int = 0,
               target_colors: Sequence[str] | None = None,
               distractor_colors: Sequence[str] | None = None,
               required_distractors: Sequence[str] = (),
               instruction_color: str | None = None):
    if embodiment not in EMBODIMENTS:
      raise ValueError(f"unknown embodiment {embodiment!r}; use one of {list(EMBODIMENTS)}")
    if not 1 <= num_blocks <= len(COLORS):
      raise ValueError(f"num_blocks must be in [1, {len(COLORS)}]")
    if not 0.02 <= block_size <= 0.25:
      raise ValueError(f"block_size (half-width, world units) must be in [0.02, 0.25], "
                       f"got {block_size}")
    self._colors = _color_pools(num_blocks, target_colors, distractor_colors,
                                required_distractors)
    if instruction_color is not None and not str(instruction_color).strip():
      raise ValueError("instruction_color must be a non-empty word or None")
    self.instruction_color = instruction_color
    self.embodiment = embodiment
    self.action_dim = EMBODIMENTS[embodiment]["action_dim"]
    self.proprio_dim = EMBODIMENTS[embodiment]["proprio_dim"]
    self.cameras = EMBODIMENTS[embodiment]["cameras"]
    self.has_gripper = EMBODIMENTS[embodiment]["gripper"]
    self.image_size = image_size
    self.num_blocks = num_blocks
    self.block_size = float(block_size)
    # Centres at least this far apart: blocks never touch, so targets stay distinguishable.
    self.min_separation = max(0.35, 2.5 * self.block_size)
    self.max_steps = max_steps
    self.max_step_size = max_step_size
    self.grasp_radius = grasp_radius
    self.rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:image_size, 0:image_size]
    # Pixel centres in world coordinates ([-1, 1], y up).
    self._px = (xx + 0.5) / image_size * 2 - 1
    self._py = 1 - (yy + 0.5) / image_size * 2
    self.reset()

  @property
  def dim(self) -> int:
    return 3 if self.embodiment == "b" else 2

  def reset(self, seed: int | None = None) -> dict[str, Any]:
    if seed is not None:
      self.rng = np.random.default_rng(seed)
    names = list(COLORS)
    self.block_colors = [names[i] for i in
                         self.rng.choice(len(names), self.num_blocks, replace=False)]
    pos = []
    for _ in range(10_000):  # rejection sampling; big blocks may not all fit
      if len(pos) == self.num_blocks:
        break
      p = self.rng.uniform(-0.75, 0.75, 2)
      if all(np.linalg.norm(p - q) > self.min_separation for q in pos):
        pos.append(p)
    if len(pos) < self.num_blocks:
      raise ValueError(f"could not place {self.num_blocks} blocks of block_size "
                       f"{self.block_size} apart on the table; use fewer or smaller blocks")
    self.block_pos = np.array(pos, np.float32)
    self.target = int(self.rng.integers(self.num_blocks))
    self.pos = np.zeros(self.dim, np.float32)
    self.pos[:2] = self.rng.uniform(-0.9, 0.9, 2)
    if self.dim == 3:
      self.pos[2] = self.rng.uniform(0.3, 0.8)
    if self._colors is not None:  # drawn last: the layout is the default scene's
      self.block_colors = self._draw_colors()
    word = self.instruction_color or self.block_colors[self.target]
    self.instruction = f"move to the {word} block"
    self.gripper = 0.0
    self.t = 0
    return self.observation()

  def _draw_colors(self) -> list[str]:
    """Block colours under the colour pools: the target's, then the others'."""
    targets, others, required = self._colors
    target = targets[int(self.rng.integers(len(targets)))]
    pool = [c for c in others if c != target and c not in required]
    extra = self.num_blocks - 1 - len(required)
    rest = list(required) + [pool[i] for i in self.rng.choice(len(pool), extra,
                                                               replace=False)]
    rest = [rest[i] for i in self.rng.permutation(len(rest))]
    rest.insert(self.target, target)
    return rest

  def target_position(self) -> np.ndarray:
    t = np.zeros(self.dim, np.float32)
    t[:2] = self.block_pos[self.target]
    return t

  def oracle_action(self) -> np.ndarray:
    """The correct action: clipped step towards the target block, gripper closes there."""
    delta = np.clip(self.target_position() - self.pos, -self.max_step_size,
                    self.max_step_size)
    if not self.has_gripper:
      return delta.astype(np.float32)
    dist = float(np.linalg.norm(self.target_position() - self.pos))
    close = 1.0 if dist - np.linalg.norm(delta) < self.grasp_radius else 0.0
    return np.concatenate([delta, [close]]).astype(np.float32)

  def step(self, action) -> tuple[dict[str, Any], float, bool, dict[str, Any]]:
    action = np.asarray(action, np.float32).reshape(-1)
    if action.shape[0] != self.action_dim:
      raise ValueError(f"embodiment {self.embodiment!r} takes {self.action_dim}-D actions, "
                       f"got {action.shape[0]}")
    delta = np.clip(action[:self.dim], -self.max_step_size, self.max_step_size)
    self.pos = np.clip(self.pos + delta, -1.0, 1.0).astype(np.float32)
    if self.dim == 3:
      self.pos[2] = max(self.pos[2], 0.0)
    if self.has_gripper:
      self.gripper = float(action[-1] > 0.5)
    self.t += 1
    dist = float(np.linalg.norm(self.target_position() - self.pos))
    success = dist < self.grasp_radius and (self.gripper > 0.5 or not self.has_gripper)
    done = self.t >= self.max_steps
    return self.observation(), -dist, done, {"success": success, "distance": dist}

  def proprio(self) -> np.ndarray:
    if self.embodiment in ("a", "c"):
      return self.pos.copy()
    return np.concatenate([self.pos, [self.gripper]]).astype(np.float32)

  def _draw(self, cx: float, cy: float, scale: float) -> np.ndarray:
    """Top-down view centred at (cx, cy) with world half-width `scale`."""
    wx = cx + self._px * scale
    wy = cy + self._py * scale
    img = np.empty((self.image_size, self.image_size, 3), np.uint8)
    img[:] = BACKGROUND
    half = self.block_size
    for color, p in zip(self.block_colors, self.block_pos):
      m = (np.abs(wx - p[0]) < half) & (np.abs(wy - p[1]) < half)
      img[m] = COLORS[color]
    r = 0.08 + (0.06 * self.pos[2] if self.dim == 3 else 0.0)
    d2 = (wx - self.pos[0]) ** 2 + (wy - self.pos[1]) ** 2
    img[(d2 < r * r) & (d2 > (0.6 * r) ** 2)] = (255, 255, 255)
    return img

  def render(self, camera: str = "primary") -> np.ndarray:
    if camera == "primary":
      return self._draw(0.0, 0.0, 1.0)
    if camera == "wrist" and "wrist" in self.cameras:
      return self._draw(float(self.pos[0]), float(self.pos[1]), 0.4)
    raise ValueError(f"embodiment {self.embodiment!r} has no camera {camera!r}")

  def observation(self) -> dict[str, Any]:
    obs = {f"image_{c}": self.render(c) for c in self.cameras}
    obs["proprio"] = self.proprio()
    obs["instruction"] = self.instruction
    return obs


def _color_pools(num_blocks: int, target_colors: Sequence[str] | None,
                 distractor_colors: Sequence[str] | None, required: Sequence[str]
                 ) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]] | None:
  """Checked (targets, distractors, required distractors), or None for the default draw."""
  if target_colors is None and distractor_colors is None and not required:
    return None
  targets = tuple(COLORS if target_colors is None else target_colors)
  others = tuple(COLORS if distractor_colors is None else distractor_colors)
  required = tuple(required)
  for what, cs in (("target_colors", targets), ("distractor_colors", others),
                   ("required_distractors", required)):
    unknown = [c for c in cs if c not in COLORS]
    if unknown:
      raise ValueError(f"{what}: unknown colours {unknown}; use {list(COLORS)}")
  if not targets:
    raise ValueError("target_colors is empty")
  if len(set(required)) != len(required) or len(required) > num_blocks - 1:
    raise ValueError(f"required_distractors {list(required)} must be distinct and at most "
                     f"num_blocks - 1 = {num_blocks - 1}")
  for t in targets:
    pool = {c for c in others if c != t} - set(required)
    if t in required or len(pool) < num_blocks - 1 - len(required):
      raise ValueError(f"target colour {t!r} leaves too few distractor colours for "
                       f"{num_blocks} blocks (distractors {list(others)}, required "
                       f"{list(required)})")
  return targets, others, required


HELD_OUT_MODES = ("absent", "distractor", "keep")


def held_out_colors(concept: str, mode: str = "absent") -> dict[str, tuple[str, ...]]:
  """Colour pools that keep a held-out colour out of the scenes (empty dict: no change).

  mode "absent": the colour is never drawn (no robot frame shows it); "distractor": it
  may be a distractor but never the target (the instruction never names it); "keep":
  scenes unchanged.
  """
  if mode not in HELD_OUT_MODES:
    raise ValueError(f"held-out mode must be one of {HELD_OUT_MODES}, got {mode!r}")
  concept = concept.strip().lower()
  if not concept or mode == "keep":
    return {}
  if concept not in COLORS:
    raise ValueError(f"held-out concept {concept!r} is not a toy block colour "
                     f"({list(COLORS)})")
  seen = tuple(c for c in COLORS if c != concept)
  return {"target_colors": seen,
          "distractor_colors": seen if mode == "absent" else tuple(COLORS)}


def scene_kwargs(data_config: Any) -> dict[str, Any]:
  """ToyReachEnv scene arguments of a `config.data` (the same scene in data and rollouts).

  Configs and checkpoint metadata from before these keys existed get the env defaults.
  A `held_out_concept` (with `held_out_robot`) adds the colour pools of `held_out_colors`.
  """
  get = data_config.get
  out: dict[str, Any] = {"num_blocks": int(get("toy_num_blocks", None) or NUM_BLOCKS),
                         "block_size": float(get("toy_block_size", None) or BLOCK_SIZE)}
  out.update(held_out_colors(str(get("held_out_concept", None) or ""),
                             str(get("held_out_robot", None) or "absent")))
  return out


def rollout_oracle(env: ToyReachEnv, seed: int | None = None, *,
                   end_at_success: bool = False) -> list[dict[str, Any]]:
  """One episode of the oracle policy: a list of (observation, action) steps.

  end_at_success: stop at the step that succeeds (as a real demonstration would)
  instead of idling at the block until `max_steps`; idle frames are zero actions that
  make "stay" the most frequent label.
  """
  obs = env.reset(seed)
  steps = []
  for _ in range(env.max_steps):
    action = env.oracle_action()
    steps.append({"observation": obs, "action": action})
    obs, _, done, info = env.step(action)
    if done or (end_at_success and info["success"]):
      break
  return steps
