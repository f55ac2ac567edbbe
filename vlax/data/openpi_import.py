"""`vlax import-openpi SRC OUT`: an openpi pi0-FAST / PaliGemma-binning checkpoint as a
self-contained vlax checkpoint that predicts and fine-tunes in openpi's token format.

The weights come from `vlax.checkpoints.openpi`; this module adds what a checkpoint
needs to be a policy (it sits in the data layer because those settings are the
`SequenceBuilder`'s):

  * text tokenizer: PaliGemma's SentencePiece model (`--text-tokenizer`, else the copy
    openpi downloads to $OPENPI_DATA_HOME or ~/.cache/openpi/big_vision/), embedded;
  * action tokenizer: FAST from the `physical-intelligence/fast` tokenizer.json
    (`--fast-tokenizer`, openpi's constants) or, without it, 256 uniform bins decoded
    at the lower edge (openpi's `k / 256 * 2 - 1`), both at openpi's reversed ids;
  * sequence format "openpi" (`vlax.data.sequence`), chunk length (openpi's configs: 10
    for FAST DROID/LIBERO, 15 for binning DROID) and the camera slots in openpi's order;
  * statistics of the asset id, with openpi's normalization: quantile (unclipped) for
    pi0_fast_base / droid / binning, z-score for the released pi0_fast_libero (`--norm
    auto` picks z-score when the asset id or SRC names libero; openpi issue #849).
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from vlax.actions import BinTokenizer, FASTTokenizer, openpi_action_vocab
from vlax.checkpoints import format as ckpt_format
from vlax.checkpoints import openpi as openpi_ckpt
from vlax.data.sequence import SequenceBuilder, SequenceConfig
from vlax.data.text_tokenizer import TextTokenizer
from vlax.errors import VlaxError

NORM_MODES = {"quantile": "quantile", "zscore": "normal"}
# openpi's camera slots in its (sorted) key order -> vlax camera names.
DROID_CAMERAS = ("primary", "secondary", "wrist")  # base_0_rgb, base_1_rgb, wrist_0_rgb
LIBERO_CAMERAS = ("primary", "wrist", "secondary")  # base_0, left_wrist_0, right_wrist_0


def default_text_tokenizer() -> str | None:
  """Where openpi keeps PaliGemma's tokenizer once downloaded (None if absent)."""
  home = os.environ.get("OPENPI_DATA_HOME") or os.path.join(
      os.path.expanduser("~"), ".cache", "openpi")
  path = os.path.join(home, "big_vision", "paligemma_tokenizer.model")
  return path if os.path.isfile(path) else None


def choose_asset_id(src: str, asset_id: str | None) -> str:
  if asset_id:
    return asset_id
  ids = openpi_ckpt.asset_ids(src)
  if len(ids) == 1:
    return ids[0]
  if not ids:
    raise VlaxError(f"{src} has no assets/<asset_id>/norm_stats.json; a policy needs "
                    f"the robot's statistics (copy them there, then pass --asset-id)")
  raise VlaxError(f"{src} has norm stats for several robots {ids}: choose one with "
                  f"--asset-id")


def choose_norm(norm: str, src: str, asset_id: str) -> str:
  """'quantile' or 'zscore' (auto: z-score for LIBERO, the released pi0_fast_libero)."""
  if norm == "auto":
    names = (asset_id + " " + os.path.basename(os.path.normpath(src))).lower()
    return "zscore" if "libero" in names else "quantile"
  if norm not in NORM_MODES:
    raise VlaxError(f"--norm must be auto, quantile or zscore, got {norm!r}")
  return norm


