"""Synthetic openpi checkpoints for tests: the exact on-disk layout, tiny shapes.

SRC/params is an Orbax PyTree saved as {"params": {"PaliGemma": big_vision tree}} (each
leaf optionally wrapped as {"value": leaf}, as openpi saves nnx state), plus
SRC/assets/<asset_id>/norm_stats.json ({"norm_stats": {"state"|"actions": {mean, std,
q01, q99}}}). Nothing here imports vlax's importer: the layout is written from openpi's
description (notes/openpi-checkpoints.md), independently.
"""

from __future__ import annotations

import dataclasses
import json
import os

import ml_dtypes
import numpy as np

from vlax.checkpoints import big_vision
from vlax.models.presets import get_preset

OPENPI_TAIL = 128  # PaliGemma's <seg> ids after the action range


def tiny_config(text_vocab: int, action_vocab: int):
  """The tiny preset with openpi's vocabulary layout: text + actions + 128."""
  c = get_preset("tiny")
  return dataclasses.replace(c, llm=dataclasses.replace(
      c.llm, vocab_size=text_vocab + action_vocab + OPENPI_TAIL))


def random_flat_params(config, dtype=np.float32, seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  return {k: (rng.standard_normal(s) * 0.05).astype(dtype)
          for k, s in big_vision.param_shapes(config).items()}


def nest(flat: dict, wrap_value: bool) -> dict:
  leaves = {k: ({"value": v} if wrap_value else v) for k, v in flat.items()}
  return {"params": {"PaliGemma": big_vision.unflatten(leaves)}}


def write_params(path: str, flat: dict, wrap_value: bool = False) -> None:
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  ckptr = ocp.PyTreeCheckpointer()
  ckptr.save(os.path.abspath(path), nest(flat, wrap_value))


def norm_stats(action_dim: int, state_dim: int, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)

  def one(d):
    mean = rng.normal(0, 1, d)
    std = rng.uniform(0.1, 1, d)
    return {"mean": mean.tolist(), "std": std.tolist(), "q01": (mean - 2 * std).tolist(),
            "q99": (mean + 2 * std).tolist()}
  return {"norm_stats": {"state": one(state_dim), "actions": one(action_dim)}}


def write_checkpoint(src: str, config, *, dtype=np.float32, wrap_value: bool = False,
                     asset_id: str = "droid", action_dim: int = 3, state_dim: int = 2,
                     seed: int = 0) -> dict[str, np.ndarray]:
  """Writes SRC/params and SRC/assets/<asset_id>/norm_stats.json; returns the flat params."""
  flat = random_flat_params(config, dtype, seed)
  write_params(os.path.join(src, "params"), flat, wrap_value)
  os.makedirs(os.path.join(src, "assets", asset_id), exist_ok=True)
  with open(os.path.join(src, "assets", asset_id, "norm_stats.json"), "w") as f:
    json.dump(norm_stats(action_dim, state_dim, seed), f)
  return flat


BF16 = ml_dtypes.bfloat16
