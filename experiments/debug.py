"""Debug config (the embedded default): tiny VLA, toy robots + toy web data, CPU-sized.

Two toy embodiments with different action spaces and cameras (toy_reach_a: 3-D action,
one camera; toy_reach_b: 4-D action, primary + wrist) are generated under
`<workdir>/toy_data`, and procedural image-question-answer pairs stand in for web data.
On 2 CPU cores the 3000 steps take about 10 minutes; `vlax eval --env toy_reach` then
measures the policy in closed loop (README: "Toy closed loop").

The toy scene is sized for a ViT trained from scratch: one large block (half-width 0.2)
and 16 patches per camera. With three small blocks (the env default) the model stays on
a proprio-only "move towards the table centre" heuristic for thousands of steps.

  vlax train --config experiments/debug.py --workdir /tmp/vlax_debug \\
      --config.num_steps=50 --config.batch_size=8
"""

from vlax.data.cotrain import default_data_config
from vlax.training.trainer import default_train_config


def get_config(arg: str | None = None):
  del arg
  c = default_train_config()
  c.num_steps = 3000
  c.batch_size = 16
  c.seed = 0
  c.log_every = 50
  c.checkpoint_every = 500
  c.keep_checkpoints = 2
  c.eval_every = 500
  c.eval_steps = 2
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1

  c.model.preset = "debug"
  c.model.dtype = "float32"
  c.model.overrides = "vision.patch_size=16"  # 4 x 4 patches per 64 px camera

  c.optimizer.lr = 1e-3
  c.optimizer.warmup_steps = 40
  c.optimizer.schedule = "cosine"
  c.optimizer.end_lr_ratio = 0.1
  c.optimizer.weight_decay = 1e-4

  c.data = default_data_config()
  c.data.robot_datasets = "toy"  # toy_reach_a + toy_reach_b
  c.data.toy_episodes = 1000  # per robot, ~5 frames each
  c.data.toy_num_blocks = 1
  c.data.toy_block_size = 0.2
  c.data.proprio_bins = 64  # the end-effector state in the prompt, as in pi0-FAST
  c.data.augment = False
  c.data.image_size = 64
  c.data.cameras = ("primary", "wrist")
  c.data.chunk_len = 4
  c.data.action_tokenizer = "bins"
  c.data.num_bins = 256
  c.data.max_len = 64
  c.data.web_sources = ({"kind": "toy", "num_examples": 1024},)
  c.data.web_weight = 0.1
  c.logging.tensorboard = True
  return c
