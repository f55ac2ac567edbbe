"""Debug config (the embedded default): tiny VLA, toy robots + toy web data, CPU-sized.

Two toy embodiments with different action spaces and cameras (toy_reach_a: 3-D action,
one camera; toy_reach_b: 4-D action, primary + wrist) are generated under
`<workdir>/toy_data`, and procedural image-question-answer pairs stand in for web data.
On 2 CPU cores the loss falls clearly within a few minutes.

  vlax train --config experiments/debug.py --workdir /tmp/vlax_debug \\
      --config.num_steps=50 --config.batch_size=8
"""

from vlax.data.cotrain import default_data_config
from vlax.training.trainer import default_train_config


def get_config(arg: str | None = None):
  del arg
  c = default_train_config()
  c.num_steps = 300
  c.batch_size = 16
  c.seed = 0
  c.log_every = 20
  c.checkpoint_every = 100
  c.keep_checkpoints = 2
  c.eval_every = 100
  c.eval_steps = 2
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1

  c.model.preset = "debug"
  c.model.dtype = "float32"

  c.optimizer.lr = 1e-3
  c.optimizer.warmup_steps = 40
  c.optimizer.schedule = "cosine"
  c.optimizer.end_lr_ratio = 0.1
  c.optimizer.weight_decay = 1e-4

  c.data = default_data_config()
  c.data.robot_datasets = "toy"  # toy_reach_a + toy_reach_b
  c.data.image_size = 64
  c.data.cameras = ("primary", "wrist")
  c.data.chunk_len = 4
  c.data.action_tokenizer = "bins"
  c.data.num_bins = 256
  c.data.max_len = 64
  c.data.web_sources = ({"kind": "toy", "num_examples": 1024},)
  c.data.web_weight = 0.3
  c.logging.tensorboard = True
  return c
