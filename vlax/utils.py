"""Small helpers every layer uses: param paths, nested lookups, the host's process.

This module sits at the bottom of the layer order (beside `vlax.errors`): it imports
nothing from vlax but the errors, so any module may import it.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax

from vlax.errors import VlaxError


def path_str(path: Sequence[Any]) -> str:
  """jax key path -> 'a/b/c' (the name params are addressed by in configs and errors)."""
  return jax.tree_util.keystr(tuple(path), simple=True, separator="/")


def flat_paths(tree: Any) -> dict[str, Any]:
  """Pytree -> {'a/b/c': leaf}."""
  return {path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def lookup(tree: Any, key: str, sep: str = ".") -> tuple[bool, Any]:
  """(found, value) of 'a.b.c' in nested dicts / ConfigDicts (found=False if any part is
  missing)."""
  node = tree
  for part in key.split(sep):
    try:
      node = node[part]
    except (KeyError, AttributeError, TypeError, IndexError):
      return False, None
  return True, node


def get_path(d: Mapping[str, Any], path: str, what: str = "frame") -> Any:
  """'a/b' from nested dicts (or a flat dict with '/'-joined keys); VlaxError naming the
  missing key otherwise."""
  if path in d:
    return d[path]
  cur = d
  for part in path.split("/"):
    if not isinstance(cur, Mapping) or part not in cur:
      raise VlaxError(f"{what} has no key {path!r} (keys: {sorted(d.keys())})")
    cur = cur[part]
  return cur


def process_info(process_index: int | None = None,
                 process_count: int | None = None) -> tuple[int, int]:
  """(process_index, process_count): the given values, else this host's from jax;
  VlaxError if the index is out of range."""
  if process_index is None:
    process_index = jax.process_index()
  if process_count is None:
    process_count = jax.process_count()
  if not 0 <= process_index < process_count:
    raise VlaxError(f"process_index {process_index} not in [0, {process_count})")
  return int(process_index), int(process_count)
