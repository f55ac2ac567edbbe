"""Meta-World MT10 from scratch on a CPU: expert demos -> debug-sized VLA -> closed loop.

  python data_pipelines/make_metaworld_demos.py --tasks mt10 --episodes 50 \\
      --image-size 64 --data-dir /tmp/mw64
  vlax train --config experiments/metaworld_mt10.py --workdir /tmp/vlax_mt10 \\
      --config.data.data_dir=/tmp/mw64
  vlax eval --env metaworld --tasks mt10 --checkpoint /tmp/vlax_mt10 \\
      --out /tmp/vlax_mt10_eval --episodes 20

The debug-sized model (16 image tokens per camera, 4-layer decoder) with a small
convolutional stem in front of its ViT (`vision.stem=conv`, as Octo tokenizes images):
a from-scratch ViT's linear patches are slow to see a puck a few pixels wide. Front +
wrist cameras at 64 px, proprio = hand xyz + gripper opening (binned into the prompt),
4-step action chunks. The recipe of the measured run: DrQ random shift (4 px), proprio
dropout 0.5 (so `vlax eval --proprio-ablation drop` measures the same checkpoint without
proprio) and proprio noise 0.05, 17,500 steps (the 3-hour budget on 2 cores, checkpoints
every 2500 for the learning curve). README "Meta-World" has the measured numbers.

Options (`--config experiments/metaworld_mt10.py:OPTS`, comma-separated):
  pretrain7   train on MT10 minus the 3 held-out tasks (mixture `metaworld_mt10_pretrain7`),
              3000 steps
  heldout3    the 3 held-out tasks (`metaworld_mt10_heldout3`), 1500 steps with checkpoints
              every 500: with `init_from` the fine-tune, without it the same budget from
              scratch (README "Few demos with the image recipe")
"""

from vlax.data.cotrain import default_data_config
from vlax.training.trainer import default_train_config

OPTIONS = ("pretrain7", "heldout3")


def get_config(arg: str | None = None):
  opts = {o.strip() for o in (arg or "").split(",") if o.strip()}
  if opts - set(OPTIONS):
    raise ValueError(f"unknown option(s) {sorted(opts - set(OPTIONS))}; use {OPTIONS}")
  c = default_train_config()
  c.num_steps = 17500  # ~173 minutes at ~1.7 steps/s on 2 quiet cores (README "Meta-World")
  c.batch_size = 16
  c.seed = 0
  c.log_every = 50
  c.checkpoint_every = 2500  # the learning curve's checkpoints
  c.keep_checkpoints = 20
  c.eval_every = 0
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1

  c.model.preset = "debug"
  c.model.dtype = "float32"
  c.model.overrides = "vision.patch_size=16,vision.stem=conv"  # 4 x 4 tokens per camera

  c.optimizer.lr = 1e-3
  c.optimizer.warmup_steps = 100
  c.optimizer.schedule = "cosine"
  c.optimizer.end_lr_ratio = 0.1
  c.optimizer.weight_decay = 1e-4

  c.data = default_data_config()
  c.data.robot_datasets = "metaworld_mt10"
  c.data.data_dir = ""  # required: --config.data.data_dir=DIR (make_metaworld_demos.py)
  c.data.image_size = 64
  c.data.cameras = ("primary", "wrist")
  c.data.chunk_len = 4
  c.data.proprio_bins = 64
  c.data.augment = False
  # Recipe switches (README "Meta-World"): the image recipe below; the state oracle is
  # proprio_source="full_state" with cameras=(), proprio_format="action_tokens",
  # proprio_noise=0.05, proprio_dropout=0, max_len=96. Not in the recipe (unmeasured on
  # the image policy): config.loss.action_label_smoothing.
  c.data.random_shift = 4
  c.data.proprio_dropout = 0.5
  c.data.proprio_noise = 0.05
  c.data.proprio_source = "proprio"
  c.data.action_tokenizer = "bins"
  c.data.num_bins = 256
  c.data.max_len = 64
  c.data.web_sources = ()
  c.data.web_weight = 0.0
  c.data.shuffle_buffer = 5000
  c.logging.tensorboard = False

  if "pretrain7" in opts:
    c.data.robot_datasets = "metaworld_mt10_pretrain7"
    c.num_steps = 3000
    c.checkpoint_every = 1500
  if "heldout3" in opts:
    c.data.robot_datasets = "metaworld_mt10_heldout3"
    c.reset_optimizer = True  # with init_from: a fresh optimizer, as in a fine-tune
    # The measured few-demo budget: from scratch first succeeds between 500 and 1000 steps,
    # so the curve's checkpoints show where fine-tuning's head start shrinks.
    c.num_steps = 1500
    c.checkpoint_every = 500
    c.optimizer.lr = 3e-4
    c.optimizer.warmup_steps = 20
  return c
