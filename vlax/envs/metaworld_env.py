"""Meta-World tasks behind the toy env's interface (`pip install -e '.[sim]'`).

`MetaWorldEnv(task)` has the methods `vlax.evaluation.rollout` and the expert worker
(`vlax.envs.metaworld_experts`) use on `ToyReachEnv`: reset(seed) -> observation,
step(action) -> (observation, reward, done, info with "success"), oracle_action() (the
scripted expert), and observations {"image_primary", "image_wrist", "proprio",
"instruction"}.

What it settles that raw Meta-World leaves open:
  * layouts: `reset(seed)` seeds Meta-World's own generator (the gymnasium `seed=`
    argument is ignored there), so a seed is one layout, replayed bit for bit. Training
    demos and evaluation draw from disjoint seed ranges (`train_seed` / `eval_seed`).
  * cameras: "primary" is a free camera in front of the table, aimed so that small
    objects (puck, goal) cover several pixels at 64 px; "wrist" is `gripperPOV`. Both are
    upright (Meta-World's `corner*` cameras render upside down).
  * rendering speed: shadows, multisampling and reflections are switched off (with
    them on, llvmpipe renders ~8 frames/s; without, ~100).
  * episode end: success only in `info["success"]`; `done` at the step cap (Meta-World
    raises past its own `max_path_length`, which is raised to the cap).
`render_images=False` skips rendering (baselines that do not look at images).
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

import numpy as np

from vlax.envs import metaworld_tasks as mw_tasks
from vlax.errors import VlaxError

INSTALL_HINT = "pip install -e '.[sim]' (or: pip install metaworld packaging)"
# Seeds of demo episodes are `train_seed(seed, i)`; eval episodes start at EVAL_SEED_BASE.
EVAL_SEED_BASE = 1_000_000_007
DEFAULT_MAX_STEPS = 200
# Primary camera: looks at the table centre from the front, 55 degrees down.
PRIMARY_CAMERA = {"lookat": (0.0, 0.7, 0.05), "distance": 0.95, "azimuth": -90.0,
                  "elevation": -55.0}
WRIST_CAMERA = "gripperPOV"


def train_seed(seed: int, episode: int) -> int:
  return int(seed) * 100_003 + int(episode)


def eval_seed(seed: int, episode: int) -> int:
  return EVAL_SEED_BASE + int(seed) * 100_003 + int(episode)


def resolve_tasks(spec: str | list[str] | tuple[str, ...]) -> list[str]:
  """"mt10" / "mt50" / "T1,T2" (with or without "-v3") -> task names; VlaxError listing
  the valid names for an unknown one."""
  items = spec.split(",") if isinstance(spec, str) else list(spec)
  out = []
  for item in (i.strip() for i in items):
    if not item:
      continue
    if item.lower() in ("mt10", "mt50"):
      out.extend(mw_tasks.MT10 if item.lower() == "mt10" else mw_tasks.MT50)
      continue
    name = mw_tasks.task_name(item)
    if name not in mw_tasks.MT50:
      raise VlaxError(f"unknown Meta-World task {item!r}; valid: mt10, mt50, "
                      f"{', '.join(sorted(mw_tasks.MT50))}")
    out.append(name)
  if not out:
    raise VlaxError(f"no Meta-World task in {spec!r}; use mt10, mt50 or task names")
  return list(dict.fromkeys(out))


def _import_sim():
  """(mujoco, metaworld env classes, expert policies), with install / GL hints."""
  os.environ.setdefault("MUJOCO_GL", "egl")  # headless; must be set before mujoco loads
  # The experts warn on every action they compute beyond [-1, 1]; vlax clips them.
  warnings.filterwarnings("ignore", message=r"Constant\(s\) may be too high")
  try:
    import mujoco  # pylint: disable=g-import-not-at-top
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS  # pylint: disable=g-import-not-at-top
    from metaworld.policies import ENV_POLICY_MAP  # pylint: disable=g-import-not-at-top
  except ModuleNotFoundError as e:
    if (e.name or "").split(".")[0] not in ("metaworld", "mujoco", "gymnasium",
                                            "packaging"):
      raise _gl_error(e) from e
    raise VlaxError(f"Meta-World is not installed (no module {e.name!r}); install the "
                    f"sim extra: {INSTALL_HINT}") from e
  except Exception as e:  # noqa: BLE001 - mujoco raises assorted errors for a bad GL setup
    raise _gl_error(e) from e
  return mujoco, ALL_V3_ENVIRONMENTS, ENV_POLICY_MAP


def _gl_error(e: Exception) -> VlaxError:
  return VlaxError(f"MuJoCo has no usable GL backend with MUJOCO_GL="
                   f"{os.environ.get('MUJOCO_GL')!r} ({type(e).__name__}: {e}); use "
                   f"MUJOCO_GL=egl with the Debian packages libegl1 libegl-mesa0 "
                   f"libgl1-mesa-dri, or MUJOCO_GL=osmesa")


class MetaWorldEnv:
  """reset(seed) -> observation; step(action) -> (observation, reward, done, info)."""

  action_dim = mw_tasks.ACTION_DIM
  cameras = ("primary", "wrist")
  has_gripper = True
  max_step_size = 1.0  # actions are clipped to [-1, 1]

  def __init__(self, task: str, *, image_size: int = 64,
               max_steps: int = DEFAULT_MAX_STEPS, full_state: bool = False,
               render_images: bool = True, seed: int = 0):
    self.task = resolve_tasks(task)[0] if "," not in task else None
    if self.task is None:
      raise VlaxError(f"MetaWorldEnv takes one task, got {task!r}")
    if int(image_size) < 16:
      raise VlaxError(f"image_size must be >= 16, got {image_size}")
    mujoco, envs, policies = _import_sim()
    self._mujoco = mujoco
    self.image_size = int(image_size)
    self.max_steps = int(max_steps)
    self.full_state = bool(full_state)
    self.proprio_dim = mw_tasks.FULL_STATE_DIM if full_state else mw_tasks.PROPRIO_DIM
    self.render_images = bool(render_images)
    self.instruction = mw_tasks.instruction(self.task)
    self.dataset = mw_tasks.dataset_name(self.task)
    env = envs[self.task]()
    env._freeze_rand_vec = False  # pylint: disable=protected-access
    env.seeded_rand_vec = True  # layouts from env.np_random (seeded in reset)
    env._set_task_called = True  # pylint: disable=protected-access
    env._partially_observable = False  # goal in the state (the expert needs it)  # pylint: disable=protected-access
    try:  # cached with the goal hidden, it would clip the goal to 0 in step()
      del env.sawyer_observation_space
    except AttributeError:
      pass
    env.max_path_length = max(int(env.max_path_length), self.max_steps + 1)
    m = env.model
    m.vis.quality.offsamples = 0
    m.light_castshadow[:] = 0
    m.mat_reflectance[:] = 0
    self._env = env
    self._expert = policies[self.task]()
    self._renderer = None
    self._camera = mujoco.MjvCamera()
    self._camera.type = mujoco.mjtCamera.mjCAMERA_FREE
    self._camera.lookat[:] = PRIMARY_CAMERA["lookat"]
    self._camera.distance = PRIMARY_CAMERA["distance"]
    self._camera.azimuth = PRIMARY_CAMERA["azimuth"]
    self._camera.elevation = PRIMARY_CAMERA["elevation"]
    self._state = None
    self.t = 0
    self._seed = int(seed)

  # ------------------------------------------------------------------ episode

  def reset(self, seed: int | None = None) -> dict[str, Any]:
    if seed is None:
      seed = self._seed
      self._seed += 1
    self._env.seed(int(seed))
    state, _ = self._env.reset()
    self._state = np.asarray(state, np.float64)
    self.t = 0
    self.last_info: dict[str, Any] = {"success": False}
    return self.observation()

  def oracle_action(self) -> np.ndarray:
    """The scripted expert's action for the current state, clipped to [-1, 1]."""
    return np.clip(self._expert.get_action(self._state), -1.0, 1.0).astype(np.float32)

  def step(self, action) -> tuple[dict[str, Any], float, bool, dict[str, Any]]:
    action = np.asarray(action, np.float32).reshape(-1)
    if action.shape[0] != self.action_dim:
      raise VlaxError(f"Meta-World takes {self.action_dim}-D actions, got "
                      f"{action.shape[0]}")
    if self.t >= self.max_steps:
      raise VlaxError(f"{self.task}: episode is over ({self.max_steps} steps); reset()")
    state, reward, _, _, info = self._env.step(np.clip(action, -1.0, 1.0))
    self._state = np.asarray(state, np.float64)
    self.t += 1
    info = {"success": bool(info.get("success", 0.0) > 0.5), "distance": 0.0}
    self.last_info = info
    return self.observation(), float(reward), self.t >= self.max_steps, info

  # ------------------------------------------------------------------ observation

  def proprio(self) -> np.ndarray:
    s = self._state if self.full_state else self._state[:mw_tasks.PROPRIO_DIM]
    return np.asarray(s, np.float32).copy()

  def full_state_vector(self) -> np.ndarray:
    return np.asarray(self._state, np.float32).copy()

  def render(self, camera: str = "primary") -> np.ndarray:
    if camera not in self.cameras:
      raise VlaxError(f"Meta-World env has no camera {camera!r}; use {self.cameras}")
    if self._renderer is None:
      if "tensorflow" in sys.modules:
        raise VlaxError("MuJoCo's EGL rendering crashes in a process that has imported "
                        "TensorFlow; run the Meta-World env in its own process (as "
                        "`vlax eval --env metaworld` and make_metaworld_demos.py do)")
      try:
        self._renderer = self._mujoco.Renderer(self._env.model, self.image_size,
                                               self.image_size)
      except Exception as e:  # noqa: BLE001 - GL failures surface as assorted types
        raise _gl_error(e) from e
    cam = self._camera if camera == "primary" else WRIST_CAMERA
    self._renderer.update_scene(self._env.data, camera=cam)
    return self._renderer.render().copy()

  def observation(self) -> dict[str, Any]:
    obs: dict[str, Any] = {"proprio": self.proprio(), "instruction": self.instruction}
    if self.render_images:
      for c in self.cameras:
        obs[f"image_{c}"] = self.render(c)
    return obs

  def close(self) -> None:
    if self._renderer is not None:
      try:
        self._renderer.close()
      except Exception:  # noqa: BLE001 - EGL teardown errors at exit are harmless
        pass
      self._renderer = None


