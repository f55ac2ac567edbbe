"""Where a training config's time goes on this host: the input pipeline vs the jitted step.

  python benchmarks/config_throughput.py --config experiments/metaworld_mt10.py \\
      --config.data.data_dir=/tmp/mw64 [--steps 60] [--json OUT]

On the config's own data and model (any `--config.KEY=VALUE` applies), three timed
windows in this order, each after its own warm-up:
  * pipeline: host batches from the config's training iterator alone
    (`cotrain.make_data_iterator`, what `vlax train` reads), examples/s;
  * step: the jitted train step on one real batch reused, with nothing else running (the
    synthetic-batch reference: compute alone), examples/s;
  * loop: next batch + step, dispatched asynchronously as the trainer's loop does,
    examples/s, and the fraction of the loop's wall time spent waiting for a batch.
`loop_vs_step` = loop / step examples/s: 1.0 is a compute-bound loop; below it, the
pipeline either stalls the step (high data wait) or, on a CPU host, takes a share of the
cores the step computes on (low data wait).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time

import common  # noqa: F401 - puts vlax on sys.path


def _window(n: int, fn) -> float:
  """Seconds for n calls of fn."""
  t = time.perf_counter()
  for _ in range(n):
    fn()
  return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--config", required=True, help="a training config (experiments/*.py)")
  p.add_argument("--steps", type=int, default=60, help="timed batches / steps per window")
  p.add_argument("--warmup", type=int, default=10, help="untimed ones before each window")
  p.add_argument("--json", default=None, help="write the result JSON here")
  args, overrides = p.parse_known_args(argv)
  bad = [o for o in overrides if not o.startswith("--config.")]
  if bad:
    p.error(f"unknown arguments {bad}")

  import jax  # pylint: disable=g-import-not-at-top
  from vlax.config import load_config  # pylint: disable=g-import-not-at-top
  from vlax.data import cotrain  # pylint: disable=g-import-not-at-top
  from vlax.models.batch import Batch  # pylint: disable=g-import-not-at-top
  from vlax.training import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from vlax.training.setup import ModelSetup, build_model_config  # pylint: disable=g-import-not-at-top

  config = load_config(args.config, [o[len("--config."):] for o in overrides])
  bs = int(config.batch_size)
  workdir = tempfile.mkdtemp(prefix="vlax_throughput_")
  it, meta = cotrain.make_data_iterator(config, process_index=0, process_count=1,
                                        workdir=workdir)
  host = lambda: Batch.from_host(next(it), bs, 0)  # noqa: E731

  # 1. The input pipeline alone.
  first = host()
  _window(args.warmup, host)
  pipeline_s = _window(args.steps, host)

  # 2. The jitted step alone, one real batch reused.
  mesh = mesh_lib.mesh_from_config(config.mesh)
  names = list(meta.get("dataset_names", []))
  setup = ModelSetup(config, build_model_config(config, meta), mesh, first,
                     max(1, len(names)), action_tokenizer=meta.get("action_tokenizer"))
  state = setup.create_state(setup.init_params(int(config.seed)), int(config.seed))
  gbatch = mesh_lib.global_batch(first, mesh)
  holder = {"state": state}

  def step_alone():
    holder["state"], m = setup.step(holder["state"], gbatch)
    jax.block_until_ready(m)

  _window(args.warmup, step_alone)
  step_s = _window(args.steps, step_alone)

  # 3. The loop: next batch, async step; one sync at the end (as between log steps).
  waits = [0.0]

  def loop_step():
    t = time.perf_counter()
    b = mesh_lib.global_batch(host(), mesh)
    waits[0] += time.perf_counter() - t
    holder["state"], holder["m"] = setup.step(holder["state"], b)

  _window(args.warmup, loop_step)
  jax.block_until_ready(holder["m"])
  waits[0] = 0.0
  t = time.perf_counter()
  _window(args.steps, loop_step)
  jax.block_until_ready(holder["m"])
  loop_s = time.perf_counter() - t

  n = args.steps * bs
  out = {
      "benchmark": "config_throughput", "config": args.config, "overrides": overrides,
      "batch_size": bs, "steps": args.steps, "backend": jax.default_backend(),
      "cores": common.num_cores(), "load_average": common.load_average(),
      "pipeline_examples_per_s": n / pipeline_s,
      "step_examples_per_s": n / step_s, "step_seconds": step_s / args.steps,
      "loop_examples_per_s": n / loop_s, "loop_steps_per_s": args.steps / loop_s,
      "loop_data_wait_fraction": waits[0] / loop_s,
      "loop_vs_step": step_s / loop_s,
  }
  print(f"{args.config}: batch {bs}; pipeline alone {out['pipeline_examples_per_s']:.0f} "
        f"ex/s; step alone {out['step_examples_per_s']:.1f} ex/s "
        f"({1e3 * out['step_seconds']:.0f} ms); loop {out['loop_examples_per_s']:.1f} ex/s "
        f"({out['loop_steps_per_s']:.2f} steps/s, data wait "
        f"{100 * out['loop_data_wait_fraction']:.1f}%); loop/step {out['loop_vs_step']:.2f}")
  shutil.rmtree(workdir, ignore_errors=True)
  common.write_json(args.json, out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
