"""Optimizer: schedule, clipping, weight-decay mask and frozen parameter groups.

Parameters are addressed by their '/'-joined path (e.g. `img/Transformer/encoderblock/
LayerNorm_0/scale`); patterns are Python regexes matched with `re.search`.

- Frozen params (`freeze_patterns`, e.g. `^img/` for the vision encoder) get no optimizer
  state (`optax.set_to_zero`) and the train step keeps them bit-identical.
- Weight decay skips params matching `no_decay_patterns` (norm scales, biases,
  embeddings by default).
- Clipping is by global norm over the trainable params only.
- Gradient accumulation is not here: the train step scans over microbatches, so the
  optimizer sees one update per step and its schedule counts optimizer steps.
- Master params and optimizer state stay float32; the model computes in its own dtype.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import jax
import ml_collections
import optax

from vlax.errors import VlaxError
from vlax.utils import path_str  # (also this module's public name for it)

DEFAULT_NO_DECAY = (r"bias$", r"scale$", r"norm", r"LayerNorm", r"pos_embedding$",
                    r"input_embedding$")

# `config.optimizer`: the one default of every key. `vlax.training.config` builds the
# training config's section from it, and `make_optimizer` (also usable on its own) fills
# missing keys from here and nowhere else.
DEFAULTS: dict[str, Any] = {
    "name": "adamw",          # 'adamw' | 'adafactor' | 'sgd'
    "lr": 3e-4,               # peak learning rate
    "warmup_steps": 100,      # linear 0 -> lr
    "schedule": "cosine",     # after warmup: 'cosine' | 'linear' | 'constant'
    "end_lr_ratio": 0.0,      # final lr = lr * end_lr_ratio
    "weight_decay": 1e-4,     # decoupled (AdamW) / adafactor decay rate; 0 = off
    "no_decay_patterns": ",".join(DEFAULT_NO_DECAY),  # regexes ('' = decay everything)
    "clip_norm": 1.0,         # global-norm clipping over trainable params; 0 = off
    "grad_accum_steps": 1,    # microbatches per optimizer step (read by the train step)
    "freeze_patterns": "",    # regexes of frozen params, e.g. '^img/'
    "b1": 0.9, "b2": 0.999, "eps": 1e-8,  # AdamW moments
}


def default_optimizer_config() -> ml_collections.ConfigDict:
  """A fresh `config.optimizer` section holding DEFAULTS."""
  return ml_collections.ConfigDict(dict(DEFAULTS))


def _compile(patterns: Sequence[str] | str | None, what: str) -> list[re.Pattern]:
  if patterns is None:
    return []
  if isinstance(patterns, str):
    patterns = [p for p in patterns.split(",") if p]
  out = []
  for p in patterns:
    try:
      out.append(re.compile(p))
    except re.error as e:
      raise VlaxError(f"{what}: bad regex {p!r}: {e}") from None
  return out


def match_tree(params: Any, patterns: Sequence[str] | str | None, what: str = "patterns"):
  """Bool pytree: True where the param path matches any pattern."""
  regs = _compile(patterns, what)
  return jax.tree_util.tree_map_with_path(
      lambda p, _: any(r.search(path_str(p)) for r in regs), params)


def frozen_mask(params: Any, freeze_patterns) -> Any:
  """Bool pytree, True = frozen. Raises if a pattern matches nothing (likely a typo)."""
  mask = match_tree(params, freeze_patterns, "optimizer.freeze_patterns")
  for p in _compile(freeze_patterns, "optimizer.freeze_patterns"):
    hits = [path_str(k) for k, _ in jax.tree_util.tree_flatten_with_path(params)[0]
            if p.search(path_str(k))]
    if not hits:
      raise VlaxError(f"optimizer.freeze_patterns: {p.pattern!r} matches no parameter")
  return mask


def decay_mask(params: Any, no_decay_patterns=DEFAULT_NO_DECAY) -> Any:
  """Bool pytree, True = apply weight decay."""
  nd = match_tree(params, no_decay_patterns, "optimizer.no_decay_patterns")
  return jax.tree.map(lambda x: not x, nd)


def make_schedule(lr: float, num_steps: int, warmup_steps: int = 0,
                  schedule: str = "cosine", end_lr_ratio: float = 0.0) -> optax.Schedule:
  """Linear warmup 0 -> lr over `warmup_steps`, then cosine/linear decay to
  `lr * end_lr_ratio` at `num_steps`, or constant."""
  warmup_steps = int(max(0, warmup_steps))
  end = lr * end_lr_ratio
  decay_steps = max(1, int(num_steps) - warmup_steps)
  if schedule == "cosine":
    after = optax.cosine_decay_schedule(lr, decay_steps, alpha=end_lr_ratio)
  elif schedule == "linear":
    after = optax.linear_schedule(lr, end, decay_steps)
  elif schedule in ("constant", "const"):
    after = optax.constant_schedule(lr)
  else:
    raise VlaxError(f"optimizer.schedule={schedule!r}: use 'cosine', 'linear' or 'constant'")
  if warmup_steps == 0:
    return after
  warm = optax.linear_schedule(0.0, lr, warmup_steps)
  return optax.join_schedules([warm, after], [warmup_steps])


def make_optimizer(opt_config: Mapping[str, Any], params: Any, num_steps: int,
                   trainable: Any | None = None
                   ) -> tuple[optax.GradientTransformation, optax.Schedule, Any]:
  """Builds the optax transform from `config.optimizer`.

  Args:
    opt_config: `config.optimizer` (keys and defaults: DEFAULTS; a missing or None key
      takes its default; 'momentum' is read for sgd only).
    params: a params pytree (arrays or ShapeDtypeStructs) to build the masks from.
    num_steps: total optimizer steps (schedule length).
    trainable: optional bool pytree like `params`; False leaves are frozen too (LoRA:
      only the adapters are trainable). `freeze_patterns` still applies on top.
  Returns:
    (tx, schedule, frozen) with `frozen` a bool pytree (True = frozen).
  """
  c = {**DEFAULTS, **{k: v for k, v in dict(opt_config).items() if v is not None}}
  name = c["name"]
  sched = make_schedule(c["lr"], num_steps, c["warmup_steps"], c["schedule"],
                        c["end_lr_ratio"])
  wd = float(c["weight_decay"])
  dmask = decay_mask(params, c["no_decay_patterns"])
  if name == "adamw":
    core = optax.adamw(sched, b1=c["b1"], b2=c["b2"], eps=c["eps"], weight_decay=wd,
                       mask=dmask)
  elif name == "adafactor":
    core = optax.adafactor(sched, weight_decay_rate=wd or None, weight_decay_mask=dmask,
                           multiply_by_parameter_scale=False, clipping_threshold=None)
  elif name == "sgd":
    core = optax.sgd(sched, momentum=c.get("momentum", None))
  else:
    raise VlaxError(f"optimizer.name={name!r}: use 'adamw', 'adafactor' or 'sgd'")
  parts = []
  clip = c["clip_norm"]
  if clip and clip > 0:
    parts.append(optax.clip_by_global_norm(float(clip)))
  parts.append(core)
  tx = optax.chain(*parts)
  frozen = frozen_mask(params, c["freeze_patterns"])
  if trainable is not None:
    frozen = jax.tree.map(lambda f, t: bool(f) or not t, frozen, trainable)
  if any(jax.tree.leaves(frozen)):
    labels = jax.tree.map(lambda f: "frozen" if f else "train", frozen)
    tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
  return tx, sched, frozen


def count_params(params: Any, mask: Any | None = None) -> int:
  leaves = jax.tree.leaves(params)
  if mask is None:
    return int(sum(x.size for x in leaves))
  return int(sum(x.size for x, m in zip(leaves, jax.tree.leaves(mask)) if m))
