"""Writes the debug config's built-in robot data: RLDS datasets toy_reach_a / toy_reach_b.

  python data_pipelines/make_toy_robot_data.py --data_dir /tmp/vlax_toy

Two embodiments of `vlax.envs.toy_env.ToyReachEnv` ("move to the red block"): a planar
3-D action with one camera, and a 4-D action with primary + wrist cameras. Deterministic
in --seed; about a second per 100 episodes of 64x64 images.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from vlax.data.oxe.toy import TOY_DATASETS, write_toy_robot_data


def make_toy_robot_data(data_dir: str, **kwargs) -> dict[str, str]:
  """Importable entry point: same arguments as `vlax.data.oxe.toy.write_toy_robot_data`."""
  return write_toy_robot_data(data_dir, **kwargs)


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--data_dir", required=True, help="output root (local or gs://)")
  p.add_argument("--num_episodes", type=int, default=100, help="episodes per dataset")
  p.add_argument("--episode_len", type=int, default=20)
  p.add_argument("--image_size", type=int, default=64)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--num_shards", type=int, default=2)
  p.add_argument("--datasets", default=",".join(TOY_DATASETS),
                 help="comma-separated subset of " + ",".join(TOY_DATASETS))
  p.add_argument("--overwrite", action="store_true")
  args = p.parse_args(argv)
  start = time.time()
  paths = make_toy_robot_data(
      args.data_dir, num_episodes=args.num_episodes, episode_len=args.episode_len,
      image_size=args.image_size, seed=args.seed, num_shards=args.num_shards,
      datasets=[d for d in args.datasets.split(",") if d], overwrite=args.overwrite)
  print(json.dumps({"datasets": paths, "seconds": round(time.time() - start, 2)}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
