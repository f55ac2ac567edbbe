"""Fine-tune an imported openpi checkpoint (pi0-FAST or PaliGemma-binning) for a new robot.

`vlax import-openpi` writes a vlax checkpoint whose model, text tokenizer, action
tokenizer (FAST tokenizer.json or 256 bins) and reversed action ids are openpi's; this
config continues training *in openpi's token format* (`data.sequence_format='openpi'`,
tokenizers and architecture taken from `init_from`), on any registered dataset, with
per-host data sharding on a pod. openpi's fine-tune defaults
(src/openpi/training/{optimizer,config}.py at 15a9616): AdamW b1 0.9, b2 0.95, eps
1e-8, weight decay 1e-10, global-norm clip 1.0; cosine schedule, 1k warmup, peak 2.5e-5
decaying to 2.5e-6 at 30k steps; EMA 0.99; batch 32.

Options (`--config experiments/finetune_openpi.py:OPTS`, comma-separated):
  lora   (default) LoRA rank 16, alpha 16 on the Gemma attention and MLP weights; every
         other LLM weight frozen, the ViT and its projector trainable (openpi's
         `gemma_2b_lora` freeze filter). `vlax export` merges the adapters.
  full   every weight trainable (openpi's full fine-tune; DROID needed this).

Recipe (README "Fine-tune openpi's pi0-FAST / binning checkpoints"):
  vlax import-openpi ~/.cache/openpi/openpi-assets/checkpoints/pi0_fast_droid /ckpt/fast \\
      --asset-id droid --fast-tokenizer ~/fast
  vlax stats --dataset my_robot --data-dir ~/vlax_data
  vlax train --config experiments/finetune_openpi.py:lora --workdir /runs/ft \\
      --config.init_from=/ckpt/fast/0 --config.data.robot_datasets=my_robot \\
      --config.data.data_dir=~/vlax_data
  vlax eval --checkpoint /runs/ft/checkpoints --out /runs/ft/eval
  vlax serve /runs/ft/checkpoints --protocol openpi --dataset my_robot \\
      --key-map experiments/openpi_key_maps/droid.json

Register your robot with `normalization_type="quantile"` to normalize exactly as openpi
did (unclipped q01/q99 -> [-1, 1]); "bounds" (vlax's default) clips to [-1, 1].
"""

from vlax.experiments import debug


def get_config(arg: str | None = None):
  opts = {o.strip() for o in (arg or "lora").split(",") if o.strip()}
  known = {"lora", "full"}
  if opts - known or len(opts & known) != 1:
    raise ValueError(f"options {sorted(opts)}: choose exactly one of {sorted(known)}")
  c = debug.get_config()
  c.init_from = ""  # required: an `vlax import-openpi` checkpoint (or a fine-tune of one)
  c.init_from_required = True
  c.reset_optimizer = True
  c.model.preset = "init_from"  # the imported architecture (paligemma_3b for openpi's)
  c.model.overrides = None
  c.model.dtype = "bfloat16"  # compute; params stay float32 (openpi's fine-tuning too)
  c.num_steps = 30_000
  c.batch_size = 32
  c.log_every = 100
  c.checkpoint_every = 1000
  c.eval_every = 0

  c.optimizer.name = "adamw"
  c.optimizer.lr = 2.5e-5
  c.optimizer.warmup_steps = 1000
  c.optimizer.schedule = "cosine"
  c.optimizer.end_lr_ratio = 0.1  # 2.5e-6 at the end, as openpi
  c.optimizer.b1, c.optimizer.b2, c.optimizer.eps = 0.9, 0.95, 1e-8
  c.optimizer.weight_decay = 1e-10
  c.optimizer.clip_norm = 1.0
  c.optimizer.freeze_patterns = ""
  # EMA of the params (openpi: 0.99). `ema_decay` is read by the trainer where EMA is
  # implemented (DESIGN: "Config keys: ema_decay (0 = off)"); older trainers ignore it.
  c.ema_decay = 0.99

  if "lora" in opts:
    c.lora.rank = 16
    c.lora.alpha = 16.0
    c.lora.targets = r"^llm/layers/attn/,^llm/layers/mlp/"
    c.lora.trainable_patterns = r"^img/"  # the ViT (and projector) stays trainable

  d = c.data
  d.sequence_format = "openpi"
  d.text_tokenizer = "init_from"  # PaliGemma's SentencePiece model, embedded on import
  d.action_tokenizer = "init_from"  # FAST tokenizer.json or bins, at openpi's ids
  d.robot_datasets = "toy_new_robot"  # --config.data.robot_datasets=my_robot
  d.image_size = 224
  d.cameras = ("primary", "secondary", "wrist")  # openpi's 3 slots; absent = black
  d.chunk_len = 10  # openpi's FAST DROID/LIBERO horizon (binning DROID: 15)
  d.max_len = 250  # openpi's max_token_len for FAST DROID (binning: 400)
  d.proprio_bins = 256  # the state as openpi's 256-bin digits
  d.web_sources = ()
  d.web_weight = 0.0
  return c
