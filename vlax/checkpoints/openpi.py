"""Reads openpi's pi0-FAST / PaliGemma-binning checkpoints (params tree, norm stats).

A released openpi checkpoint directory (local or gs://, read through Orbax / etils):

  SRC/params/                      Orbax PyTree saved as {"params": tree}; every leaf may
                                   end in a `value` key (saved from an nnx.State)
  SRC/assets/<asset_id>/norm_stats.json
                                   {"norm_stats": {"state"|"actions": {mean, std, q01,
                                   q99: [per dim]}}}

The tree is big_vision's PaliGemma tree under `PaliGemma/` (`PaliGemma/img/...`,
`PaliGemma/llm/...`, both towers scanned), which is vlax's own parameter tree
(`vlax.checkpoints.big_vision`): the import is a rename-free, shape-checked copy. The
model config is inferred from the shapes (`big_vision.infer_config`); when it equals a
preset (`paligemma_3b` for the released models) that name is reported.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import jax
import ml_dtypes
import numpy as np
from etils import epath

from vlax.checkpoints import big_vision
from vlax.checkpoints.format import short_error, tree_metadata
from vlax.errors import VlaxError
from vlax.models.presets import PRESETS

PREFIX = "PaliGemma"
DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}
# openpi's keys -> vlax's statistics keys.
STATS_KEYS = {"actions": "action", "state": "proprio"}
STATS_FIELDS = ("mean", "std", "q01", "q99")


def _epath(path: str) -> epath.Path:
  path = os.fspath(path)
  return epath.Path(path if "://" in path else os.path.abspath(path))


def params_dir(src: str) -> epath.Path:
  """SRC/params (or SRC itself when it is the params directory)."""
  p = _epath(src)
  if not p.exists():
    raise VlaxError(f"openpi checkpoint not found: {src}")
  if (p / "params").is_dir():
    return p / "params"
  if (p / "_METADATA").exists() or (p / "_CHECKPOINT_METADATA").exists():
    return p
  raise VlaxError(f"{src} is not an openpi checkpoint: no params/ directory")


def _strip_value(flat: dict[str, Any]) -> dict[str, Any]:
  """Drops a trailing `/value` when every leaf has one (state saved from nnx)."""
  if flat and all(k.endswith("/value") for k in flat):
    return {k[:-len("/value")]: v for k, v in flat.items()}
  return flat


def read_params(src: str) -> dict[str, np.ndarray]:
  """The flat ('/'-joined, without `PaliGemma/`) host arrays of SRC/params, on-disk dtype."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = params_dir(src)
  handler = ocp.PyTreeCheckpointHandler()  # the item alone: no step-metadata lookups
  try:
    tree = tree_metadata(handler.metadata(path))
    tree = {k: tree[k] for k in tree}  # a plain dict at the top
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    raw = handler.restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))
  except Exception as e:  # pylint: disable=broad-except
    raise VlaxError(f"cannot read the openpi params at {path}: {short_error(e)}"
                    ) from None
  finally:
    handler.close()
  if not isinstance(raw, Mapping) or "params" not in raw:
    raise VlaxError(f"{path}: expected a tree saved as {{'params': ...}}, got top-level "
                    f"keys {sorted(raw) if isinstance(raw, Mapping) else type(raw)}")
  extra = sorted(set(raw) - {"params"})
  if extra:
    raise VlaxError(f"{path}: unexpected top-level entry {extra[0]!r} (only 'params')")
  flat = _strip_value(big_vision.flatten(raw["params"]))
  out = {}
  for name, x in flat.items():
    if not name.startswith(PREFIX + "/"):
      raise VlaxError(f"{path}: unexpected parameter {name} (outside {PREFIX}/)")
    out[name[len(PREFIX) + 1:]] = np.asarray(x)
  return out


def check_tree(flat: Mapping[str, Any], config, where: str) -> None:
  """One line naming the first missing, misshaped or extra leaf (openpi's names)."""
  expected = big_vision.param_shapes(config)
  for name, shape in expected.items():
    if name not in flat:
      raise VlaxError(f"{where}: missing parameter {PREFIX}/{name} (expected shape "
                      f"{shape})")
    actual = tuple(np.shape(flat[name]))
    if actual != shape:
      raise VlaxError(f"{where}: parameter {PREFIX}/{name} has shape {actual}, expected "
                      f"{shape}")
  extra = sorted(set(flat) - set(expected))
  if extra:
    raise VlaxError(f"{where}: unexpected parameter {PREFIX}/{extra[0]} ({len(extra)} "
                    f"unexpected in all)")


