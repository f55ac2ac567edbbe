"""Loading `ml_collections` configs from Python files, with `--config.KEY=VALUE` overrides.

A config file defines `get_config(arg: str | None = None) -> ConfigDict` (big_vision style).
`path.py:arg` passes `arg`. Overrides are parsed against the type already in the config,
so `--config.batch_size=8` stays an int and a typo names the unknown key.
"""

from __future__ import annotations

import ast
import importlib.util
import os
from typing import Any, Sequence

import ml_collections

from vlax.errors import VlaxError

DEFAULT_CONFIG = "debug"  # the embedded default: vlax.experiments.debug (= experiments/debug.py)


def load_config_file(spec: str | None) -> ml_collections.ConfigDict:
  """Loads `path.py[:arg]`, or an embedded config by name (e.g. `debug`)."""
  spec = spec or DEFAULT_CONFIG
  path, _, arg = spec.partition(":")
  if path.endswith(".py"):
    if not os.path.isfile(path):
      raise VlaxError(f"config file not found: {path}")
    module_spec = importlib.util.spec_from_file_location(
        f"vlax_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
      module_spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - report which file broke
      raise VlaxError(f"config file {path} failed to load: {type(e).__name__}: {e}") from e
  else:
    try:
      module = importlib.import_module(f"vlax.experiments.{path}")
    except ModuleNotFoundError as e:
      raise VlaxError(f"unknown config {spec!r}: give a path to a .py file or one of the "
                      "configs in experiments/") from e
  if not hasattr(module, "get_config"):
    raise VlaxError(f"config file {path} has no get_config() function")
  config = module.get_config(arg) if arg else module.get_config()
  if not isinstance(config, ml_collections.ConfigDict):
    raise VlaxError(f"get_config() in {path} must return an ml_collections.ConfigDict")
  return config


def _parse_value(key: str, text: str, current: Any) -> Any:
  """Parses `text` into the type of `current` (the value the config holds now)."""
  if isinstance(current, bool):
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
      return True
    if lowered in ("0", "false", "no", "off"):
      return False
    raise VlaxError(f"--config.{key}: expected a boolean, got {text!r}")
  if isinstance(current, str) or current is None:
    if current is None:
      try:
        return ast.literal_eval(text)
      except (ValueError, SyntaxError):
        return text
    return text
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError) as e:
    raise VlaxError(f"--config.{key}: cannot parse {text!r} as {type(current).__name__}") from e
  if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  if isinstance(current, (tuple, list)) and isinstance(value, (tuple, list)):
    return type(current)(value)
  if isinstance(current, (int, float)) and not isinstance(value, type(current)):
    raise VlaxError(f"--config.{key}: expected {type(current).__name__}, got {text!r}")
  return value


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: Sequence[str]) -> ml_collections.ConfigDict:
  """Applies `KEY=VALUE` strings (dotted keys) to `config` in place; returns it."""
  for item in overrides:
    key, sep, text = item.partition("=")
    if not sep:
      raise VlaxError(f"--config.{key}: expected --config.{key}=VALUE")
    node = config
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
      if part not in node:
        raise VlaxError(f"--config.{key}: unknown key {'.'.join(parts[:i + 1])!r}")
      node = node[part]
      if not isinstance(node, (ml_collections.ConfigDict, dict)):
        raise VlaxError(f"--config.{key}: {'.'.join(parts[:i + 1])!r} is not a group")
    leaf = parts[-1]
    if leaf not in node:
      raise VlaxError(f"--config.{key}: unknown key {key!r}")
    current = node[leaf]
    if isinstance(current, (ml_collections.ConfigDict, dict)):
      value = ast.literal_eval(text)
      if not isinstance(value, dict):
        raise VlaxError(f"--config.{key}: expected a dict")
      node[leaf] = ml_collections.ConfigDict(value) if isinstance(
          current, ml_collections.ConfigDict) else value
    else:
      node[leaf] = _parse_value(key, text, current)
  return config


def load_config(spec: str | None, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  return apply_overrides(load_config_file(spec), overrides)
