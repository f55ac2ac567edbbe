"""FAST action tokenizer: DCT over time, scale + round, then BPE over the integers.

Smooth chunks put their energy into a few low-frequency DCT coefficients, so after
rounding most coefficients are 0 and BPE merges the long zero runs: fewer tokens for
smooth motion than for noise (Pertsch et al., 2025, "FAST").

Layout: coefficients of a chunk [K, A] are flattened frequency-major (all dims of
frequency 0, then frequency 1, ...), so a truncated token string loses only the highest
frequencies. Integers are shifted by the smallest value seen in `.fit` and mapped to
unicode characters for the `tokenizers` BPE; values outside the fitted range are clipped.

openpi's FAST (`from_tokenizer_json`): the released `physical-intelligence/fast`
processor's byte-level BPE (`tokenizer.json`, Hugging Face `tokenizers` format) with its
constants (scale 10, min_token -354, 2048 ids). There an integer c is the character
chr(max(c - min_token, 0)) and the whole string goes through the json's own pipeline
(byte-level pre-tokenizer and decoder), so ids equal openpi's for the same chunk.

`decode_errors` counts decodes whose coefficient string was not exactly K * A long (or
held unknown ids): openpi returns a zero chunk there; vlax decodes what it has (missing
high frequencies are zero) and counts the event, which `Policy` and the eval report show.
"""

from __future__ import annotations

import functools
from typing import Any, Iterable

import numpy as np
import os

from tokenizers import Tokenizer, models as bpe_models, trainers as bpe_trainers

from vlax.errors import VlaxError

# First code point of the integer alphabet (CJK block: printable, no normalization).
_BASE_CODEPOINT = 0x4E00
# openpi's FAST processor (`physical-intelligence/fast`, processor_config.json).
OPENPI_FAST_SCALE = 10.0
OPENPI_FAST_MIN_TOKEN = -354
OPENPI_FAST_VOCAB_SIZE = 2048


@functools.lru_cache(maxsize=64)
def dct_matrix(n: int) -> np.ndarray:
  """Orthonormal DCT-II matrix C [n, n] (coefficients = C @ x, inverse = C.T @ c)."""
  k = np.arange(n)[:, None]
  t = np.arange(n)[None, :]
  c = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * t + 1) * k / (2 * n))
  c[0] /= np.sqrt(2.0)
  return c


