"""Fine-tune a released / pretrained checkpoint for a robot it has never seen.

Starts from the debug-sized model and, by default, the toy "new robot" `toy_reach_c`
(mixture `toy_new_robot`: 2-D actions [dx, dy], no gripper, primary + wrist cameras),
which the debug pretraining (toy_reach_a + toy_reach_b) never saw. `init_from` is
required: a vlax checkpoint (ROOT or ROOT/<step>), a `vlax export` bundle, or imported
PaliGemma weights (`vlax import-paligemma`); its params must match the configured model
(same preset/overrides and the same tokenizer settings, hence the same vocabulary).
The debug model has 16-pixel patches (`model.overrides`); for imported PaliGemma weights
set `--config.model.preset=paligemma_3b --config.model.overrides=''`.
Everything data-side is this run's: the new dataset's normalization statistics are
computed (and cached) by the pipeline, the action tokenizer is (re)fitted on it, and the
action dimension, chunk length and cameras may differ from pretraining.

  vlax export /tmp/vlax_debug/checkpoints /tmp/vlax_debug_bundle
  vlax train --config experiments/finetune_new_robot.py --workdir /tmp/vlax_ft \\
      --config.init_from=/tmp/vlax_debug_bundle

From the 3000-step debug checkpoint these 200 steps reach 17/20 closed-loop successes
on toy_reach_c (`vlax eval --env toy_reach`; from scratch: 1/20); README "Fine-tune for a
new robot".

Options (`--config experiments/finetune_new_robot.py:OPTS`, comma-separated):
  lora           LoRA adapters (rank 8, alpha 16) on the Gemma attention + MLP weights;
                 every base weight frozen (no optimizer state). `vlax export` merges them.
  freeze_vision  freeze the SigLIP encoder (`^img/`); combine with lora or not.
  keep_optimizer keep the init checkpoint's optimizer state (training checkpoints only).
  cotrain        keep the toy web data in the mix (30%) against forgetting.

Your own robot: convert its episodes to RLDS
  python data_pipelines/convert_episodes_to_rlds.py --input_dir episodes/ \\
      --name my_robot --data_dir ~/vlax_data
register the printed `DatasetSpec` with `vlax.data.oxe.registry.register(...)` in a
module your config imports (e.g. a copy of this file), compute its statistics once
(`vlax stats --dataset my_robot --data-dir ~/vlax_data`; training would compute them
too), then train with
  --config.data.robot_datasets=my_robot --config.data.data_dir=~/vlax_data
  --config.data.cameras="('primary','wrist')" --config.data.chunk_len=4
and evaluate / run it:
  vlax eval --checkpoint WORKDIR/checkpoints --out /tmp/eval
  vlax export WORKDIR/checkpoints /tmp/my_robot_policy
  python -c "import vlax; p = vlax.Policy('/tmp/my_robot_policy', dataset='my_robot')"
"""

from vlax.experiments import debug


def get_config(arg: str | None = None):
  opts = {o.strip() for o in (arg or "").split(",") if o.strip()}
  known = {"lora", "freeze_vision", "keep_optimizer", "cotrain"}
  if opts - known:
    raise ValueError(f"unknown option(s) {sorted(opts - known)}; use {sorted(known)}")
  c = debug.get_config()
  c.init_from = ""  # required: --config.init_from=PATH
  c.init_from_required = True
  c.reset_optimizer = "keep_optimizer" not in opts
  c.num_steps = 200
  c.batch_size = 16
  c.log_every = 10
  c.checkpoint_every = 100
  c.eval_every = 100

  # Fine-tuning: a lower peak lr than pretraining's 1e-3, short warmup, decay to 10%.
  c.optimizer.lr = 3e-4
  c.optimizer.warmup_steps = 10
  c.optimizer.schedule = "cosine"
  c.optimizer.end_lr_ratio = 0.1
  c.optimizer.weight_decay = 1e-4
  c.optimizer.freeze_patterns = "^img/" if "freeze_vision" in opts else ""

  if "lora" in opts:
    c.lora.rank = 8
    c.lora.alpha = 16.0
    c.lora.targets = r"^llm/layers/attn/,^llm/layers/mlp/"
    c.optimizer.lr = 1e-3  # adapters start at zero: a larger step is usual

  c.data.robot_datasets = "toy_new_robot"  # or "my_robot" (+ data.data_dir)
  c.data.cameras = ("primary", "wrist")
  c.data.chunk_len = 4
  if "cotrain" in opts:
    c.data.web_weight = 0.3
  else:
    c.data.web_sources = ()
    c.data.web_weight = 0.0
  return c
