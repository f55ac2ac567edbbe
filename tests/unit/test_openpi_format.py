"""openpi's token layout, FAST from a tokenizer.json and openpi's binning, checked against
the formulas of notes/openpi-checkpoints.md computed independently here."""

import os

import numpy as np
import pytest
import scipy.fft
import sentencepiece as spm
from tokenizers import ByteLevelBPETokenizer

from vlax.actions import ActionVocab, BinTokenizer, FASTTokenizer, openpi_action_vocab
from vlax.data.sequence import SequenceBuilder, SequenceConfig, numpy_iterator
from vlax.data.text_tokenizer import TOY_MODEL_PATH, load_toy_tokenizer
from vlax.errors import VlaxError

import _seq_utils as su

SCALE, MIN_TOKEN = 10.0, -354


def _digits(state):
  """openpi: np.digitize(x, linspace(-1, 1, 257)[:-1]) - 1, written as a count."""
  edges = [-1.0 + 2.0 * k / 256 for k in range(256)]
  return [sum(e <= float(x) for e in edges) - 1 for x in state]


def _builder(tok, max_len=96):
  text = load_toy_tokenizer()
  vocab = openpi_action_vocab(text.vocab_size, tok.vocab_size)
  cfg = SequenceConfig(max_len=max_len, cameras=("primary", "wrist"), image_size=(16, 16),
                       format="openpi")
  return SequenceBuilder(cfg, text, tok, vocab)


def test_action_id_mapping_is_openpis():
  v = openpi_action_vocab(257152, 2048)
  t = np.arange(2048)
  assert np.array_equal(v.to_vocab(t), 257023 - t)
  assert np.array_equal(v.from_vocab(v.to_vocab(t)), t)  # the same formula inverts
  assert v.to_vocab(0) == 257023 and v.to_vocab(1023) == 256000  # <loc1023>..<loc0000>
  assert v.from_vocab([257024, 254975]).tolist() == [-1, -1]  # <seg>, text: not actions
  tiny = openpi_action_vocab(1000, 256)  # tiny vocab: V = 1000 + 256 + 128
  assert tiny.min_model_vocab == 1384 and tiny.to_vocab(5) == 1384 - 1 - 128 - 5
  assert ActionVocab.from_dict(tiny.to_dict()) == tiny


def test_state_digits_edges():
  b = _builder(BinTokenizer(decode_at="lower"))
  state = np.array([-1.01, -1.0, 0.0, 0.999, 1.0, 1.5], np.float32)
  ids = b.robot_prompt_ids(b"x", state, np.ones(6, bool))
  assert _digits(state) == [-1, 0, 128, 255, 255, 255]
  sp = spm.SentencePieceProcessor(model_file=str(TOY_MODEL_PATH))
  want = [sp.bos_id()] + sp.encode("Task: x, State: -1 0 128 255 255 255;\n")
  assert ids.tolist() == want


