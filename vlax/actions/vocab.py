"""Where action token ids live inside the language model's vocabulary.

An action tokenizer emits ids 0..size-1; `ActionVocab(start, size)` places them at
start..start+size-1 of the LLM vocabulary.

Defaults (`default_action_vocab`):
- PaliGemma/Gemma tokenizer with 257152 ids: ids 256000..257023 are the 1024 `<locXXXX>`
  pieces (then 128 `<segXXX>`). They are user-defined pieces that SentencePiece only emits
  for the literal string "<loc0123>", which robot instructions and web answers in vlax never
  contain (the sequence builder strips such strings), so no text token collides with an
  action token. Action tokenizers with up to 1024 ids fit there; up to 1152 also take the
  `<seg>` ids.
- Any other text vocabulary (the tiny debug SentencePiece model, plain Gemma with 256000
  ids): the range starts right after the text pieces, and the model's vocabulary grows to
  `text_vocab_size + size` (`ActionVocab.end`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from vlax.errors import VlaxError

PALIGEMMA_VOCAB_SIZE = 257152
PALIGEMMA_LOC_START = 256000
PALIGEMMA_LOC_AND_SEG = 1024 + 128


@dataclasses.dataclass(frozen=True)
class ActionVocab:
  """A reserved, contiguous range [start, start + size) of the language vocabulary."""

  start: int
  size: int

  def __post_init__(self):
    if self.start < 0 or self.size < 1:
      raise VlaxError(f"ActionVocab: need start >= 0 and size >= 1, got {self}")

  @property
  def end(self) -> int:
    """One past the last action id: the minimum LLM vocab size that holds the range."""
    return self.start + self.size

  def to_vocab(self, ids: Any) -> Any:
    """Tokenizer ids (0-based) -> LLM vocab ids. Works on ints, lists, numpy and tf."""
    if isinstance(ids, (list, tuple)):
      return [self.start + int(i) for i in ids]
    return ids + self.start

  def from_vocab(self, vocab_ids: Any) -> np.ndarray:
    """LLM vocab ids -> tokenizer ids; ids outside the range become -1 (invalid).

    Decoders treat -1 as invalid (FAST drops it, bins decode it as 0).
    """
    v = np.asarray(vocab_ids, np.int64)
    inside = (v >= self.start) & (v < self.end)
    return np.where(inside, v - self.start, -1)

  def contains(self, vocab_ids: Any) -> np.ndarray:
    v = np.asarray(vocab_ids, np.int64)
    return (v >= self.start) & (v < self.end)

  def to_dict(self) -> dict[str, int]:
    return {"start": self.start, "size": self.size}

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "ActionVocab":
    return cls(start=int(d["start"]), size=int(d["size"]))


def default_action_vocab(text_vocab_size: int, size: int) -> ActionVocab:
  """The reserved range for `size` action ids next to a text vocabulary (see module doc)."""
  if text_vocab_size >= PALIGEMMA_VOCAB_SIZE and size <= PALIGEMMA_LOC_AND_SEG:
    return ActionVocab(PALIGEMMA_LOC_START, size)
  return ActionVocab(int(text_vocab_size), int(size))
