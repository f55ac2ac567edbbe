"""Pretrain on the Open X-Embodiment "magic soup" from PaliGemma 3B weights, pod-sized.

Set the data and the starting weights (import them once with `vlax import-paligemma`),
and name the slice after the colon to take the mesh `vlax plan --sweep` chose for it:

  vlax train --config experiments/pretrain_oxe.py:v5p-128 --workdir gs://BUCKET/runs/oxe \\
      --config.data.data_dir=gs://BUCKET/oxe \\
      --config.init_from=gs://BUCKET/paligemma-3b-pt-224-vlax \\
      --config.data.text_tokenizer=gs://BUCKET/paligemma-3b-pt-224/tokenizer.model
"""

from vlax.data.cotrain import default_data_config
from vlax.errors import VlaxError
from vlax.training.trainer import default_train_config

# Slice -> (data, fsdp, tensor) at batch 2048, chosen by `vlax plan --config
# experiments/pretrain_oxe.py --topology NAME --sweep` (benchmarks/README.md has the
# ranked tables): the fitting mesh with the lowest step-time bound, then the least ICI
# traffic. Without a name: FSDP over every chip (fits anywhere it fits at all; on 64
# chips the compiler lowers its collectives to all-reduces, ~1.5x the traffic).
MESHES = {
    "v5p-128": (16, 4, 1),  # 20.6 GB of ICI per chip and step vs. 33.1 at fsdp=64
    "v4-128": (16, 4, 1),  # the same; 22.6 of 32 GiB per chip (data=4, fsdp=16: 13.0)
    "v6e-64": (1, 64, 1),  # HBM-bound; 8x8 (the only other layout) moves more HBM bytes
    "v5e-256": (2, 128, 1),  # the vision tower shards over 128, not 256: 6.4 vs. 12.1 GiB
}


def get_config(arg: str | None = None):
  if arg and arg not in MESHES:
    raise VlaxError(f"pretrain_oxe: no mesh for slice {arg!r}; known: {sorted(MESHES)} "
                    "(or leave it out for FSDP over every chip)")
  c = default_train_config()
  c.num_steps = 300_000
  c.batch_size = 2048  # global, e.g. 8 per chip on a v4-512
  c.seed = 42
  c.log_every = 100
  c.checkpoint_every = 2000
  c.keep_checkpoints = 3
  c.keep_best = 1
  # The data-state checkpoint holds the shuffle buffer (GBs per host at this size): off;
  # a resumed run re-seeds its stream with the resume step instead.
  c.save_data_state = False
  c.eval_every = 2000
  c.eval_steps = 20
  c.init_from = ""  # a vlax checkpoint of imported PaliGemma weights
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = MESHES[arg] if arg else (1, -1, 1)

  c.model.preset = "paligemma_3b"
  c.model.dtype = "bfloat16"  # bf16 compute, fp32 master params
  c.model.remat = True
  c.model.scan_unroll = 1  # rolled layer scan: 18 + 27 layers compile fast on TPU

  c.optimizer.name = "adamw"
  c.optimizer.lr = 1e-4
  c.optimizer.warmup_steps = 2000
  c.optimizer.schedule = "cosine"
  c.optimizer.end_lr_ratio = 0.05
  c.optimizer.weight_decay = 1e-4
  c.optimizer.clip_norm = 1.0

  c.data = default_data_config()
  c.data.robot_datasets = "oxe_magic_soup"
  c.data.data_dir = ""  # required: local path or gs:// holding the RLDS datasets
  c.data.stats_cache_dir = ""  # default: next to the data
  c.data.image_size = 224
  c.data.cameras = ("primary", "wrist")
  c.data.chunk_len = 4
  c.data.shuffle_buffer = 250_000
  c.data.text_tokenizer = ""  # required: Gemma's tokenizer.model (from the release)
  c.data.action_tokenizer = "bins"
  c.data.num_bins = 256
  c.data.max_len = 96
  c.data.web_sources = ()
  c.data.web_weight = 0.0
  c.logging.wandb = False
  return c
