"""Action tokenizers (uniform / quantile bins, FAST) and their place in the vocabulary.

Actions are normalized before tokenization (see `vlax.data.normalization`); tokenizers
work on normalized chunks [K, A] and return ids in their own 0-based range, which
`ActionVocab` maps into the language vocabulary. Tokenizers that learn from data (FAST,
quantile bins) are fitted with `fit_action_tokenizer` on chunks the data code collects.
"""

from __future__ import annotations

from typing import Any, Iterable, Union

import numpy as np

from vlax.actions.bins import BinTokenizer
from vlax.actions.fast import FASTTokenizer
from vlax.actions.vocab import ActionVocab, default_action_vocab, openpi_action_vocab
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


def fit_action_tokenizer(tokenizer: ActionTokenizer,
                         chunks: Iterable[np.ndarray]) -> ActionTokenizer:
  """Fits what `tokenizer` learns from data on normalized action chunks [K, A_i].

  FAST learns its integer range and BPE merges; quantile bins learn per-dimension edges.
  Chunks may have different action dims A_i (a mixture of robots): quantile bins see
  each dimension over the chunks that have it. Uniform bins learn nothing. Returns the
  (fitted in place) tokenizer.
  """
  chunks = list(chunks)
  if not chunks:
    raise VlaxError(f"cannot fit the {type(tokenizer).__name__}: got no action chunks")
  if not isinstance(tokenizer, BinTokenizer):
    return tokenizer.fit(chunks)
  steps = {c.shape[0] for c in chunks}
  if len(steps) != 1:
    raise VlaxError(f"cannot fit the BinTokenizer: action chunks of different lengths "
                    f"{sorted(steps)}")
  # Dimensions padded to the widest chunk; the mask keeps padding out of the quantiles.
  a_max = max(c.shape[1] for c in chunks)
  padded = np.zeros((len(chunks), chunks[0].shape[0], a_max), np.float32)
  mask = np.zeros(padded.shape, bool)
  for i, c in enumerate(chunks):
    padded[i, :, :c.shape[1]], mask[i, :, :c.shape[1]] = c, True
  return tokenizer.fit(padded, mask)


__all__ = ["ActionTokenizer", "ActionVocab", "BinTokenizer", "FASTTokenizer",
           "default_action_vocab", "fit_action_tokenizer", "make_action_tokenizer",
           "openpi_action_vocab",
           "tokenizer_from_dict"]
