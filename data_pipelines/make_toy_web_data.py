"""Writes the toy web vision-language data (coloured shapes + questions) as TFRecords.

The shards use the "tfrecord" web source format ({image: PNG bytes, prompt, answer}), so
a config can point `WebSource(kind="tfrecord", path=OUT/"*.tfrecord")` at them. The debug
config does not need this script: `WebSource(kind="toy")` generates the same examples in
memory. Deterministic in --seed.

Usage: python data_pipelines/make_toy_web_data.py --out DIR [--num 512] [--image_size 64]
"""

from __future__ import annotations

import argparse

from vlax.data import web


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", required=True, help="output directory")
  ap.add_argument("--num", type=int, default=512)
  ap.add_argument("--image_size", type=int, default=64)
  ap.add_argument("--num_shards", type=int, default=2)
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args()
  paths = web.write_toy_tfrecords(args.out, args.num, args.image_size, args.seed,
                                  args.num_shards)
  for p in paths:
    print(p)


if __name__ == "__main__":
  main()
