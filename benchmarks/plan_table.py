"""The `vlax plan` table of benchmarks/README.md: configs x TPU topologies, from a CPU host.

  python benchmarks/plan_table.py --out /tmp/plans [--run] \\
      [--rows pretrain_oxe:v5p-128,pretrain_oxe:v4-128,...] [--config.K=V ...]

--run compiles every row that has no `<out>/<config>__<topology>.json` yet, one
`vlax plan` subprocess at a time (each 3B compile takes minutes); without it the table is
only rendered from the JSON files already there. Prints a Markdown table.

  python benchmarks/plan_table.py --sweep SWEEP.json [SWEEP2.json ...]

renders the ranked tables of saved `vlax plan --sweep --out SWEEP.json` results again.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DEFAULT_ROWS = ("pretrain_oxe:v5p-128,pretrain_oxe:v4-128,pretrain_oxe:v5e-256,"
                "pretrain_oxe:v6e-64,cotrain_oxe_web:v5p-128,cotrain_oxe_web:v4-128,"
                "cotrain_oxe_web:v5e-256,cotrain_oxe_web:v6e-64")


def _path(out: str, config: str, topology: str) -> str:
  return os.path.join(out, f"{config}__{topology}.json")


def run_row(out: str, config: str, topology: str, overrides: list[str]) -> None:
  path = _path(out, config, topology)
  cmd = [sys.executable, "-m", "vlax.cli", "plan", "--config",
         os.path.join(REPO, "experiments", f"{config}.py"), "--topology", topology,
         "--out", path, *overrides]
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
  with open(path.replace(".json", ".log"), "w") as log:
    subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log, check=False)


def _gib(x) -> str:
  return f"{x / 2**30:.1f}" if isinstance(x, (int, float)) else "-"


def render(out: str, rows: list[tuple[str, str]]) -> str:
  lines = ["| config | topology (chips) | mesh d/f/t | global batch (per chip) | fits | "
           "HBM/chip GiB (of) | step s (bound) | MFU est. | examples/s | "
           "largest per-chip batch (est.) | compile s |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
  for config, topology in rows:
    path = _path(out, config, topology)
    if not os.path.exists(path):
      lines.append(f"| {config} | {topology} | not run | | | | | | | | |")
      continue
    p = json.load(open(path))
    m = p["mesh"]
    step = p.get("step_time_estimate_s")
    step_text = f"{step:.3f} ({p['bound']})" if step else "-"
    lines.append(
        f"| {config} | {topology} ({p['chips']}) | {m['data']}/{m['fsdp']}/{m['tensor']} | "
        f"{p['global_batch']} ({p['per_chip_batch']:g}) | {'yes' if p['fits'] else 'no'} | "
        f"{_gib(p['hbm_per_chip_bytes']['total'])} ({_gib(p['hbm_capacity_bytes'])}) | "
        f"{step_text} | {p.get('mfu_estimate', '-')} | "
        f"{p.get('examples_per_s_estimate', '-')} | "
        f"{p.get('largest_per_chip_batch_estimate', '-')} | {p['compile_s']} |")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default=None)
  parser.add_argument("--sweep", nargs="+", default=None,
                      help="render these `vlax plan --sweep` JSON files instead")
  parser.add_argument("--rows", default=DEFAULT_ROWS, help="config:topology,...")
  parser.add_argument("--run", action="store_true", help="compile the missing rows")
  args, overrides = parser.parse_known_args()
  if args.sweep:
    from vlax.training import plan_sweep  # pylint: disable=import-outside-toplevel
    print("\n\n".join(plan_sweep.table(json.load(open(p))) for p in args.sweep))
    return
  if not args.out:
    parser.error("--out is required (or --sweep FILE.json)")
  os.makedirs(args.out, exist_ok=True)
  rows = [tuple(r.split(":", 1)) for r in args.rows.split(",") if r]
  if args.run:
    for config, topology in rows:
      if not os.path.exists(_path(args.out, config, topology)):
        run_row(args.out, config, topology, overrides)
  print(render(args.out, rows))


if __name__ == "__main__":
  main()
