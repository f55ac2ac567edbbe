"""Constrained decoding of robot prompts (RT-2 §3.2): the answer grammar of each sequence
layout, and a tiny random Policy that mostly emits text unless constrained."""

import jax
import numpy as np

from vlax.actions import (BinTokenizer, FASTTokenizer, default_action_vocab,
                          openpi_action_vocab)
from vlax.data.sequence import SequenceBuilder, SequenceConfig
from vlax.data.text_tokenizer import load_toy_tokenizer
from vlax.inference.policy import Policy
from vlax.models.vla import VLA, init_params

from _policy_utils import DIMS, K, PROPRIO, make_builder, make_metadata, make_observation


def _rows(grammar):
  """Per position: (allowed range, allowed extra ids)."""
  lo, hi, extra = grammar
  return [((int(a), int(b)), sorted(int(x) for x in e if x >= 0))
          for a, b, e in zip(lo, hi, extra)]


def test_grammar_bins_fast_and_openpi():
  text = load_toy_tokenizer()
  eos = text.eos_id
  bins = make_builder()  # 64 bins after the 1000 text ids
  rng = (1000, 1064)
  assert _rows(bins.action_grammar(2, 3)) == [(rng, [])] * 6 + [((0, 0), [eos])]
  # A longer decode (a batch mixing action dims) allows only eos after the answer.
  assert _rows(bins.action_grammar(2, 3, 9))[6:] == [((0, 0), [eos])] * 3
  fast = SequenceBuilder(SequenceConfig(), text, FASTTokenizer(vocab_size=128),
                         default_action_vocab(text.vocab_size, 128))
  assert _rows(fast.action_grammar(2, 3)) == [((1000, 1128), [eos])] * 6 + [((0, 0), [eos])]
  openpi = SequenceBuilder(SequenceConfig(format="openpi"), text, BinTokenizer(num_bins=64),
                           openpi_action_vocab(text.vocab_size, 64))
  head = [int(x) for x in text.encode("Action: ")]
  tail = [int(x) for x in text.encode("|")]
  rows = _rows(openpi.action_grammar(2, 3))
  assert rows == ([((0, 0), [h]) for h in head] + [(rng, [])] * 6
                  + [((0, 0), [t]) for t in tail] + [((0, 0), [eos])])
  # Text where an action belongs is invalid; a short answer is a length error instead.
  assert bins.has_invalid_action_tokens([1000, 5, 1001, eos])
  assert not bins.has_invalid_action_tokens([1000, 1001, eos, 7])
  assert openpi.has_invalid_action_tokens(head + [1010, 7] + tail)
  assert not openpi.has_invalid_action_tokens(head + [1010, 1011] + tail + [eos])


def random_params(config, seed=0):
  """Random weights of the right shapes without compiling the init (seconds, not ~15 s):
  fan-in scaled normals, zero vectors; an untrained model that mostly emits text."""
  shapes = jax.eval_shape(lambda k: init_params(VLA(config), k), jax.random.key(seed))
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda s: (rng.normal(0, s.shape[-2] ** -0.5, s.shape) if len(s.shape) >= 2
                 else np.zeros(s.shape)).astype(s.dtype), shapes)


def test_constrained_policy_emits_only_action_tokens():
  config, meta = make_metadata()
  params = random_params(config)
  vocab = make_builder().vocab
  free = Policy.from_params(params, meta, constrain_actions=False)
  constrained = Policy.from_params(params, meta)
  eos = constrained.builder.eos_id
  obs = [make_observation(s, proprio_dim=PROPRIO["robot_b"]) for s in range(4)]
  text = ["pick up the red block"] * 4
  _, ids = free.predict_action_batch(obs, text, dataset="robot_b", return_tokens=True)
  assert (~vocab.contains(ids)).sum() > ids.size // 2  # mostly text tokens
  assert free.invalid_decodes == 4
  errors = constrained.decode_errors
  actions, ids = constrained.predict_action_batch(obs, text, dataset="robot_b",
                                                  return_tokens=True)
  n = K * DIMS["robot_b"]
  assert ids.shape == (4, n + 1)
  assert vocab.contains(ids[:, :n]).all() and (ids[:, n] == eos).all()
  assert len({tuple(r) for r in ids[:, :n].tolist()}) > 1  # real, input-dependent bins
  assert constrained.invalid_decodes == 0 and constrained.decode_errors == errors
  assert actions.shape == (4, K, DIMS["robot_b"]) and np.isfinite(actions).all()
  # Per-example datasets: each example decodes under its own grammar (3-D and 4-D).
  mixed_obs = [make_observation(5, proprio_dim=PROPRIO["robot_a"]), obs[1]] * 2
  _, mixed = constrained.predict_action_batch(  # batch 4 again: no new compile
      mixed_obs, text, dataset=["robot_a", "robot_b"] * 2, return_tokens=True)
  na = K * DIMS["robot_a"]
  assert vocab.contains(mixed[0, :na]).all() and (mixed[0, na:] == eos).all()
  assert vocab.contains(mixed[1, :n]).all() and mixed[1, n] == eos
  assert constrained.invalid_decodes == 0