def import_openpi(src: str, out: str, *, asset_id: str | None = None,
                  fast_tokenizer: str | None = None, text_tokenizer: str | None = None,
                  dtype: str = "float32", norm: str = "auto", chunk_len: int | None = None,
                  max_len: int | None = None, action_dim: int | None = None,
                  cameras: Sequence[str] | None = None, step: int = 0) -> dict[str, Any]:
  """Converts SRC into OUT/<step>; returns a summary dict (what was chosen, and why)."""
  openpi_ckpt.params_dir(src)  # SRC itself first: "not found" before "no norm stats"
  asset_id = choose_asset_id(src, asset_id)
  norm = choose_norm(norm, src, asset_id)
  text_path = text_tokenizer or default_text_tokenizer()
  if not text_path:
    raise VlaxError("PaliGemma's SentencePiece model not found: pass --text-tokenizer "
                    "PATH (paligemma_tokenizer.model; openpi caches it under "
                    "~/.cache/openpi/big_vision/)")
  if step in ckpt_format.all_steps(out):
    raise VlaxError(f"{out} already holds a checkpoint at step {step}")
  # Cheap checks first: tokenizers and statistics before the weights are read.
  text = TextTokenizer(text_path)
  stats = openpi_ckpt.to_vlax_statistics(openpi_ckpt.read_norm_stats(src, asset_id),
                                         NORM_MODES[norm])
  dim = len(stats["action"]["mean"])
  if action_dim is not None:
    if not 1 <= action_dim <= dim:
      raise VlaxError(f"--action-dim {action_dim} not in 1..{dim} (the norm stats' "
                      f"action dims)")
    stats["action"] = {k: v[:action_dim] for k, v in stats["action"].items()}
    dim = action_dim
  if fast_tokenizer:
    tok = FASTTokenizer.from_tokenizer_json(fast_tokenizer)
    kind = "fast"
  else:
    tok = BinTokenizer(num_bins=256, decode_at="lower")
    kind = "bins"
  chunk_len = int(chunk_len or (10 if kind == "fast" else 15))
  max_len = int(max_len or (250 if kind == "fast" else 400))
  cams = tuple(cameras or (LIBERO_CAMERAS if "libero" in asset_id.lower()
                           else DROID_CAMERAS))

  config, params, on_disk = openpi_ckpt.load_params(src, dtype)
  g = config.llm
  vocab = openpi_action_vocab(text.vocab_size, tok.vocab_size, model_vocab_size=g.vocab_size)
  if text.vocab_size > g.vocab_size:
    raise VlaxError(f"text tokenizer {text.name} has {text.vocab_size} ids > the "
                    f"checkpoint's {g.vocab_size} embedding rows: wrong tokenizer?")
  size = config.vision.image_size
  builder = SequenceBuilder(
      SequenceConfig(max_len=max_len, cameras=cams, image_size=(size, size),
                     format="openpi"), text, tok, vocab)
  meta = builder.metadata(dataset_names=[asset_id], chunk_len=chunk_len,
                          statistics={asset_id: stats}, action_dims={asset_id: dim})
  preset = openpi_ckpt.matching_preset(config)
  source = {"kind": "openpi", "path": src, "asset_id": asset_id, "dtype_on_disk": on_disk,
            "preset": preset, "normalization": norm, "action_tokenizer": kind}
  meta.update(model=config.to_dict(), source=source, sequence_format="openpi",
              params_dtype=dtype)
  step_dir = ckpt_format.save_checkpoint(out, step, params, meta)
  return {"step_dir": step_dir, "asset_id": asset_id, "normalization": norm,
          "action_tokenizer": kind, "chunk_len": chunk_len, "action_dim": dim,
          "cameras": list(cams), "preset": preset, "dtype_on_disk": on_disk,
          "dtype": dtype, "config": config}


def main_import_openpi(args: Any) -> None:
  """The CLI: convert, then print one summary line."""
  cams = [c for c in (args.cameras or "").split(",") if c] or None
  r = import_openpi(args.src, args.out, asset_id=args.asset_id,
                    fast_tokenizer=args.fast_tokenizer, text_tokenizer=args.text_tokenizer,
                    dtype=args.dtype, norm=args.norm, chunk_len=args.chunk_len,
                    max_len=args.max_len, action_dim=args.action_dim, cameras=cams)
  g = r["config"].llm
  print(f"imported openpi {args.src} -> {r['step_dir']}: model "
        f"{r['preset'] or 'custom'} (Gemma width {g.width} depth {g.depth}, vocab "
        f"{g.vocab_size}), {r['dtype_on_disk']} on disk -> {r['dtype']}; action tokenizer "
        f"{r['action_tokenizer']}, chunk {r['chunk_len']} x {r['action_dim']}; "
        f"statistics {r['asset_id']!r} ({r['normalization']}); cameras {r['cameras']}; "
        f"sequence format openpi")
