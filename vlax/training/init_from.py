"""`config.init_from`: start a run from weights on disk (a fine-tune).

The params come through `vlax.checkpoints.weights` (any format: training checkpoint,
export bundle, HF directory; LoRA merged, shapes checked), land on the run's shardings
and get fresh LoRA adapters when the run uses LoRA. The optimizer state is kept from a
training checkpoint unless `reset_optimizer` (see `vlax.training.config`).
"""

from __future__ import annotations

import os

import jax
import numpy as np

from vlax.checkpoints import format as ckpt_format
from vlax.checkpoints import weights as weights_lib
from vlax.errors import VlaxError
from vlax.training import checkpointing
from vlax.training import state as state_lib
from vlax.training.setup import ModelSetup


def load_params(init_from: str, setup: ModelSetup, seed: int = 0):
  """Params from a vlax checkpoint / export bundle or an HF PaliGemma directory, on the
  right shardings (+ fresh LoRA adapters when this run uses LoRA)."""
  if not os.path.exists(init_from) and "://" not in init_from:
    raise VlaxError(f"init_from: path does not exist: {init_from}")
  params = weights_lib.load_for(init_from, setup.base_abstract_params,
                                f"init_from {init_from}")
  params = jax.tree.map(np.asarray, setup.add_adapters(params, seed))
  return jax.tree.map(
      lambda x, s: jax.make_array_from_callback(x.shape, s, lambda idx: x[idx]),
      params, setup.params_sharding)


def _is_hf_dir(path: str) -> bool:
  return os.path.exists(os.path.join(path, "config.json")) and not (
      ckpt_format.all_steps(path) or ckpt_format.is_step_dir(path))


def with_opt_state(init_from: str, setup: ModelSetup, state: state_lib.TrainState,
                   reset: bool) -> tuple[state_lib.TrainState, str]:
  """With reset_optimizer=False: the init checkpoint's optimizer state (if it has one)
  replaces the fresh one in `state`. Returns (state, what was done, for the log)."""
  if reset:
    return state, "fresh optimizer state (reset_optimizer=True)"
  if _is_hf_dir(init_from):
    return state, "fresh optimizer state (init_from holds released weights only)"
  root, step = ckpt_format.resolve(init_from)
  d = os.path.join(root, str(step), checkpointing.OPT_STATE)
  if "://" not in d and not os.path.isdir(d):
    return state, (f"fresh optimizer state ({root}/{step} has no optimizer state, e.g. "
                   "an export bundle)")
  try:
    opt_state = checkpointing.read_opt_state(
        d, setup.abstract_state.opt_state, setup.state_sharding.opt_state,
        setup.state_sharding.step)
  except Exception as e:  # pylint: disable=broad-except
    raise VlaxError(
        f"init_from {init_from}: its optimizer state (step {step}) does not fit this run's "
        f"optimizer (name, freeze_patterns, LoRA or model shapes differ): "
        f"{type(e).__name__}: {str(e)[:300]}. Set reset_optimizer=True to start a fresh "
        "optimizer state from its params") from None
  return state.replace(opt_state=opt_state), (
      f"optimizer state kept from {root}/{step} (reset_optimizer=False)")
