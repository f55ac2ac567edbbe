"""Checkpoints: the vlax format (Orbax + JSON metadata) and importers of released weights.

  format         save_checkpoint / load_params / latest_step / read_metadata
  hf_paligemma   Hugging Face PaliGemmaForConditionalGeneration directories
  big_vision     big_vision PaliGemma .npz files (and the parameter-tree definition)
  pretrained     load_pretrained / import_paligemma / main_import
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "save_checkpoint": "vlax.checkpoints.format",
    "load_params": "vlax.checkpoints.format",
    "latest_step": "vlax.checkpoints.format",
    "read_metadata": "vlax.checkpoints.format",
    "load_pretrained": "vlax.checkpoints.pretrained",
    "import_paligemma": "vlax.checkpoints.pretrained",
    "main_import": "vlax.checkpoints.pretrained",
    "PretrainedVLA": "vlax.checkpoints.pretrained",
    "load_hf_paligemma": "vlax.checkpoints.hf_paligemma",
    "load_big_vision_npz": "vlax.checkpoints.big_vision",
}


def __getattr__(name: str) -> Any:
  if name in _LAZY:
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f"module 'vlax.checkpoints' has no attribute {name!r}")


__all__ = list(_LAZY)
