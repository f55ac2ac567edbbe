"""Tiny synthetic model batches and configs shared by the training tests.

The global batch of step s is a pure function of (seed, s), and each process takes its
own rows, so 1-process and 2-process runs see the same global batches.
"""

from __future__ import annotations

import numpy as np

VOCAB = 128
SEQ_LEN = 16
PREFIX_LEN = 8
NUM_CAMS = 2
IMAGE_SIZE = 32  # the `tiny` preset's image size
DATASET_NAMES = ("toy_a", "toy_b", "toy_web")


def make_batch(batch_size: int, seed: int = 0, step: int = 0, vocab: int = VOCAB,
               seq_len: int = SEQ_LEN, num_cams: int = NUM_CAMS,
               image_size: int = IMAGE_SIZE, num_datasets: int = len(DATASET_NAMES)):
  """One global model batch (numpy). Targets are a learnable function of the prompt."""
  rng = np.random.default_rng([seed, step])
  b, l, p = batch_size, seq_len, PREFIX_LEN
  prompt = rng.integers(1, vocab, size=(b, p))
  lengths = rng.integers(p + 3, l + 1, size=(b,))  # some right padding
  target = (prompt[:, : l - p] * 3 + 1) % vocab
  tokens = np.concatenate([prompt, target], axis=1).astype(np.int32)
  pos = np.arange(l)[None]
  input_mask = pos < lengths[:, None]
  tokens = np.where(input_mask, tokens, 0).astype(np.int32)
  prefix_mask = (pos < p) & input_mask
  loss_mask = (pos >= p) & input_mask
  action_token_mask = loss_mask & (pos < p + 4)
  dataset_index = (np.arange(b) % num_datasets).astype(np.int32)
  source = (dataset_index == num_datasets - 1).astype(np.int32)  # last one is "web"
  images = rng.uniform(-1, 1, size=(b, num_cams, image_size, image_size, 3)).astype(np.float32)
  image_mask = np.ones((b, num_cams), bool)
  image_mask[1::2, -1] = False
  return {"images": images, "image_mask": image_mask, "tokens": tokens,
          "input_mask": input_mask, "prefix_mask": prefix_mask, "loss_mask": loss_mask,
          "action_token_mask": action_token_mask, "source": source,
          "dataset_index": dataset_index}


def metadata():
  return {"dataset_names": list(DATASET_NAMES), "vocab_size": VOCAB,
          "statistics": {"toy_a": {"action": {"mean": [0.0, 1.0]}, "num_transitions": 3}},
          "text_tokenizer": {"kind": "toy", "vocab_size": VOCAB},
          "action_tokenizer": {"kind": "bins", "num_bins": 16}}


def synthetic_data_fn(fixed: bool = False):
  """data_iterator_fn: batches depend on (seed, step) — or only on seed when `fixed`."""

  def fn(config, process_index, process_count, start_step):
    local = config.batch_size // process_count

    def gen():
      step = start_step
      while True:
        g = make_batch(config.batch_size, seed=config.seed, step=0 if fixed else step)
        yield {k: v[process_index * local:(process_index + 1) * local] for k, v in g.items()}
        step += 1

    return gen(), metadata()

  return fn


class StatefulIterator:
  """Position-only iterator with save_state/restore_state; ignores start_step, so only a
  restored state (not re-seeding) makes a resumed run continue where it stopped. Appends
  every served position to `served_path`."""

  def __init__(self, config, process_index, process_count, served_path):
    self.config, self.pid, self.nproc = config, process_index, process_count
    self.pos = 0
    self.served_path = served_path

  def __iter__(self):
    return self

  def __next__(self):
    local = self.config.batch_size // self.nproc
    g = make_batch(self.config.batch_size, seed=self.config.seed, step=self.pos)
    with open(self.served_path, "a") as f:
      f.write(f"{self.pos}\n")
    self.pos += 1
    return {k: v[self.pid * local:(self.pid + 1) * local] for k, v in g.items()}

  def save_state(self, directory):
    with open(f"{directory}/pos", "w") as f:
      f.write(str(self.pos))

  def restore_state(self, directory):
    with open(f"{directory}/pos") as f:
      self.pos = int(f.read())


def stateful_data_fn(served_path):
  def fn(config, process_index, process_count, start_step):
    del start_step
    return StatefulIterator(config, process_index, process_count, served_path), metadata()
  return fn


def synthetic_eval_fn(config, process_index, process_count):
  local = config.batch_size // process_count

  def gen():
    for i in range(1000):
      g = make_batch(config.batch_size, seed=10_000 + config.seed, step=i)
      yield {k: v[process_index * local:(process_index + 1) * local] for k, v in g.items()}

  return gen()


def tiny_config(**overrides):
  """Training config for the `tiny` preset; kwargs use dotted keys ('optimizer.lr')."""
  from vlax.training.trainer import default_train_config  # pylint: disable=g-import-not-at-top
  c = default_train_config()
  c.num_steps = 6
  c.batch_size = 8
  c.seed = 0
  c.log_every = 1
  c.checkpoint_every = 3
  c.keep_checkpoints = 3
  c.model.preset = "tiny"
  c.optimizer.lr = 3e-3
  c.optimizer.warmup_steps = 0
  c.optimizer.schedule = "constant"
  c.optimizer.weight_decay = 0.0
  c.logging.progress = False
  c.logging.tensorboard = False
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1
  for k, v in overrides.items():
    node = c
    parts = k.split(".")
    for p in parts[:-1]:
      node = node[p]
    node[parts[-1]] = v
  return c


def read_jsonl(path):
  import json  # pylint: disable=g-import-not-at-top
  with open(path) as f:
    return [json.loads(l) for l in f if l.strip()]
