"""SentencePiece wrapper and the shipped toy model."""

import importlib.util
import json
import pathlib

import pytest

from vlax.data.text_tokenizer import TOY_MODEL_PATH, TextTokenizer, load_toy_tokenizer
from vlax.errors import VlaxError

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_toy_tokenizer_special_ids_and_round_trip():
  tok = load_toy_tokenizer()
  assert 500 <= tok.vocab_size <= 1000
  assert (tok.pad_id, tok.eos_id, tok.bos_id) == (0, 1, 2)  # Gemma's layout
  for text in ["What action should the robot take to reach the red target?\n",
               "where is the blue circle?", "Zebra 42 ünïcode ✓", ""]:
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text
  ids = tok.encode("red square", add_bos=True, add_eos=True)
  assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
  # The toy vocabulary covers the toy text compactly, and "\n" is one piece.
  assert len(tok.encode("where is the red square?")) <= 7
  assert tok.encode("\n") == [tok.encode("a\n")[-1]]


def test_serialization_round_trip():
  tok = load_toy_tokenizer()
  d = json.loads(json.dumps(tok.to_dict()))
  tok2 = TextTokenizer.from_dict(d)
  assert tok2.vocab_size == tok.vocab_size and tok2.sha256 == tok.sha256
  assert tok2.encode("pick up the green cube") == tok.encode("pick up the green cube")
  with pytest.raises(VlaxError, match="model_b64"):
    TextTokenizer.from_dict({})
  assert TextTokenizer.from_dict({"path": str(TOY_MODEL_PATH)}).sha256 == tok.sha256


def test_bad_model_file(tmp_path):
  with pytest.raises(VlaxError, match="no SentencePiece model file"):
    TextTokenizer(tmp_path / "missing.model")
  bad = tmp_path / "bad.model"
  bad.write_bytes(b"not a model")
  with pytest.raises(VlaxError, match="bad.model"):
    TextTokenizer(bad)


def test_script_reproduces_shipped_model():
  spec = importlib.util.spec_from_file_location(
      "make_toy_tokenizer", ROOT / "data_pipelines" / "make_toy_tokenizer.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  assert mod.train(1000) == TOY_MODEL_PATH.read_bytes()
  assert TOY_MODEL_PATH.stat().st_size < 100_000