def rollout_expert(env: MetaWorldEnv, seed: int, action_noise: float = 0.0
                   ) -> tuple[list[dict[str, Any]], bool]:
  """One expert episode up to success or the step cap: ([{observation, action,
  full_state}], success).

  action_noise > 0 (DART-style noise injection): the env executes the expert's action
  plus N(0, action_noise) on the xyz dims (clipped to [-1, 1]; the gripper is kept),
  while the recorded label stays the expert's clean action for the state it is in. The
  demos then cover states off the expert's own path, labelled with how to get back,
  which is what a cloned policy needs once its own small errors move it there."""
  if action_noise < 0:
    raise VlaxError(f"action_noise must be >= 0, got {action_noise}")
  rng = np.random.default_rng([int(seed), 4099])
  obs = env.reset(seed)
  steps = []
  for _ in range(env.max_steps):
    action = env.oracle_action()
    steps.append({"observation": obs, "action": action,
                  "full_state": env.full_state_vector()})
    executed = action
    if action_noise > 0:
      executed = np.array(action, np.float32, copy=True)
      executed[:3] = np.clip(executed[:3] + rng.normal(0.0, action_noise, 3), -1.0, 1.0)
    obs, _, done, info = env.step(executed)
    if info["success"]:
      return steps, True
    if done:
      break
  return steps, False
