"""SentencePiece text tokenizer that travels inside checkpoints.

The same wrapper loads Gemma/PaliGemma's released `tokenizer.model` and vlax's tiny debug
model (`vlax/assets/toy_spm.model`, made by data_pipelines/make_toy_tokenizer.py). The
model bytes are embedded base64 in `to_dict()`, so a checkpoint can tokenize without the
original file.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import pathlib
from typing import Any

import sentencepiece as spm

from vlax.errors import VlaxError

TOY_MODEL_PATH = pathlib.Path(__file__).resolve().parent.parent / "assets" / "toy_spm.model"


class TextTokenizer:
  """Thin SentencePiece wrapper: encode/decode plus the special ids the model needs."""

  def __init__(self, model: str | os.PathLike | bytes, name: str | None = None):
    if isinstance(model, (bytes, bytearray)):
      data = bytes(model)
      self.name = name or "sentencepiece"
    else:
      path = pathlib.Path(model)
      if not path.is_file():
        raise VlaxError(f"text tokenizer: no SentencePiece model file at {path}")
      data = path.read_bytes()
      self.name = name or path.name
    self._bytes = data
    self._sp = spm.SentencePieceProcessor()
    try:
      self._sp.LoadFromSerializedProto(data)
    except Exception as e:  # pylint: disable=broad-except
      raise VlaxError(f"text tokenizer {self.name}: not a SentencePiece model ({e})") from e

  @property
  def vocab_size(self) -> int:
    return int(self._sp.GetPieceSize())

  @property
  def bos_id(self) -> int:
    return int(self._sp.bos_id())

  @property
  def eos_id(self) -> int:
    return int(self._sp.eos_id())

  @property
  def pad_id(self) -> int:
    """Padding id (Gemma: 0). Falls back to 0 when the model defines none."""
    p = int(self._sp.pad_id())
    return p if p >= 0 else 0

  @property
  def sha256(self) -> str:
    return hashlib.sha256(self._bytes).hexdigest()

  def encode(self, text: str | bytes, add_bos: bool = False, add_eos: bool = False
             ) -> list[int]:
    if isinstance(text, bytes):
      text = text.decode("utf-8", errors="replace")
    ids = list(self._sp.EncodeAsIds(text))
    return ([self.bos_id] if add_bos else []) + ids + ([self.eos_id] if add_eos else [])

  def decode(self, ids: Any) -> str:
    ids = [int(i) for i in ids if 0 <= int(i) < self.vocab_size]
    return self._sp.DecodeIds(ids)

  def id_to_piece(self, i: int) -> str:
    return self._sp.IdToPiece(int(i))

  def piece_to_id(self, piece: str) -> int:
    """Id of a piece (e.g. "<loc0000>"); the unk id when the piece does not exist."""
    return int(self._sp.PieceToId(piece))

  def to_dict(self) -> dict[str, Any]:
    return {"type": "sentencepiece", "name": self.name, "vocab_size": self.vocab_size,
            "sha256": self.sha256, "model_b64": base64.b64encode(self._bytes).decode("ascii")}

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "TextTokenizer":
    """From `to_dict()` (embedded model), or {"path": FILE} (e.g. an imported checkpoint
    whose tokenizer.model sits next to the released weights)."""
    if isinstance(d, dict) and d.get("model_b64"):
      return cls(base64.b64decode(d["model_b64"]), name=d.get("name"))
    if isinstance(d, dict) and d.get("path"):
      return cls(d["path"], name=d.get("name"))
    if isinstance(d, dict) and (d.get("kind") == "toy" or d.get("name") == "toy_spm"):
      return load_toy_tokenizer()
    raise VlaxError("text tokenizer settings: need 'model_b64' or 'path', got keys "
                    f"{sorted(d) if isinstance(d, dict) else type(d).__name__}")

  def __getstate__(self):  # picklable (tf.data / multiprocessing)
    return {"bytes": self._bytes, "name": self.name}

  def __setstate__(self, state):
    self.__init__(state["bytes"], name=state["name"])

  def __repr__(self) -> str:
    return f"TextTokenizer({self.name!r}, vocab_size={self.vocab_size})"


@functools.lru_cache(maxsize=1)
def load_toy_tokenizer() -> TextTokenizer:
  """The tiny debug SentencePiece model shipped in vlax/assets/."""
  if not TOY_MODEL_PATH.is_file():
    raise VlaxError(f"toy tokenizer missing at {TOY_MODEL_PATH}; run "
                    f"`python data_pipelines/make_toy_tokenizer.py`")
  return TextTokenizer(TOY_MODEL_PATH, name="toy_spm")
