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

openpi's layout (`openpi_action_vocab`, sequence format "openpi"): tokenizer id t sits at
`V - 1 - 128 - t` (V = the model vocabulary, 257152 for PaliGemma: 257023 - t), i.e. a
*reversed* range that ends right before the 128 `<seg>` ids. With 2048 FAST ids it also
covers the rare text pieces 254976..255999, which openpi accepts. For a smaller text
vocabulary V grows to text + size + 128, so the same formula holds.
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
  reverse: bool = False  # True: id t -> end - 1 - t (openpi), else start + t
  tail: int = 0  # ids the model vocabulary keeps after the range (openpi: 128 <seg>)

  def __post_init__(self):
    if self.start < 0 or self.size < 1 or self.tail < 0:
      raise VlaxError(f"ActionVocab: need start >= 0, size >= 1, tail >= 0, got {self}")

  @property
  def end(self) -> int:
    """One past the last action id."""
    return self.start + self.size

  @property
  def min_model_vocab(self) -> int:
    """The minimum LLM vocab size that holds the range (and its tail)."""
    return self.end + self.tail

  def to_vocab(self, ids: Any) -> Any:
    """Tokenizer ids (0-based) -> LLM vocab ids. Works on ints, lists, numpy and tf."""
    if isinstance(ids, (list, tuple)):
      return [self.to_vocab(int(i)) for i in ids]
    return (self.end - 1 - ids) if self.reverse else ids + self.start

  def from_vocab(self, vocab_ids: Any) -> np.ndarray:
    """LLM vocab ids -> tokenizer ids; ids outside the range become -1 (invalid).

    Decoders treat -1 as invalid (FAST drops it, bins decode it as 0).
    """
    v = np.asarray(vocab_ids, np.int64)
    inside = (v >= self.start) & (v < self.end)
    local = (self.end - 1 - v) if self.reverse else v - self.start
    return np.where(inside, local, -1)

  def contains(self, vocab_ids: Any) -> np.ndarray:
    v = np.asarray(vocab_ids, np.int64)
    return (v >= self.start) & (v < self.end)

  def to_dict(self) -> dict[str, Any]:
    out: dict[str, Any] = {"start": self.start, "size": self.size}
    if self.reverse or self.tail:
      out.update(reverse=self.reverse, tail=self.tail)
    return out

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "ActionVocab":
    return cls(start=int(d["start"]), size=int(d["size"]),
               reverse=bool(d.get("reverse", False)), tail=int(d.get("tail", 0)))


def default_action_vocab(text_vocab_size: int, size: int) -> ActionVocab:
  """The reserved range for `size` action ids next to a text vocabulary (see module doc)."""
  if text_vocab_size >= PALIGEMMA_VOCAB_SIZE and size <= PALIGEMMA_LOC_AND_SEG:
    return ActionVocab(PALIGEMMA_LOC_START, size)
  return ActionVocab(int(text_vocab_size), int(size))


OPENPI_TAIL = 128  # PaliGemma's <seg> ids after the range


def openpi_action_vocab(text_vocab_size: int, size: int,
                        model_vocab_size: int | None = None) -> ActionVocab:
  """openpi's reversed range: id t -> V - 1 - 128 - t (see module doc).

  V is `model_vocab_size` when given (an imported checkpoint's embedding rows), else the
  text vocabulary when it is PaliGemma-sized, else text + size + 128.
  """
  v = model_vocab_size
  if v is None:
    v = (text_vocab_size if text_vocab_size >= PALIGEMMA_VOCAB_SIZE
         else text_vocab_size + size + OPENPI_TAIL)
  start = int(v) - OPENPI_TAIL - int(size)
  if start < 0:
    raise VlaxError(f"openpi action vocabulary: {size} action ids + {OPENPI_TAIL} do not "
                    f"fit a vocabulary of {v}")
  return ActionVocab(start, int(size), reverse=True, tail=OPENPI_TAIL)
