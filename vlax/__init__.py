"""vlax: vision-language-action policies in JAX.

Public entry points are imported lazily so that `import vlax` stays cheap (no TensorFlow
import unless the data pipeline is used).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load_pretrained": ("vlax.checkpoints.pretrained", "load_pretrained"),
    "Policy": ("vlax.inference.policy", "Policy"),
    "actions": ("vlax.actions", None),
}


def __getattr__(name: str) -> Any:
  if name in _LAZY:
    module_name, attr = _LAZY[name]
    module = importlib.import_module(module_name)
    return module if attr is None else getattr(module, attr)
  raise AttributeError(f"module 'vlax' has no attribute {name!r}")


__all__ = ["load_pretrained", "Policy", "actions", "__version__"]
