"""Sequence builder: robot frames / web examples -> model-batch examples."""

import numpy as np
import pytest
import tensorflow as tf

import _seq_utils as S
from vlax.actions import BinTokenizer, FASTTokenizer, default_action_vocab
from vlax.data import normalization
from vlax.data.sequence import (DataCounters, SequenceBuilder,
                                SequenceConfig, actions_from_tokens, collect_action_chunks,
                                numpy_iterator, target_action_ids)
from vlax.data.text_tokenizer import load_toy_tokenizer
from vlax.errors import VlaxError
from vlax.models.batch import Batch

CAMS = ("primary", "wrist")


def _builder(tok=None, **kw):
  text = load_toy_tokenizer()
  tok = tok or BinTokenizer()
  cfg = SequenceConfig(**{"max_len": 64, "cameras": CAMS, "image_size": (S.IMG, S.IMG),
                          **kw})
  return SequenceBuilder(cfg, text, tok, default_action_vocab(text.vocab_size,
                                                              tok.vocab_size))


def _build(builder, name, index, n=6):
  frames, raw, stats = S.synthetic_frames(name, index, n)
  ds = builder.robot_dataset(tf.data.Dataset.from_tensor_slices(frames))
  return list(numpy_iterator(ds)), frames, raw, stats


def test_robot_sequences_masks_and_round_trip():
  b = _builder()
  eos = b.eos_id
  for index, name in enumerate(["arm7", "base3"]):
    exs, frames, raw, stats = _build(b, name, index)
    a = S.EMBODIMENTS[name][0]
    assert len(exs) == 6
    for i, ex in enumerate(exs):
      assert set(ex) == set(Batch.keys())
      assert Batch.from_dict(ex).to_dict().keys() == ex.keys()
      assert ex["tokens"].shape == (64,) and ex["tokens"].dtype == np.int32
      assert ex["images"].shape == (2, S.IMG, S.IMG, 3) and ex["images"].dtype == np.float32
      np.testing.assert_allclose(
          ex["images"][0], frames["observation"]["image_primary"][i] / 127.5 - 1, atol=1e-6)
      assert ex["image_mask"].tolist() == [True, name == "arm7"]
      assert ex["source"] == 0 and ex["dataset_index"] == index
      tok, inp, pre = ex["tokens"], ex["input_mask"], ex["prefix_mask"]
      loss, act = ex["loss_mask"], ex["action_token_mask"]
      n_prompt, n = int(pre.sum()), int(inp.sum())
      # Layout: prefix (bos .. "\n"), K*A action tokens, eos, padding.
      assert n == n_prompt + S.K * a + 1
      assert pre[:n_prompt].all() and not pre[n_prompt:].any()
      assert tok[0] == b.text.bos_id and tok[n - 1] == eos
      assert (tok[n:] == b.pad_id).all() and not inp[n:].any()
      assert b.text.decode(tok[1:n_prompt]).endswith("?\n")
      assert not (loss & ~inp).any() and not (act & ~loss).any() and not (loss & pre).any()
      assert loss[n - 1] and not act[n - 1]
      valid_steps = frames["action_pad_mask"][i, :, 0]
      expect = np.repeat(valid_steps, a)  # bins: padded steps are not targets
      assert act[n_prompt:n - 1].tolist() == expect.tolist()
      assert b.vocab.contains(tok[n_prompt:n - 1]).all()
      assert not b.vocab.contains(tok[:n_prompt]).any()
      # Decode -> unnormalize -> robot units within half a bin (x the dim's scale).
      ids = target_action_ids(ex, eos)
      norm = b.actions_from_tokens(ids, a, S.K)
      got = normalization.unnormalize(norm, stats["action"])
      s = stats["action"]
      half = (np.asarray(s["q99"]) - np.asarray(s["q01"])) / 2
      tol = np.where(s["mask"], half, 1.0) / 256 + 1e-5
      err = np.abs(got - raw[i])[valid_steps]
      assert (err <= tol).all(), (name, i, err.max())