class FASTTokenizer:
  """DCT + BPE action tokenizer; ids 0..vocab_size-1 after `.fit(chunks)`."""

  def __init__(self, vocab_size: int = 1024, scale: float = 10.0,
               min_token: int | None = None, max_token: int | None = None,
               bpe_json: str | None = None, hf_json: str | None = None):
    self._hf = None
    if vocab_size < 2:
      raise VlaxError(f"FASTTokenizer: vocab_size must be >= 2, got {vocab_size}")
    if not scale > 0:
      raise VlaxError(f"FASTTokenizer: scale must be > 0, got {scale}")
    self.vocab_size = int(vocab_size)
    self.scale = float(scale)
    self.min_token = None if min_token is None else int(min_token)
    self.max_token = None if max_token is None else int(max_token)
    self._bpe = None
    self._id_to_ints: list[np.ndarray] | None = None
    self._hf = None  # openpi style: a byte-level BPE from a tokenizer.json
    self._hf_json = hf_json
    self.decode_errors = 0
    if hf_json is not None:
      self._load_hf(hf_json)
    elif bpe_json is not None:
      self._load_bpe(bpe_json)

  @classmethod
  def from_tokenizer_json(cls, path: str, scale: float = OPENPI_FAST_SCALE,
                          min_token: int = OPENPI_FAST_MIN_TOKEN,
                          vocab_size: int = OPENPI_FAST_VOCAB_SIZE) -> "FASTTokenizer":
    """openpi's FAST: `path` is the processor directory or its tokenizer.json."""
    path = os.fspath(path)
    if os.path.isdir(path):
      path = os.path.join(path, "tokenizer.json")
    if not os.path.isfile(path):
      raise VlaxError(f"FAST tokenizer: no tokenizer.json at {path}")
    with open(path, encoding="utf-8") as f:
      text = f.read()
    return cls(vocab_size=vocab_size, scale=scale, min_token=min_token, hf_json=text)

  @property
  def style(self) -> str:
    """'openpi' (a tokenizer.json byte-level BPE) or 'vlax' (fitted by `.fit`)."""
    return "openpi" if self._hf_json is not None else "vlax"

  def _load_hf(self, text: str) -> None:
    if self.min_token is None:
      raise VlaxError("FASTTokenizer: a tokenizer.json needs min_token")
    try:
      self._hf = Tokenizer.from_str(text)
    except Exception as e:  # pylint: disable=broad-except
      raise VlaxError(f"FAST tokenizer.json is not a `tokenizers` file: {e}") from None
    size = self._hf.get_vocab_size()
    if size > self.vocab_size:
      raise VlaxError(f"FASTTokenizer: tokenizer.json has {size} ids > vocab_size "
                      f"{self.vocab_size}")

  def _openpi_str(self, ints: np.ndarray) -> str:
    return "".join(chr(max(int(c) - self.min_token, 0)) for c in ints)

  # --- DCT part (no BPE) ------------------------------------------------------------

  def quantize(self, chunk: Any) -> np.ndarray:
    """chunk [K, A] -> int coefficients [K*A], frequency-major."""
    x = np.nan_to_num(np.asarray(chunk, np.float64))
    if x.ndim == 1:
      x = x[:, None]
    coef = dct_matrix(x.shape[0]) @ x  # [K, A]: row k = frequency k of every dim
    return np.rint(coef * self.scale).astype(np.int64).reshape(-1)

  def dequantize(self, ints: Any, chunk_len: int, action_dim: int) -> np.ndarray:
    """int coefficients (any length: padded with 0 / truncated) -> float32 [K, A]."""
    n = int(chunk_len) * int(action_dim)
    ints = np.asarray(ints, np.float64).reshape(-1)[:n]
    coef = np.zeros([n], np.float64)
    coef[:ints.size] = ints
    coef = coef.reshape(chunk_len, action_dim) / self.scale
    return (dct_matrix(int(chunk_len)).T @ coef).astype(np.float32)

  # --- BPE --------------------------------------------------------------------------

  @property
  def fitted(self) -> bool:
    return self._bpe is not None or self._hf is not None

  def _ints_to_str(self, ints: np.ndarray) -> str:
    ints = np.clip(ints, self.min_token, self.max_token) - self.min_token
    return "".join(map(chr, (ints + _BASE_CODEPOINT).tolist()))

  def _load_bpe(self, bpe_json: str) -> None:
    if self.min_token is None or self.max_token is None:
      raise VlaxError("FASTTokenizer: a BPE needs min_token and max_token")
    self._bpe = Tokenizer.from_str(bpe_json)
    # Lookup table id -> the integers it spells (fast, tolerant decode).
    table = []
    size = self._bpe.get_vocab_size()
    for i in range(size):
      piece = self._bpe.id_to_token(i) or ""
      table.append(np.array([ord(ch) - _BASE_CODEPOINT + self.min_token for ch in piece],
                            np.int64))
    self._id_to_ints = table
    if size > self.vocab_size:
      raise VlaxError(f"FASTTokenizer: BPE has {size} ids > vocab_size {self.vocab_size}")

  def fit(self, chunks: Iterable[Any]) -> "FASTTokenizer":
    """Learns the integer range and the BPE merges from normalized chunks [K, A].

    Chunks may have different shapes (datasets with different action dims / horizons).
    """
    seqs = [self.quantize(c) for c in chunks]
    if not seqs:
      raise VlaxError("FASTTokenizer.fit: got no chunks")
    allv = np.concatenate(seqs)
    self.min_token, self.max_token = int(allv.min()), int(allv.max())
    alphabet_size = self.max_token - self.min_token + 1
    if alphabet_size > self.vocab_size:
      raise VlaxError(
          f"FASTTokenizer.fit: quantized DCT coefficients span {alphabet_size} integers "
          f"({self.min_token}..{self.max_token}) > vocab_size {self.vocab_size}; lower "
          f"scale ({self.scale}) or raise vocab_size (are the actions normalized?)")
    alphabet = [chr(_BASE_CODEPOINT + i) for i in range(alphabet_size)]
    bpe = Tokenizer(bpe_models.BPE())
    trainer = bpe_trainers.BpeTrainer(vocab_size=self.vocab_size, min_frequency=2,
                                  initial_alphabet=alphabet, limit_alphabet=alphabet_size,
                                  special_tokens=[], show_progress=False)
    bpe.train_from_iterator((self._ints_to_str(s) for s in seqs), trainer=trainer)
    self._load_bpe(bpe.to_str())
    return self

  def _require_fit(self) -> None:
    if not self.fitted:
      raise VlaxError("FASTTokenizer must be .fit(chunks) (or loaded with "
                      "tokenizer_from_dict) before encode/decode")

  def max_tokens(self, chunk_len: int, action_dim: int) -> int:
    """Token budget: BPE never emits more tokens than coefficients (K * A); a byte-level
    BPE (openpi) may need 2 bytes per coefficient."""
    return int(chunk_len) * int(action_dim) * (2 if self._hf is not None else 1)

  def encode(self, chunk: Any) -> list[int]:
    """chunk float [K, A] (normalized) -> BPE ids in [0, vocab_size)."""
    return self.encode_batch([chunk])[0]

  def encode_batch(self, chunks: Iterable[Any]) -> list[list[int]]:
    """Like `encode` for many chunks (one call into the Rust tokenizer)."""
    self._require_fit()
    if self._hf is not None:
      strs = [self._openpi_str(self.quantize(c)) for c in chunks]
      return [list(e.ids) for e in self._hf.encode_batch(strs)]
    strs = [self._ints_to_str(self.quantize(c)) for c in chunks]
    return [list(e.ids) for e in self._bpe.encode_batch(strs)]

  def decode_ints(self, ids: Any) -> np.ndarray:
    """BPE ids -> the integer coefficients they spell (unknown ids dropped)."""
    self._require_fit()
    ids = [int(j) for j in np.asarray(ids).reshape(-1)]
    if self._hf is not None:
      ids = [i for i in ids if 0 <= i < self._hf.get_vocab_size()]
      text = self._hf.decode(ids, skip_special_tokens=False) if ids else ""
      return np.asarray([ord(ch) + self.min_token for ch in text], np.int64)
    table = self._id_to_ints
    parts = [table[i] for i in ids if 0 <= i < len(table)]
    return np.concatenate(parts) if parts else np.zeros([0], np.int64)

  def decode(self, ids: Any, chunk_len: int, action_dim: int) -> np.ndarray:
    """ids -> float32 [chunk_len, action_dim]; never raises on bad ids.

    Unknown ids (negative, >= the BPE size) are dropped; a coefficient string of the
    wrong length is zero-padded (missing high frequencies) or truncated, and counted in
    `decode_errors`.
    """
    ints = self.decode_ints(ids)
    if ints.size != int(chunk_len) * int(action_dim):
      self.decode_errors += 1
    return self.dequantize(ints, chunk_len, action_dim)

  # --- serialization ----------------------------------------------------------------

  def to_dict(self) -> dict[str, Any]:
    if self._hf_json is not None:
      return {"type": "fast", "style": "openpi", "vocab_size": self.vocab_size,
              "scale": self.scale, "min_token": self.min_token,
              "tokenizer_json": self._hf_json}
    return {"type": "fast", "vocab_size": self.vocab_size, "scale": self.scale,
            "min_token": self.min_token, "max_token": self.max_token,
            "bpe": None if self._bpe is None else self._bpe.to_str()}

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "FASTTokenizer":
    return cls(vocab_size=d["vocab_size"], scale=d["scale"], min_token=d.get("min_token"),
               max_token=d.get("max_token"), bpe_json=d.get("bpe"),
               hf_json=d.get("tokenizer_json"))

  def __repr__(self) -> str:
    if self._hf is not None:
      return (f"FASTTokenizer(openpi tokenizer.json, vocab_size={self.vocab_size}, "
              f"scale={self.scale}, min_token={self.min_token})")
    return (f"FASTTokenizer(vocab_size={self.vocab_size}, scale={self.scale}, "
            f"range=[{self.min_token}, {self.max_token}], fitted={self.fitted})")
