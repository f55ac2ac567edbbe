"""Meta-World scripted-expert demos -> RLDS datasets `metaworld_<task>` (needs `.[sim]`).

  python data_pipelines/make_metaworld_demos.py --tasks mt10 --episodes 40 \\
      --image-size 64 --data-dir ~/vlax_data/metaworld

Tasks: `mt10`, `mt50` or comma-separated names (`drawer-close-v3`, the `-v3` optional).
Each task's expert runs on seeded layouts (training seeds, disjoint from the eval's),
failed episodes are dropped, and front + wrist images are stored as JPEG with the hand
state, the full 39-D state and the 4-D action. Train on them with
`experiments/metaworld_mt10.py` (`--config.data.data_dir=DIR`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from vlax.data import metaworld_demos
from vlax.errors import VlaxError


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--tasks", required=True, help="mt10, mt50 or T1,T2,...")
  p.add_argument("--episodes", type=int, required=True, help="successful episodes per task")
  p.add_argument("--image-size", type=int, default=64)
  p.add_argument("--data-dir", required=True)
  p.add_argument("--seed", type=int, default=0, help="first layout-seed block")
  p.add_argument("--max-steps", type=int, default=None, help="step cap per episode")
  p.add_argument("--action-noise", type=float, default=0.0,
                 help="std of Gaussian noise added to the executed xyz actions (labels stay "
                      "the expert's clean actions; DART-style), e.g. 0.2")
  args = p.parse_args(argv)
  try:
    if args.episodes < 1:
      raise VlaxError(f"--episodes must be >= 1, got {args.episodes}")
    t0 = time.time()
    out = metaworld_demos.write_demos(
        args.data_dir, args.tasks, num_episodes=args.episodes, image_size=args.image_size,
        seed=args.seed, max_steps=args.max_steps, action_noise=args.action_noise,
        log=lambda m: print(m, file=sys.stderr, flush=True))
  except VlaxError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(json.dumps({"datasets": out, "seconds": round(time.time() - t0, 1)}, indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