def test_fast_robot_sequences_round_trip():
  frames, raw, stats = S.synthetic_frames("arm7", 0, 6)
  ds = tf.data.Dataset.from_tensor_slices(frames)
  chunks = collect_action_chunks(ds, 6)
  assert len(chunks) == 6 and chunks[0].shape == (S.K, 7)
  np.testing.assert_array_equal(chunks[-1][S.K // 2:], np.repeat(chunks[-1][S.K // 2 - 1:
                                                                             S.K // 2], 2, 0))
  fast = FASTTokenizer(vocab_size=256, scale=50.0).fit(chunks * 4)
  b = _builder(fast)
  exs = list(numpy_iterator(b.robot_dataset(ds)))
  bound = np.sqrt(S.K) * 0.5 / fast.scale
  for i, ex in enumerate(exs):
    n_prompt = int(ex["prefix_mask"].sum())
    n = int(ex["input_mask"].sum())
    assert ex["loss_mask"][n_prompt:n].all()  # every FAST token + eos is a target
    assert ex["action_token_mask"][n_prompt:n - 1].all()
    norm = b.actions_from_tokens(target_action_ids(ex, b.eos_id), 7, S.K)
    valid = frames["action_pad_mask"][i, :, 0]
    want = frames["action"][i, :, :7]
    assert np.abs(norm - want)[valid].max() <= bound + 1e-5


def test_overlong_drop_truncate_raise():
  # A 7-dim, 4-step chunk needs 28 action tokens + prompt: max_len 32 is too short.
  for mode in ("drop", "truncate"):
    b = _builder(max_len=32, on_overlong=mode)
    exs, *_ = _build(b, "arm7", 0)
    short, *_ = _build(b, "base3", 1)  # 12 action tokens: fits
    assert len(short) == 6
    if mode == "drop":
      assert exs == []
      assert b.counters.get("robot/overlong_dropped") == 6
      assert b.counters.get("robot/overlong_dropped/arm7") == 6
    else:
      assert len(exs) == 6 and exs[0]["input_mask"].all()
      assert b.counters.get("robot/overlong_truncated") == 6
      # A truncated action string still decodes to a full chunk.
      assert b.actions_from_tokens(target_action_ids(exs[0], b.eos_id), 7, S.K).shape == (
          S.K, 7)
  b = _builder(max_len=32, on_overlong="raise")
  with pytest.raises(VlaxError, match="max_len 32"):
    _build(b, "arm7", 0)


def test_proprio_in_prompt_and_config_errors():
  b = _builder(proprio_bins=16)
  exs, frames, *_ = _build(b, "base3", 1, n=2)
  ex = exs[0]
  prompt = b.text.decode(ex["tokens"][1:int(ex["prefix_mask"].sum())])
  p = frames["observation"]["proprio"][0, :2]
  bins = np.clip(np.floor((p + 1) / 2 * 16), 0, 15).astype(int)
  assert prompt.endswith(f"? State: {bins[0]} {bins[1]};\n"), prompt
  with pytest.raises(VlaxError, match="on_overlong"):
    SequenceConfig(on_overlong="nope")
  with pytest.raises(VlaxError, match="instruction"):
    SequenceConfig(prompt_template="act")
  text = load_toy_tokenizer()
  from vlax.actions import ActionVocab
  with pytest.raises(VlaxError, match="overlaps"):
    SequenceBuilder(SequenceConfig(), text, BinTokenizer(), ActionVocab(900, 256))
  with pytest.raises(VlaxError, match="overlaps"):
    SequenceBuilder(SequenceConfig(), text, BinTokenizer(), ActionVocab(0, 256))
  with pytest.raises(VlaxError, match="ids but the reserved"):
    SequenceBuilder(SequenceConfig(), text, BinTokenizer(), ActionVocab(1000, 100))
  assert _builder().model_vocab_size == text.vocab_size + 256


def test_web_sequences():
  b = _builder()
  exs = {"image": np.full((3, S.IMG, S.IMG, 3), 255, np.uint8),
         "prompt": [b"what color is the square?", b"caption en", b"q"],
         "answer": [b"red", b"a blue circle at the left", b"x" * 500],
         "dataset_index": np.array([0, 0, 1], np.int32),
         "dataset_name": [b"toy", b"toy", b"long"]}
  out = list(numpy_iterator(b.web_dataset(tf.data.Dataset.from_tensor_slices(exs),
                                          index_offset=2)))
  assert len(out) == 2 and b.counters.get("web/overlong_dropped/long") == 1
  ex = out[0]
  assert ex["source"] == 1 and ex["dataset_index"] == 2
  assert ex["image_mask"].tolist() == [True, False]
  assert np.allclose(ex["images"][0], 1.0) and np.allclose(ex["images"][1], 0.0)
  n_prompt, n = int(ex["prefix_mask"].sum()), int(ex["input_mask"].sum())
  assert b.text.decode(ex["tokens"][:n_prompt]) == "what color is the square?\n"
  assert b.text.decode(ex["tokens"][n_prompt:n - 1]) == "red"
  assert ex["loss_mask"][n_prompt:n].all() and not ex["loss_mask"][:n_prompt].any()
  assert not ex["action_token_mask"].any()


def test_actions_from_tokens_tolerates_garbage():
  text = load_toy_tokenizer()
  tok = BinTokenizer()
  vocab = default_action_vocab(text.vocab_size, 256)
  for ids in ([], [5, 6, 7], [vocab.start + 3] * 100, [text.eos_id, vocab.start]):
    out = actions_from_tokens(ids, 3, 4, tok, vocab, eos_id=text.eos_id)
    assert out.shape == (4, 3) and np.isfinite(out).all()
  ids = vocab.to_vocab(tok.encode(np.full((4, 3), 0.5))) + [text.eos_id, vocab.start]
  np.testing.assert_allclose(actions_from_tokens(ids, 3, 4, tok, vocab, text.eos_id), 0.5,
                             atol=1 / 256)


def test_counters():
  c = DataCounters()
  c.add("web", "missing_image", "llava")
  c.add("web", "missing_image", "llava")
  c.add("robot", "overlong_dropped")
  assert c.get("web/missing_image") == 2 and c.total() == 3
  assert "web/missing_image=2" in c.summary()


def test_metadata_round_trip():
  import json
  rng = np.random.default_rng(0)
  fast = FASTTokenizer(vocab_size=128, scale=10.0).fit(list(rng.uniform(-1, 1, (50, 4, 3))))
  b = _builder(fast, proprio_bins=8)
  _, _, stats = S.synthetic_frames("base3", 1, 2)
  meta = json.loads(json.dumps(b.metadata(dataset_names=["base3", "toy"], chunk_len=S.K,
                                          statistics={"base3": stats})))
  assert meta["action_tokenizer"]["action_dims"] == {"base3": 3}
  assert meta["vocab_size"] == b.model_vocab_size == 1000 + 128
  b2 = SequenceBuilder.from_metadata(meta)
  assert b2.config == b.config and b2.vocab == b.vocab
  chunk = rng.uniform(-1, 1, (S.K, 3))
  assert b2.encode_actions(chunk) == b.encode_actions(chunk)
  ids = b.robot_prompt_ids(b"go to the blue target", np.zeros(5), np.ones(5, bool))
  np.testing.assert_array_equal(
      b2.robot_prompt_ids(b"go to the blue target", np.zeros(5), np.ones(5, bool)), ids)
  with pytest.raises(VlaxError, match="vocab"):
    SequenceBuilder.from_metadata({"text_tokenizer": {}, "action_tokenizer": {"type": "bins"}})


def test_loc_pieces_host_action_ids_without_text_collisions():
  """PaliGemma-style tokenizer: action ids reuse <locXXXX> pieces; text never hits them."""
  import io
  import sentencepiece as spm
  from vlax.actions import ActionVocab
  from vlax.data.text_tokenizer import TextTokenizer
  locs = [f"<loc{i:04d}>" for i in range(16)]
  buf = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(["move to the red block", "pick up the cup"] * 20),
      model_writer=buf, vocab_size=320, hard_vocab_limit=False, user_defined_symbols=locs,
      pad_id=0, eos_id=1, bos_id=2, unk_id=3, byte_fallback=True, minloglevel=2)
  text = TextTokenizer(buf.getvalue(), name="loc_spm")
  start = text.piece_to_id("<loc0000>")
  assert text.id_to_piece(start) == "<loc0000>"
  vocab = ActionVocab(start, 16)
  cfg = SequenceConfig(max_len=64, cameras=("primary",), image_size=(S.IMG, S.IMG))
  b = SequenceBuilder(cfg, text, BinTokenizer(num_bins=16), vocab)  # no collision error
  ids = b.robot_prompt_ids(b"move to <loc0003> the red block")
  assert not vocab.contains(ids).any()
  with pytest.raises(VlaxError, match="overlaps"):
    SequenceBuilder(cfg, text, BinTokenizer(num_bins=16), ActionVocab(start - 1, 16))


def test_prompt_inputs_match_training_layout():
  b = _builder(proprio_bins=8)
  exs, frames, *_ = _build(b, "base3", 1, n=1)
  ex = exs[0]
  p = b.prompt_inputs("go to the blue target", frames["observation"]["proprio"][0],
                      frames["observation"]["proprio_pad_mask"][0])
  n = p["prompt_len"]
  assert n == int(ex["prefix_mask"].sum())
  np.testing.assert_array_equal(p["tokens"][:n], ex["tokens"][:n])
  assert p["input_mask"].sum() == n and (p["prefix_mask"] == p["input_mask"]).all()
  assert b.max_decode_steps(S.K, 3) == S.K * 3 + 1
