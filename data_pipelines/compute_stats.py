"""Computes (and caches) the normalization statistics of registered datasets.

  python data_pipelines/compute_stats.py --dataset bridge_dataset,taco_play \
      --data_dir gs://bucket/oxe [--cache_dir DIR] [--out stats.json] [--recompute]

Prints one JSON object {name: statistics}; same as `vlax stats` for several datasets.
"""

from __future__ import annotations

import argparse
import json
import sys


def compute_stats(datasets: list[str], data_dir: str, *, cache_dir: str | None = None,
                  recompute: bool = False, split: str | None = None) -> dict:
  from vlax.data import statistics  # pylint: disable=g-import-not-at-top
  return {name: statistics.get_dataset_statistics(name, data_dir, cache_dir=cache_dir,
                                                  recompute=recompute, split=split)
          for name in datasets}


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--dataset", required=True, help="comma-separated registry names")
  p.add_argument("--data_dir", required=True)
  p.add_argument("--cache_dir", default=None, help="default $VLAX_CACHE_DIR or ~/.cache/vlax")
  p.add_argument("--split", default=None, help="default: each spec's train split")
  p.add_argument("--out", default=None, help="write JSON here instead of stdout")
  p.add_argument("--recompute", action="store_true")
  args = p.parse_args(argv)
  from vlax.errors import VlaxError  # pylint: disable=g-import-not-at-top
  try:
    stats = compute_stats([d for d in args.dataset.split(",") if d], args.data_dir,
                          cache_dir=args.cache_dir, recompute=args.recompute,
                          split=args.split)
  except VlaxError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  text = json.dumps(stats, indent=1)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text + "\n")
  else:
    print(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
