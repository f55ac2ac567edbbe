"""Inference: `Policy` (observation -> robot-unit actions), release bundles (the `export`
submodule), servers (JSON over HTTP; openpi's websocket protocol).

Submodules are imported on first use so `import vlax.inference` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "Policy": ("vlax.inference.policy", "Policy"),
    "ActionChunker": ("vlax.inference.policy", "ActionChunker"),
    "merge_lora": ("vlax.inference.export", "merge_lora"),
    "serve": ("vlax.inference.server", "serve"),
    "serve_openpi": ("vlax.inference.openpi_server", "serve_openpi"),
}


def __getattr__(name: str) -> Any:
  if name in _LAZY:
    module_name, attr = _LAZY[name]
    return getattr(importlib.import_module(module_name), attr)
  raise AttributeError(f"module 'vlax.inference' has no attribute {name!r}")


__all__ = list(_LAZY)
