"""The training config: every key `train()` reads, its one default, and what it means.

`default_train_config()` is the single source of defaults (experiments/*.py start from
it); the `optimizer` section's defaults live beside the code that reads them
(`vlax.training.optimizer.DEFAULTS`) and are copied in here, not restated.
`with_defaults(config)` lays a user config over these defaults once, at the start of a
run, so the rest of the training code reads `config.x` and never re-defaults a key.
A key left out, or set to None, takes its default; keys the defaults do not know (the
`data` section, `optimizer.momentum`) are kept as given. Ranges are checked in
`config_checks.py`.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import ml_collections

from vlax.models import sharding as sharding_lib
from vlax.training import optimizer as optimizer_lib


def default_train_config() -> ml_collections.ConfigDict:
  """Every key train() reads, with its default."""
  c = ml_collections.ConfigDict()
  c.num_steps = 1000          # optimizer steps to reach (a resumed run continues up to it)
  c.batch_size = 32           # global batch (all hosts, all microbatches)
  c.seed = 0                  # init / data seed
  c.log_every = 10            # steps between metrics.jsonl lines (also the NaN/Inf check)
  c.checkpoint_every = 500    # steps between checkpoints (0 = only at the end / preemption)
  c.keep_checkpoints = 3      # keep the last K checkpoints ...
  c.keep_best = 0             # ... plus the best N by `best_metric` (0 = none)
  c.best_metric = "loss"      # 'eval/loss' (if eval runs) or 'loss'; lower is better
  c.async_checkpointing = True  # orbax async saves
  # The input-pipeline position with each checkpoint, for an exact resume (holds the
  # shuffle buffers: ~6 MB for debug, GBs per host with OXE-sized buffers -> off in
  # pretrain_oxe). See vlax.training.data_state.
  c.save_data_state = True
  # '' (random init) | vlax checkpoint ROOT or ROOT/<step> (a training checkpoint or a
  # `vlax export` bundle; its LoRA adapters, if any, are merged first) | HF PaliGemma
  # directory (vlax.load_pretrained). Only the params are taken: statistics, tokenizers
  # and dataset names come from this run's data. Shapes must match the configured model
  # (VlaxError naming each differing param; the vocabulary size is named on its own).
  c.init_from = ""
  c.init_from_required = False  # fine-tuning configs: refuse to start from random weights
  # On resume: restore params/step, start a fresh optimizer state. With init_from: False
  # keeps the init checkpoint's optimizer state when it has one (an export bundle / HF
  # weights have none: fresh) and it fits the configured optimizer (else VlaxError);
  # True always starts fresh. The step counter restarts at 0 either way.
  c.reset_optimizer = False
  # WORKDIR/checkpoints holds steps but none restores (incomplete, corrupt, another
  # config): False stops with one line listing each step (nothing moved); True sets them
  # aside as <step>.unreadable, the metrics history as metrics.jsonl.<time>.old, and
  # trains from step 0. Pass it for the one run that starts over.
  c.restart_over_unreadable = False
  c.eval_every = 0            # validation loss every N steps (0 = off) ...
  c.eval_steps = 10           # ... over M batches
  # Held-out web (VQA) scores every N steps (0 = off), on process 0, over M examples of
  # the run's toy web sources: web_eval/exact_match, web_eval/mc_accuracy and the same
  # per question type (vlax.evaluation.web_eval; `vlax train` wires it in, a direct
  # train() call passes web_eval_fn=make_web_eval_fn(config)).
  c.web_eval_every = 0
  c.web_eval_examples = 200
  c.lora = ml_collections.ConfigDict({
      "rank": 0,              # 0 = off; > 0: LoRA adapters on `targets`, everything else
                              # frozen (vlax.models.lora); metadata['lora'] is saved
      "alpha": 16.0,          # scale = alpha / rank
      "targets": r"^llm/layers/attn/,^llm/layers/mlp/",  # regexes on param paths
      "trainable_patterns": "",  # regexes of non-adapter params that stay trainable
  })
  c.mesh = ml_collections.ConfigDict({
      "data": 1, "fsdp": -1, "tensor": 1,  # mesh sizes, -1 = the rest
      # (logical axis, mesh axis or axes or None) pairs, tried in order, that shard the
      # params and activations (vlax.models.sharding); e.g. replicate the vision tower
      # by mapping 'vit_embed' to None. Replaces the whole list when set.
      "logical_rules": sharding_lib.LOGICAL_RULES,
  })
  c.model = ml_collections.ConfigDict({
      "preset": "debug",      # vlax.models.presets name, or "init_from" (init_from's)
      # Nested dict ({'llm': {'vocab_size': 1024}}) or 'llm.vocab_size=1024,...'.
      "overrides": None,
      "dtype": "float32",     # compute dtype ('float32' / 'bfloat16'); params stay float32
      "remat": False,         # rematerialize the scanned blocks
      # Layer stacks: 0 = fully unrolled (fastest steps on CPU/GPU, longer compile),
      # k >= 1 = nn.scan unrolled k layers at a time (1 = a rolled loop: fast compile for
      # deep models, the usual choice with remat on TPU). The param tree is the same.
      "scan_unroll": 0,
  })
  c.loss = ml_collections.ConfigDict({
      # > 0: the training loss scores each action token against a Gaussian over its
      # neighbouring bins with this sigma (in bins), normalized over the action ids
      # (ordinal bins only; FAST is refused). Eval loss and accuracy stay plain CE.
      "action_label_smoothing": 0.0,
  })
  c.optimizer = optimizer_lib.default_optimizer_config()  # keys documented in DEFAULTS
  # > 0: the train state also holds an exponential moving average of the params
  # (ema = d * ema + (1 - d) * params after every step; sharded like the params, saved
  # in checkpoints as ROOT/<step>/ema_params). eval, export, vlax.Policy and serve use
  # it when a checkpoint has it (their --raw-weights / use_ema=False take the params);
  # so does init_from. 0 = off. openpi uses 0.99.
  c.ema_decay = 0.0
  c.profile = ml_collections.ConfigDict({
      # num_steps > 0: a jax.profiler trace of steps start_step .. start_step +
      # num_steps - 1 (metrics.jsonl numbering) under WORKDIR/profile/ (TensorBoard's
      # profile plugin or Perfetto). Step 1 includes the compile: start at 2 or later.
      "start_step": 2, "num_steps": 0,
      "all_processes": False,  # False: process 0 only
  })
  c.distributed = ml_collections.ConfigDict({
      # Multi-process runs: a process silent this long counts as dead; the others stop
      # with one line naming it and the checkpoint a restart resumes from.
      "heartbeat_timeout_s": 100,
  })
  c.logging = ml_collections.ConfigDict({
      "tensorboard": True, "wandb": False, "wandb_project": "vlax",
      "progress": True,       # a progress bar on stderr
  })
  return c


def _plain(config: Any) -> dict:
  if isinstance(config, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict)):
    return config.to_dict()
  return {k: (_plain(v) if isinstance(v, Mapping) else v) for k, v in dict(config).items()}


def _merge(defaults: dict, given: Mapping[str, Any]) -> dict:
  out = dict(defaults)
  for k, v in given.items():
    if v is None and k in out:  # None = the default
      continue
    if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
      out[k] = _merge(out[k], v)
    else:
      out[k] = v
  return out


def with_defaults(config: Any) -> ml_collections.ConfigDict:
  """`config` (a ConfigDict or nested mapping) over `default_train_config()`: a new
  ConfigDict with every key; None or missing keys take the default. Idempotent."""
  merged = _merge(default_train_config().to_dict(), _plain(config))
  return ml_collections.ConfigDict(merged)


def config_to_dict(config: Any) -> dict:
  """JSON-safe nested dict (config.json, checkpoint metadata, logs)."""
  if isinstance(config, ml_collections.ConfigDict):
    return json.loads(config.to_json_best_effort())
  return json.loads(json.dumps(dict(config), default=str))
