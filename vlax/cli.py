"""`vlax <command>`: train, plan, eval, vision-probe, stats, inspect-data,
import-paligemma, import-openpi, export, serve.

Every command reports bad input as one line `error: ...` naming the culprit and exits 2;
`--debug` (or VLAX_DEBUG=1) shows the full traceback instead.

Each subcommand imports its module when it runs, so `vlax --help` answers in a tenth of
a second without loading jax, numpy or TensorFlow (CLI_STARTUP_HEAVY in
tests/unit/test_layering.py holds the measured import times).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from typing import Any, Callable, Sequence

from vlax.errors import VlaxError


def _split_config_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """Separates `--config.KEY=VALUE` (or `--config.KEY VALUE`) from the other arguments."""
  rest, overrides = [], []
  argv = list(argv)
  i = 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith("--config."):
      body = arg[len("--config."):]
      if "=" not in body:
        if i + 1 >= len(argv):
          raise VlaxError(f"{arg}: missing value")
        body = f"{body}={argv[i + 1]}"
        i += 1
      overrides.append(body)
    else:
      rest.append(arg)
    i += 1
  return rest, overrides


def _data_fns(workdir: str):
  """The trainer's data callables, bound to `workdir` (toy data and stats caches live there).

  On resume the checkpoint's fitted action tokenizer is reused, so FAST/quantile bins
  never change under a running model.
  """
  from vlax.checkpoints import format as ckpt_format
  from vlax.data import cotrain

  def settings():
    root = os.path.join(workdir, "checkpoints")
    for step in reversed(ckpt_format.all_steps(root)):  # newest readable (restore walks
      try:                                              # back past unreadable steps too)
        return ckpt_format.read_metadata(root, step).get("action_tokenizer") or None
      except VlaxError:
        continue
    return None

  def train_fn(config, process_index, process_count, start_step):
    return cotrain.make_data_iterator(
        config, process_index=process_index, process_count=process_count,
        start_step=start_step, workdir=workdir, action_tokenizer_settings=settings())

  def eval_fn(config, process_index, process_count):
    it, _ = cotrain.make_data_iterator(
        config, process_index=process_index, process_count=process_count, workdir=workdir,
        train=False, action_tokenizer_settings=settings())
    return it

  return train_fn, eval_fn


def _cmd_train(args: argparse.Namespace, overrides: list[str]) -> None:
  from vlax.config import load_config
  from vlax.training import distributed
  from vlax.training.config import with_defaults
  from vlax.training.config_checks import check_train_config
  config = load_config(args.config, overrides)
  check_train_config(with_defaults(config))  # bad keys before any start-up
  distributed.initialize(
      args.coordinator_address, args.num_processes, args.process_id,
      heartbeat_timeout_s=int(with_defaults(config).distributed.heartbeat_timeout_s))
  from vlax.training.trainer import train
  train_fn, eval_fn = _data_fns(args.workdir)
  web_eval_fn = None
  if int(with_defaults(config).web_eval_every):
    from vlax.evaluation.web_eval import make_web_eval_fn
    web_eval_fn = make_web_eval_fn(with_defaults(config))
  summary = train(config, args.workdir, data_iterator_fn=train_fn,
                  eval_iterator_fn=eval_fn if int(config.get("eval_every", 0)) else None,
                  web_eval_fn=web_eval_fn)
  print(json.dumps({k: summary[k] for k in ("step", "preempted", "resumed_from", "seconds")
                    if k in summary}, default=str))


def _cmd_stats(args: argparse.Namespace, overrides: list[str]) -> None:
  del overrides
  from vlax.data.inspect import compute_and_print_stats
  compute_and_print_stats(args.dataset, args.data_dir, out=args.out)


def _cmd_inspect_data(args: argparse.Namespace, overrides: list[str]) -> None:
  del overrides
  from vlax.data.inspect import inspect_data
  names = [n for n in args.dataset.split(",") if n]
  summary = inspect_data(names, args.data_dir, batch_size=args.batch_size)
  print(json.dumps(summary, indent=2, sort_keys=True))


def _cmd_import_paligemma(args: argparse.Namespace, overrides: list[str]) -> None:
  del overrides
  from vlax.checkpoints.pretrained import main_import
  main_import(args.src, args.out)


def _cmd_import_openpi(args: argparse.Namespace, overrides: list[str]) -> None:
  del overrides
  from vlax.data.openpi_import import main_import_openpi
  main_import_openpi(args)


def _cmd_eval(args: argparse.Namespace, overrides: list[str]) -> None:
  from vlax.evaluation.run import main_eval
  main_eval(args, overrides)


def _cmd_vision_probe(args: argparse.Namespace, overrides: list[str]) -> None:
  del overrides
  # Small closed-form solves: one BLAS thread, not a pool fighting jax for the cores.
  os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
  from vlax.evaluation.vision_probe import run_probe
  run_probe(args.checkpoint, args.data_dir, args.tasks, args.out, step=args.step,
            max_episodes=args.episodes, frame_stride=args.frame_stride,
            heldout_fraction=args.heldout_fraction, seed=args.seed,
            random_baseline=not args.no_random_baseline)


def _cmd_export(args: argparse.Namespace, overrides: list[str]) -> None:
  del overrides
  from vlax.inference.export import main_export
  main_export(args.checkpoint, args.out, step=args.step, merge_lora=not args.keep_lora,
              dtype=args.dtype)


def _cmd_serve(args: argparse.Namespace, overrides: list[str]) -> None:
  del overrides
  if args.protocol == "openpi":
    from vlax.inference.openpi_server import serve_openpi
    serve_openpi(args.checkpoint, host=args.host, port=args.port, step=args.step,
                 dataset=args.dataset, key_map_path=args.key_map,
                 warmup=not args.no_warmup,
                 max_message_bytes=int(args.max_message_mb * (1 << 20)),
                 idle_timeout_s=args.idle_timeout)
    return
  if args.key_map:
    raise VlaxError("--key-map is for --protocol openpi")
  from vlax.inference.server import serve
  serve(args.checkpoint, host=args.host, port=args.port, step=args.step,
        dataset=args.dataset, warmup=not args.no_warmup)


def _cmd_plan(args: argparse.Namespace, overrides: list[str]) -> None:
  # Compile for the TPU topology on this host's CPU: never reach for a local TPU.
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  if not args.sweep:
    if any(v is not None for v in (args.meshes, args.sweep_data, args.sweep_tensor,
                                   args.sweep_batch, args.sweep_remat)):
      raise VlaxError("--meshes / --sweep-* options need --sweep")
    from vlax.training.plan import main_plan
    main_plan(args.config, args.topology, overrides, args.out)
    return
  from vlax.training import plan_sweep
  batches = plan_sweep.parse_sizes(args.sweep_batch, "--sweep-batch")
  remats = ([x.strip() for x in args.sweep_remat.split(",") if x.strip()]
            if args.sweep_remat else None)
  plan_sweep.main_sweep(
      args.config, args.topology, overrides, args.out,
      meshes=plan_sweep.parse_meshes(args.meshes),
      data_sizes=plan_sweep.parse_sizes(args.sweep_data, "--sweep-data"),
      tensor_sizes=plan_sweep.parse_sizes(args.sweep_tensor, "--sweep-tensor"),
      batch_sizes=batches, remat_policies=remats)


def _raw_weights_flag(p: argparse.ArgumentParser) -> None:
  p.add_argument("--raw-weights", action="store_true",
                 help="use the checkpoint's raw params, not its EMA weights (checkpoints "
                      "trained with ema_decay > 0 hold both; default: EMA)")


def _exit_on_sigterm(command: str, out: str | None) -> Any:
  """SIGTERM before a server is up, or during `vlax eval`: one line and a prompt exit.
  os._exit, not an exception: one raised into jax/TF (a GC callback, a tf.data thread)
  was swallowed or crashed the interpreter's teardown. eval first removes OUT.partial
  (the results are staged there), so OUT is left as it was. A serving server replaces
  this handler with its own clean shutdown."""

  def handler(signum, frame):  # pylint: disable=unused-argument
    if command == "serve":
      print("vlax serve: stopped (SIGTERM) before serving", file=sys.stderr, flush=True)
      os._exit(0)  # pylint: disable=protected-access
    mp = sys.modules.get("multiprocessing")  # eval --workers: no orphaned workers
    for child in mp.active_children() if mp is not None else ():
      child.terminate()
    run = sys.modules.get("vlax.evaluation.run")
    if run is not None and out:
      run.StagedOutput(out).abort()
    print(f"error: terminated (SIGTERM); no report written, {out} left as it was",
          file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(143)  # pylint: disable=protected-access

  if threading.current_thread() is not threading.main_thread():
    return None  # (signals reach the main thread only)
  return signal.signal(signal.SIGTERM, handler)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="vlax", description="Vision-language-action policies in JAX.")
  parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
  sub = parser.add_subparsers(dest="command", metavar="COMMAND")
  sub.required = True

  p = sub.add_parser("train", help="train a policy (resumes from WORKDIR/checkpoints)",
                     description="Train. Config keys are overridden with --config.KEY=VALUE.")
  p.add_argument("--config", default=None,
                 help="config file (path.py[:arg]); default: the embedded debug config")
  p.add_argument("--workdir", required=True, help="output directory (local or gs://)")
  p.add_argument("--coordinator_address", default=None, help="HOST:PORT of process 0")
  p.add_argument("--num_processes", type=int, default=None)
  p.add_argument("--process_id", type=int, default=None)
  p.set_defaults(fn=_cmd_train)

  p = sub.add_parser("eval", help="offline action-prediction evaluation (or a toy rollout)")
  p.add_argument("--checkpoint", required=True, help="vlax checkpoint directory")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  p.add_argument("--all-steps", action="store_true",
                 help="--env metaworld: evaluate every kept checkpoint step of the run "
                      "(OUT/step_<N>/, a learning curve in OUT/report.json and "
                      "OUT/metaworld_curve.png)")
  p.add_argument("--steps", default=None,
                 help="--env metaworld: like --all-steps, for these steps only (300,600)")
  p.add_argument("--out", required=True, help="output directory for report.json and plots")
  p.add_argument("--config", default=None,
                 help="config for the eval data (default: the checkpoint's training config)")
  p.add_argument("--env", default=None,
                 help="closed-loop environment: toy_reach or metaworld (needs .[sim])")
  p.add_argument("--episodes", type=int, default=20, help="episodes for --env")
  p.add_argument("--embodiment", default=None,
                 help="toy embodiment for --env (a, b, c; default: every toy dataset)")
  p.add_argument("--execute-steps", type=int, default=None,
                 help="--env: actions of each predicted chunk executed open-loop "
                      "(default: 1 for toy_reach, 4 for metaworld)")
  p.add_argument("--tasks", default=None,
                 help="--env metaworld: mt10, mt50 or T1,T2 (required there)")
  p.add_argument("--temporal-ensemble", type=float, nargs="?", const=0.01, default=None,
                 metavar="M",
                 help="--env metaworld: re-plan every step and execute the average of the "
                      "overlapping chunks' actions for that step, weighted exp(-M * i) with "
                      "i = 0 for the oldest (ACT; M defaults to 0.01)")
  p.add_argument("--max-steps", type=int, default=None,
                 help="--env metaworld: step cap per episode (default 200)")
  p.add_argument("--image-ablation", default=None, choices=["shuffle", "black"],
                 help="--env metaworld: images shuffled across episodes, or black")
  p.add_argument("--proprio-ablation", default=None, choices=["drop"],
                 help="--env metaworld: prompts without proprio (the no-proprio rung of a "
                      "policy trained with data.proprio_dropout)")
  p.add_argument("--layouts", default="eval", choices=["eval", "train"],
                 help="--env metaworld: the eval seeds' layouts, or the demos' own "
                      "(train: success there and not on eval layouts = memorised demos)")
  p.add_argument("--baselines", default="expert,zero,random",
                 help="--env metaworld: baselines on the same seeds ('' for none)")
  p.add_argument("--workers", type=int, default=1,
                 help="--env metaworld: processes the tasks are split over")
  p.add_argument("--seed", type=int, default=0, help="--env: first episode seed")
  p.add_argument("--condition", default=None,
                 help="--env toy_reach: block colours per episode, comma-separated of "
                      "seen, novel_target, novel_distractor, nonsense (same seeds each)")
  p.add_argument("--concept", default=None,
                 help="--env toy_reach --condition: the novel colour (default: the "
                      "checkpoint's data.held_out_concept, else purple)")
  p.add_argument("--max-batches", type=int, default=None, help="limit offline eval batches")
  p.add_argument("--web", action="store_true",
                 help="score held-out web (VQA) data of the checkpoint's web sources: exact "
                      "match and multiple-choice accuracy per question type, with chance")
  p.add_argument("--web-examples", type=int, default=None, metavar="N",
                 help="--web: held-out examples to score (default 600)")
  _raw_weights_flag(p)
  p.set_defaults(fn=_cmd_eval)

  p = sub.add_parser(
      "vision-probe", help="linear probe: object / goal position from the vision tower",
      description="Encode Meta-World demo frames with the checkpoint's vision tower (mean-"
      "pooled per camera), fit ridge regressions to the object, goal and hand positions "
      "(observation/full_state) on some episodes and report R^2 on held-out episodes, "
      "beside the same probe on a randomly initialised tower. Writes OUT/report.json.")
  p.add_argument("--checkpoint", required=True, help="run workdir or checkpoint directory")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  p.add_argument("--data-dir", required=True, help="Meta-World demos (RLDS)")
  p.add_argument("--tasks", required=True, help="T1,T2 (e.g. push,pick-place)")
  p.add_argument("--out", required=True, help="output directory for report.json")
  p.add_argument("--episodes", type=int, default=None,
                 help="read the first N demo episodes per task (default: all)")
  p.add_argument("--frame-stride", type=int, default=2, help="use every k-th frame")
  p.add_argument("--heldout-fraction", type=float, default=0.2,
                 help="fraction of episodes (layouts) held out for the R^2")
  p.add_argument("--seed", type=int, default=0, help="episode split and random tower")
  p.add_argument("--no-random-baseline", action="store_true",
                 help="skip the randomly initialised tower")
  _raw_weights_flag(p)
  p.set_defaults(fn=_cmd_vision_probe)

  p = sub.add_parser("plan", help="compile the train step for a TPU topology (CPU only)",
                     description="Compile the real train step for a TPU slice on this host "
                     "(libtpu's topology description) and print HBM per chip, fits, "
                     "collectives and step-time / MFU estimates as JSON on stdout (a "
                     "summary on stderr). --sweep compiles several meshes and ranks them.")
  p.add_argument("--config", default=None,
                 help="config file (path.py[:arg]); default: the embedded debug config")
  p.add_argument("--topology", required=True,
                 help="Cloud accelerator name (v5p-128, v4-128, v5e-256, v6e-64) or a "
                 "topology (v5p:4x4x4)")
  p.add_argument("--out", default=None, help="also write the plan JSON here")
  p.add_argument("--sweep", action="store_true",
                 help="compile candidate meshes (data x fsdp x tensor) and rank them: a "
                 "table on stderr, every candidate and the chosen one in the JSON")
  p.add_argument("--meshes", default=None,
                 help="--sweep: these meshes only, DATAxFSDPxTENSOR,... (e.g. 1x64x1,4x16x1)")
  p.add_argument("--sweep-data", default=None,
                 help="--sweep: data axis sizes to try (default 1,2,4,8,16; fsdp = the rest)")
  p.add_argument("--sweep-tensor", default=None,
                 help="--sweep: tensor axis sizes to try (default 1,2,4)")
  p.add_argument("--sweep-batch", default=None,
                 help="--sweep: global batch sizes to try (default: the config's)")
  p.add_argument("--sweep-remat", default=None,
                 help="--sweep: remat policies to try, e.g. nothing_saveable,"
                 "dots_with_no_batch_dims_saveable,none (default: the config's)")
  p.set_defaults(fn=_cmd_plan)

  p = sub.add_parser("stats", help="compute (and cache) a dataset's normalization statistics")
  p.add_argument("--dataset", required=True)
  p.add_argument("--data-dir", required=True)
  p.add_argument("--out", default=None, help="write the statistics JSON here")
  p.set_defaults(fn=_cmd_stats)

  p = sub.add_parser("inspect-data", help="print one batch of the robot pipeline as JSON")
  p.add_argument("--dataset", required=True, help="NAME[,NAME...]")
  p.add_argument("--data-dir", required=True)
  p.add_argument("--batch-size", type=int, default=4)
  p.set_defaults(fn=_cmd_inspect_data)

  p = sub.add_parser("import-paligemma",
                     help="convert released PaliGemma weights (HF dir or big_vision .npz)")
  p.add_argument("src", help="HF PaliGemmaForConditionalGeneration directory or .npz")
  p.add_argument("out", help="output vlax checkpoint directory")
  p.set_defaults(fn=_cmd_import_paligemma)

  p = sub.add_parser(
      "import-openpi", help="convert an openpi pi0-FAST / PaliGemma-binning checkpoint",
      description="Convert an openpi checkpoint (SRC/params Orbax tree, SRC/assets/<ID>/"
      "norm_stats.json; local or gs://) into a vlax checkpoint that predicts and "
      "fine-tunes in openpi's token format (data.sequence_format='openpi').")
  p.add_argument("src", help="openpi checkpoint directory (holds params/ and assets/)")
  p.add_argument("out", help="output vlax checkpoint directory")
  p.add_argument("--asset-id", default=None,
                 help="norm stats to use (assets/<ID>; default: the only one there)")
  p.add_argument("--fast-tokenizer", default=None,
                 help="directory (or tokenizer.json) of the physical-intelligence/fast "
                 "processor: FAST actions (pi0-FAST); without it: 256 bins (binning)")
  p.add_argument("--text-tokenizer", default=None,
                 help="PaliGemma's SentencePiece model (default: openpi's cached "
                 "~/.cache/openpi/big_vision/paligemma_tokenizer.model)")
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                 help="parameter dtype written (float32 for fine-tuning)")
  p.add_argument("--norm", default="auto", choices=["auto", "quantile", "zscore"],
                 help="normalization the model was trained with (auto: z-score for "
                 "LIBERO, openpi's released pi0_fast_libero; else quantile)")
  p.add_argument("--chunk-len", type=int, default=None,
                 help="action horizon (default: 10 for FAST, 15 for bins)")
  p.add_argument("--max-len", type=int, default=None,
                 help="token sequence length (default: 250 for FAST, 400 for bins)")
  p.add_argument("--action-dim", type=int, default=None,
                 help="keep the first N action dims of the norm stats (default: all)")
  p.add_argument("--cameras", default=None,
                 help="vlax names of openpi's three camera slots, in its order (default: "
                 "primary,secondary,wrist; LIBERO: primary,wrist,secondary)")
  p.set_defaults(fn=_cmd_import_openpi)

  p = sub.add_parser("export", help="write a self-contained release bundle of a checkpoint")
  p.add_argument("checkpoint")
  p.add_argument("out")
  p.add_argument("--step", type=int, default=None)
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--keep-lora", action="store_true", help="do not merge LoRA adapters")
  _raw_weights_flag(p)
  p.set_defaults(fn=_cmd_export)

  p = sub.add_parser("serve", help="serve a policy over HTTP (JSON) or openpi's websocket "
                     "protocol (localhost by default)")
  p.add_argument("checkpoint")
  p.add_argument("--step", type=int, default=None)
  p.add_argument("--dataset", default=None, help="statistics key (robot) to unnormalize with")
  p.add_argument("--host", default="127.0.0.1")
  p.add_argument("--port", type=int, default=8000)
  p.add_argument("--no-warmup", action="store_true")
  p.add_argument("--protocol", default="http", choices=("http", "openpi"),
                 help="http: vlax's JSON API; openpi: openpi's websocket policy protocol")
  p.add_argument("--key-map", default=None,
                 help="openpi: JSON file mapping client observation keys to cameras, state "
                      "and prompt (one map or {dataset: map}; default: LIBERO's keys)")
  p.add_argument("--max-message-mb", type=float, default=8.0,
                 help="openpi: largest request accepted (MiB)")
  p.add_argument("--idle-timeout", type=float, default=300.0,
                 help="openpi: seconds a connection may wait between requests")
  _raw_weights_flag(p)
  p.set_defaults(fn=_cmd_serve)
  return parser


def _quiet_backends() -> None:
  """Keeps TensorFlow's C++ INFO/WARNING lines out of the terminal (set before TF loads)."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  _quiet_backends()
  debug = "--debug" in argv or os.environ.get("VLAX_DEBUG") == "1"
  try:
    rest, overrides = _split_config_overrides(argv)
    args = build_parser().parse_args(rest)
    if getattr(args, "raw_weights", False):  # read by vlax.checkpoints.weights.load
      os.environ["VLAX_RAW_WEIGHTS"] = "1"
    if overrides and args.command not in ("train", "eval", "plan"):
      raise VlaxError(f"--config.* overrides are only for train/eval/plan, not "
                      f"{args.command!r}")
    fn: Callable[[argparse.Namespace, list[str]], None] = args.fn
    previous = None
    if args.command in ("serve", "eval"):
      previous = _exit_on_sigterm(args.command, getattr(args, "out", None))
    try:
      fn(args, overrides)
    finally:
      if previous is not None:  # cli.main called in-process (tests) leaves no handler
        signal.signal(signal.SIGTERM, previous)
    return 0
  except VlaxError as e:
    if debug:
      raise
    print(f"error: {e}", file=sys.stderr)
    return 2
  except FileNotFoundError as e:
    if debug:
      raise
    print(f"error: file not found: {e.filename or e}", file=sys.stderr)
    return 2
  except OSError as e:  # permission, disk full, not a directory, ...
    if debug:
      raise
    print(f"error: {e.strerror or e}" + (f": {e.filename}" if e.filename else ""),
          file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    return 130


if __name__ == "__main__":
  sys.exit(main())