def matching_preset(config) -> str | None:
  """The name of the preset whose towers equal `config`'s (e.g. 'paligemma_3b')."""
  for name, preset in PRESETS.items():
    if preset.vision == config.vision and preset.llm == config.llm:
      return name
  return None


def load_params(src: str, dtype: str = "float32") -> tuple[Any, dict[str, Any], str]:
  """(VLAConfig, nested params in `dtype`, the on-disk dtype) of an openpi checkpoint."""
  if dtype not in DTYPES:
    raise VlaxError(f"--dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
  flat = read_params(src)
  where = f"openpi checkpoint {src}"
  for name, x in flat.items():
    if x.dtype.kind != "f" and x.dtype != ml_dtypes.bfloat16:
      raise VlaxError(f"{where}: parameter {PREFIX}/{name} has non-float dtype {x.dtype}")
  config = big_vision.infer_config(flat, where)
  check_tree(flat, config, where)
  on_disk = sorted({str(x.dtype) for x in flat.values()})
  cast = {k: np.asarray(x).astype(DTYPES[dtype]) for k, x in flat.items()}
  return config, big_vision.unflatten(cast), ",".join(on_disk)


# --- normalization statistics --------------------------------------------------------


def asset_ids(src: str) -> list[str]:
  """The asset ids with a norm_stats.json under SRC/assets (openpi's ids may hold a
  slash, e.g. "physical-intelligence/libero")."""
  found, todo = [], [(_epath(src) / "assets", "")]
  while todo:
    d, rel = todo.pop()
    if not d.is_dir() or rel.count("/") > 3:
      continue
    if rel and (d / "norm_stats.json").exists():
      found.append(rel)
    todo.extend((c, f"{rel}/{c.name}" if rel else c.name) for c in d.iterdir()
                if c.is_dir())
  return sorted(found)


def read_norm_stats(src: str, asset_id: str) -> dict[str, dict[str, list[float]]]:
  """{"actions"|"state": {mean, std, q01, q99}} of SRC/assets/<asset_id>/norm_stats.json."""
  path = _epath(src) / "assets" / asset_id / "norm_stats.json"
  if not path.exists():
    have = asset_ids(src)
    raise VlaxError(f"no norm stats at {path}" + (f"; asset ids here: {have}" if have
                                                  else ""))
  try:
    d = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise VlaxError(f"{path}: not a JSON file ({e})") from None
  stats = d.get("norm_stats", d) if isinstance(d, Mapping) else None
  if not isinstance(stats, Mapping) or "actions" not in stats:
    raise VlaxError(f"{path}: expected {{'norm_stats': {{'actions': ..., 'state': ...}}}}")
  for key, st in stats.items():
    for field in STATS_FIELDS:
      if not isinstance(st, Mapping) or field not in st:
        raise VlaxError(f"{path}: norm_stats[{key!r}] lacks {field!r}")
      v = np.asarray(st[field], np.float64)
      if v.ndim != 1 or not np.all(np.isfinite(v)):
        raise VlaxError(f"{path}: norm_stats[{key!r}][{field!r}] must be a finite list")
  return {k: {f: [float(x) for x in v[f]] for f in STATS_FIELDS} for k, v in
          stats.items()}


def to_vlax_statistics(norm_stats: Mapping[str, Mapping[str, list]], mode: str
                       ) -> dict[str, Any]:
  """openpi norm stats -> one vlax statistics entry (`vlax.data.statistics` layout).

  min/max are not in openpi's file: they are set to q01/q99. `mode` is the
  normalization_type ("quantile" or "normal").
  """
  out: dict[str, Any] = {"normalization_type": mode, "source": "openpi"}
  for key, st in norm_stats.items():
    name = STATS_KEYS.get(key)
    if name is None:
      continue
    dim = len(st["mean"])
    out[name] = {**{f: list(st[f]) for f in STATS_FIELDS}, "min": list(st["q01"]),
                 "max": list(st["q99"]), "mask": [True] * dim}
  if "proprio" not in out:
    out["proprio"] = {f: [] for f in ("mean", "std", "q01", "q99", "min", "max", "mask")}
  return out
