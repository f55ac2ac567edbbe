"""A tiny random Policy checkpoint with three robot datasets, shared by the Policy, export
and server tests (tests/unit/test_policy.py, tests/e2e/test_export.py, test_server.py,
test_openpi_server.py).

robot_a (3-D actions, raw gripper), robot_b (4-D) and robot_c (3-D like robot_a, same
proprio statistics, other action statistics, "normal" normalization), with proprio in the
prompt.
"""

import dataclasses

import jax
import numpy as np

from vlax.actions import BinTokenizer, default_action_vocab
from vlax.checkpoints import format as ckpt_format
from vlax.data.sequence import SequenceBuilder, SequenceConfig
from vlax.data.statistics import compute_statistics
from vlax.data.text_tokenizer import load_toy_tokenizer
from vlax.models.presets import get_preset
from vlax.models.vla import VLA, init_params

K = 2
DIMS = {"robot_a": 3, "robot_b": 4, "robot_c": 3}
PROPRIO = {"robot_a": 2, "robot_b": 4, "robot_c": 2}
CAMERAS = ("primary", "wrist")


def make_builder():
  text = load_toy_tokenizer()
  tok = BinTokenizer(num_bins=64)
  vocab = default_action_vocab(text.vocab_size, tok.vocab_size)
  cfg = SequenceConfig(max_len=48, cameras=CAMERAS, image_size=(32, 32), proprio_bins=16)
  return SequenceBuilder(cfg, text, tok, vocab)


def make_statistics():
  rng = np.random.default_rng(0)
  stats = {}
  for name in ("robot_a", "robot_b"):
    a, p = DIMS[name], PROPRIO[name]
    scale = np.linspace(0.1, 2.0 if name == "robot_a" else 5.0, a)
    action = rng.normal(size=(200, a)) * scale + rng.uniform(-1, 1, a)
    mask = [True] * a
    if name == "robot_a":
      action[:, -1] = rng.integers(0, 2, 200)  # raw 0/1 gripper
      mask[-1] = False
    traj = {"action": action, "proprio": rng.normal(size=(200, p))}
    stats[name] = compute_statistics([traj], dataset_name=name, action_mask=mask,
                                     progress=False)
  c = {k: (dict(v) if isinstance(v, dict) else v) for k, v in stats["robot_a"].items()}
  c["action"] = {k: (list(np.asarray(v) * 3.0 + 1.0) if k in ("mean", "std", "min", "max",
                                                             "q01", "q99") else v)
                 for k, v in stats["robot_a"]["action"].items()}
  c["action"] = {k: ([float(x) for x in v] if k != "mask" else v)
                 for k, v in c["action"].items()}
  c["normalization_type"] = "normal"
  stats["robot_c"] = c
  return stats


def make_metadata(builder=None, statistics=None):
  builder = builder or make_builder()
  config = get_preset("tiny")
  config = dataclasses.replace(
      config, llm=dataclasses.replace(config.llm, vocab_size=builder.model_vocab_size))
  meta = builder.metadata(dataset_names=list(DIMS) + ["web"], chunk_len=K,
                          statistics=make_statistics() if statistics is None else statistics)
  meta["model"] = config.to_dict()
  return config, meta


_PARAMS = {}


def make_params(config, seed=0):
  """Random params (host numpy; a fresh copy per call, initialized once per seed)."""
  if seed not in _PARAMS:
    _PARAMS[seed] = jax.tree.map(np.asarray, init_params(VLA(config), jax.random.key(seed)))
  params = jax.tree.map(np.array, _PARAMS[seed])
  # Larger action-token embeddings: the random model then mostly emits action tokens, so
  # the tests see real (non-default) bins.
  emb = params["llm"]["embedder"]["input_embedding"].copy()
  vocab = make_builder().vocab
  emb[vocab.start:vocab.end] *= 4.0
  params["llm"]["embedder"]["input_embedding"] = emb
  return params


def make_checkpoint(root, step=5, params=None, metadata=None):
  config, meta = make_metadata()
  if metadata is not None:
    meta = metadata
  if params is None:
    params = make_params(config)
  return ckpt_format.save_checkpoint(str(root), step, params, meta)


def make_observation(seed=0, size=(40, 56), wrist=True, proprio_dim=2):
  rng = np.random.default_rng(seed)
  obs = {"image_primary": rng.integers(0, 256, size + (3,), dtype=np.uint8),
         "proprio": rng.normal(size=proprio_dim).astype(np.float32)}
  if wrist:
    obs["image_wrist"] = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
  return obs