def test_golden_example_prompt_postfix_and_masks():
  """A standardized frame -> openpi's ids, masks and eos, against the formulas."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tok = BinTokenizer(num_bins=256, decode_at="lower")
  b = _builder(tok)
  frames, _, _ = su.synthetic_frames("base3", 0, n=2)
  frames["language_instruction"] = np.array([b"  Pick_UP the Block "] * 2)
  ex = next(numpy_iterator(b.robot_dataset(tf.data.Dataset.from_tensor_slices(frames))))
  sp = spm.SentencePieceProcessor(model_file=str(TOY_MODEL_PATH))
  state = frames["observation"]["proprio"][0][:2]
  prompt = [sp.bos_id()] + sp.encode(
      "Task: pick up the block, State: " + " ".join(map(str, _digits(state))) + ";\n")
  x = frames["action"][0][:, :3].astype(np.float64)
  bins = np.clip(np.floor((x + 1) / 2 * 256), 0, 255).astype(int).reshape(-1)
  v = 1000 + 256 + 128
  head, tail = sp.encode("Action: "), sp.encode("|")
  postfix = head + [v - 1 - 128 - int(t) for t in bins] + tail + [sp.eos_id()]
  n1, n = len(prompt), len(prompt) + len(postfix)
  assert ex["tokens"][:n].tolist() == prompt + postfix
  assert (ex["tokens"][n:] == 0).all() and ex["input_mask"].sum() == n
  assert ex["prefix_mask"].tolist() == [True] * n1 + [False] * (96 - n1)
  assert ex["loss_mask"].tolist() == [False] * n1 + [True] * len(postfix) + [False] * (96 - n)
  amask = np.zeros(96, bool)
  amask[n1 + len(head):n1 + len(head) + bins.size] = True
  assert ex["action_token_mask"].tolist() == amask.tolist()
  assert ex["image_mask"].all()  # openpi attends a missing camera as a black image
  # Decoding the generated postfix gives openpi's k / 256 * 2 - 1.
  out = b.actions_from_tokens(postfix + [7, 7], 3, su.K)
  np.testing.assert_allclose(out.reshape(-1), bins / 256 * 2 - 1, atol=1e-6)
  assert b.decode_errors == 0


def test_wrong_length_decode_is_counted_not_silent():
  tok = BinTokenizer(num_bins=256, decode_at="lower")
  b = _builder(tok)
  ids = b.vocab.to_vocab(np.full(5, 200))  # 5 of 4 x 3 action tokens
  out = b.actions_from_tokens(np.concatenate([b._head, ids, b._tail]), 3, 4)
  assert b.decode_errors == 1 and out.shape == (4, 3)
  assert np.allclose(out.reshape(-1)[:5], 200 / 256 * 2 - 1)


def test_bins_lower_edge_encoder_inverts_openpi_decode():
  tok = BinTokenizer(num_bins=256, decode_at="lower")
  k = np.arange(256)
  values = tok.decode(k, 256, 1).reshape(-1)
  np.testing.assert_allclose(values, k / 256 * 2 - 1, atol=1e-7)
  assert tok.encode(values[:, None]) == k.tolist()
  assert BinTokenizer.from_dict(tok.to_dict()).decode_at == "lower"
  with pytest.raises(VlaxError, match="decode_at"):
    BinTokenizer(strategy="quantile", decode_at="lower")


@pytest.fixture(scope="module")
def fast_json(tmp_path_factory):
  """A byte-level BPE fitted like the FAST processor: DCT (ortho, time), x10, round,
  chr(c - min_token), then `tokenizers`' ByteLevelBPETokenizer."""
  rng = np.random.default_rng(0)
  chunks = [np.cumsum(rng.normal(0, 0.08, (10, 7)), 0) for _ in range(200)]

  def strings():
    for c in chunks:
      coef = np.rint(scipy.fft.dct(c, axis=0, norm="ortho") * SCALE).astype(int)
      yield "".join(chr(max(int(v) - MIN_TOKEN, 0)) for v in coef.reshape(-1))

  bpe = ByteLevelBPETokenizer()
  bpe.train_from_iterator(strings(), vocab_size=600, show_progress=False,
                          special_tokens=[])
  d = tmp_path_factory.mktemp("fast")
  bpe.save(os.path.join(d, "tokenizer.json"))
  return str(d), bpe, rng


def test_fast_from_tokenizer_json_matches_openpi_recipe(fast_json):
  d, bpe, rng = fast_json
  tok = FASTTokenizer.from_tokenizer_json(d)
  assert (tok.scale, tok.min_token, tok.vocab_size) == (10.0, -354, 2048)
  for _ in range(5):
    chunk = np.cumsum(rng.normal(0, 0.08, (10, 7)), 0)
    coef = np.rint(scipy.fft.dct(chunk, axis=0, norm="ortho") * SCALE).astype(int)
    text = "".join(chr(max(int(v) - MIN_TOKEN, 0)) for v in coef.reshape(-1))
    ids = tok.encode(chunk)
    assert ids == bpe.encode(text).ids
    out = tok.decode(ids, 10, 7)
    err = np.abs(scipy.fft.dct(out, axis=0, norm="ortho")
                 - scipy.fft.dct(chunk, axis=0, norm="ortho"))
    assert err.max() <= 0.5 / SCALE + 1e-5  # within 1/scale per DCT coefficient
  assert tok.decode_errors == 0
  tok.decode(ids[:-1], 10, 7)
  assert tok.decode_errors == 1  # counted, and not a zero chunk
  again = FASTTokenizer.from_dict(tok.to_dict())
  assert again.encode(chunk) == ids and again.style == "openpi"


def test_fast_openpi_sequence_round_trip(fast_json):
  d, _, rng = fast_json
  tok = FASTTokenizer.from_tokenizer_json(d)
  b = _builder(tok, max_len=200)
  assert b.vocab.start == 1000 and b.model_vocab_size == 1000 + 2048 + 128
  chunk = np.cumsum(rng.normal(0, 0.08, (10, 7)), 0)
  gen = np.concatenate([b._head, b.vocab.to_vocab(np.asarray(tok.encode(chunk))),
                        b._tail, [b.eos_id]])
  np.testing.assert_allclose(b.actions_from_tokens(gen, 7, 10),
                             tok.decode(tok.encode(chunk), 10, 7), atol=1e-6)
  assert b.max_decode_steps(10, 7) == 2 * 70 + 1 + len(b._head) + len(b._tail)
