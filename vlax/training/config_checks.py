"""Range checks of every numeric training-config key, in one place.

`train()` calls `check_train_config` before any set-up, so `--config.batch_size=0`,
a negative learning rate or `num_steps=-5` is a one-line VlaxError naming the key (the
CLI prints it as `error: ...`, exit 2) instead of a traceback minutes later or a run
that silently trains nothing. Keys a config does not have are skipped (a config may
leave out groups such as `data`).
"""

from __future__ import annotations

import math
from typing import Any, Callable

from vlax.errors import VlaxError
from vlax.utils import lookup

SEED_LIMIT = 2**63 - 1  # init uses jax.random.key(seed + 1): int64

# key -> (test, what the value must be). Integers must be integers.
_INT = "int"
_RULES: dict[str, tuple[str, Callable[[Any], bool], str]] = {
    "num_steps": (_INT, lambda v: v > 0, "> 0"),
    "batch_size": (_INT, lambda v: v > 0, "> 0"),
    "seed": (_INT, lambda v: 0 <= v < SEED_LIMIT, f"in [0, {SEED_LIMIT})"),
    "log_every": (_INT, lambda v: v > 0, "> 0"),
    "checkpoint_every": (_INT, lambda v: v >= 0, ">= 0 (0 = only at the end)"),
    "keep_checkpoints": (_INT, lambda v: v > 0, "> 0"),
    "keep_best": (_INT, lambda v: v >= 0, ">= 0"),
    "eval_every": (_INT, lambda v: v >= 0, ">= 0 (0 = off)"),
    "eval_steps": (_INT, lambda v: v > 0, "> 0"),
    "web_eval_every": (_INT, lambda v: v >= 0, ">= 0 (0 = off)"),
    "web_eval_examples": (_INT, lambda v: v > 0, "> 0"),
    "lora.rank": (_INT, lambda v: v >= 0, ">= 0 (0 = off)"),
    "lora.alpha": ("float", lambda v: v > 0, "> 0"),
    "mesh.data": (_INT, lambda v: v == -1 or v > 0, "> 0 or -1 (the rest)"),
    "mesh.fsdp": (_INT, lambda v: v == -1 or v > 0, "> 0 or -1 (the rest)"),
    "mesh.tensor": (_INT, lambda v: v == -1 or v > 0, "> 0 or -1 (the rest)"),
    "model.scan_unroll": (_INT, lambda v: v >= 0, ">= 0 (0 = fully unrolled)"),
    "ema_decay": ("float", lambda v: 0 <= v < 1, "in [0, 1) (0 = off)"),
    "profile.start_step": (_INT, lambda v: v > 0, "> 0 (a step number of metrics.jsonl)"),
    "profile.num_steps": (_INT, lambda v: v >= 0, ">= 0 (0 = off)"),
    "distributed.heartbeat_timeout_s": (_INT, lambda v: v > 0, "> 0"),
    "optimizer.lr": ("float", lambda v: v >= 0, ">= 0"),
    "optimizer.warmup_steps": (_INT, lambda v: v >= 0, ">= 0"),
    "optimizer.end_lr_ratio": ("float", lambda v: 0 <= v <= 1, "in [0, 1]"),
    "optimizer.weight_decay": ("float", lambda v: v >= 0, ">= 0"),
    "optimizer.clip_norm": ("float", lambda v: v >= 0, ">= 0 (0 = off)"),
    "optimizer.grad_accum_steps": (_INT, lambda v: v > 0, "> 0"),
    "optimizer.b1": ("float", lambda v: 0 <= v < 1, "in [0, 1)"),
    "optimizer.b2": ("float", lambda v: 0 <= v < 1, "in [0, 1)"),
    "optimizer.eps": ("float", lambda v: v > 0, "> 0"),
    "data.toy_episodes": (_INT, lambda v: v > 0, "> 0"),
    "data.toy_episode_len": (_INT, lambda v: v > 0, "> 0"),
    "data.toy_num_blocks": (_INT, lambda v: v > 0, "> 0"),
    "data.toy_block_size": ("float", lambda v: 0 < v < 1, "in (0, 1)"),
    "data.image_size": (_INT, lambda v: v > 0, "> 0"),
    "data.chunk_len": (_INT, lambda v: v > 0, "> 0"),
    "data.history": (_INT, lambda v: v > 0, "> 0"),
    "data.shuffle_buffer": (_INT, lambda v: v > 0, "> 0"),
    "data.num_bins": (_INT, lambda v: v > 1, "> 1"),
    "data.fast_vocab_size": (_INT, lambda v: v > 0, "> 0"),
    "data.fast_scale": ("float", lambda v: v > 0, "> 0"),
    "data.fit_chunks": (_INT, lambda v: v > 0, "> 0"),
    "data.action_vocab_start": (_INT, lambda v: v == -1 or v >= 0, ">= 0 or -1 (default)"),
    "data.max_len": (_INT, lambda v: v > 0, "> 0"),
    "data.proprio_bins": (_INT, lambda v: v >= 0, ">= 0 (0 = off)"),
    "data.random_shift": (_INT, lambda v: v >= 0, ">= 0 pixels (0 = off)"),
    "data.proprio_dropout": ("float", lambda v: 0 <= v <= 1, "in [0, 1] (0 = off)"),
    "data.proprio_noise": ("float", lambda v: v >= 0, ">= 0 (0 = off)"),
    "loss.action_label_smoothing": ("float", lambda v: v >= 0, ">= 0 bins (0 = off)"),
    "data.web_weight": ("float", lambda v: 0 <= v <= 1, "in [0, 1]"),
    "data.max_text_chars": (_INT, lambda v: v > 0, "> 0"),
    "data.web_shuffle_buffer": (_INT, lambda v: v > 0, "> 0"),
}


def check_train_config(config: Any) -> None:
  """Raises VlaxError (one line, naming the key) for the first value out of range."""
  for key, (kind, ok, want) in _RULES.items():
    found, value = lookup(config, key)
    if not found or value is None:
      continue
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise VlaxError(f"config.{key} must be a number {want}, got {value!r}")
    if kind == _INT and not float(value).is_integer():
      raise VlaxError(f"config.{key} must be an integer {want}, got {value!r}")
    if not math.isfinite(value) or not ok(value):
      raise VlaxError(f"config.{key} must be {want}, got {value!r}")
