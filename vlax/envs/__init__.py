"""Simulated robots and their scripted experts: what the toy datasets and demos come
from and what closed-loop evaluation runs.

Modules:
  toy_env             ToyReachEnv, the environment behind the toy datasets
  metaworld_tasks     Meta-World task names, instructions, dimensions (pure Python)
  metaworld_env       MetaWorldEnv: Meta-World tasks behind the toy env's interface ([sim])
  metaworld_experts   the scripted experts in a child process -> numpy episodes

Layer: beside `vlax.checkpoints`; imports nothing of vlax but `vlax.errors` and
`vlax.utils`, and never TensorFlow (MuJoCo's EGL rendering crashes next to it).
`vlax.data` writes RLDS from these envs; `vlax.evaluation` rolls policies out in them.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "ToyReachEnv": ("vlax.envs.toy_env", "ToyReachEnv"),
    "MetaWorldEnv": ("vlax.envs.metaworld_env", "MetaWorldEnv"),
}


def __getattr__(name: str) -> Any:
  if name in _LAZY:
    module, attr = _LAZY[name]
    return getattr(importlib.import_module(module), attr)
  raise AttributeError(f"module 'vlax.envs' has no attribute {name!r}")


__all__ = list(_LAZY)
