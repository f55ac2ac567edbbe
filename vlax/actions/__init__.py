"""Action tokenizers (uniform / quantile bins, FAST) and their place in the vocabulary.

Actions are normalized before tokenization (see `vlax.data.normalization`); tokenizers
work on normalized chunks [K, A] and return ids in their own 0-based range, which
`ActionVocab` maps into the language vocabulary.
"""

from __future__ import annotations

from typing import Any, Union

from vlax.actions.bins import BinTokenizer
from vlax.actions.fast import FASTTokenizer
from vlax.actions.vocab import ActionVocab, default_action_vocab
from vlax.errors import VlaxError

ActionTokenizer = Union[BinTokenizer, FASTTokenizer]


def tokenizer_from_dict(d: dict[str, Any]) -> ActionTokenizer:
  """Rebuilds an action tokenizer from its `to_dict()` (e.g. checkpoint metadata)."""
  kind = d.get("type") if isinstance(d, dict) else None
  if kind == "bins":
    return BinTokenizer.from_dict(d)
  if kind == "fast":
    return FASTTokenizer.from_dict(d)
  raise VlaxError(f"action tokenizer settings: unknown type {kind!r} (expected 'bins' or "
                  f"'fast')")


def make_action_tokenizer(kind: str, **kwargs: Any) -> ActionTokenizer:
  """Config-friendly constructor: kind in {'bins', 'quantile', 'fast'}."""
  if kind == "bins":
    return BinTokenizer(**kwargs)
  if kind == "quantile":
    return BinTokenizer(strategy="quantile", **kwargs)
  if kind == "fast":
    return FASTTokenizer(**kwargs)
  raise VlaxError(f"action tokenizer: unknown kind {kind!r} (bins, quantile, fast)")


__all__ = ["ActionTokenizer", "ActionVocab", "BinTokenizer", "FASTTokenizer",
           "default_action_vocab", "make_action_tokenizer", "tokenizer_from_dict"]
