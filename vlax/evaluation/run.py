"""`vlax eval`: one entry point for the three evaluations of a checkpoint.

  * no --env: offline action prediction on held-out robot data (`offline`, with the
    held-out stream in `offline_data`): OUT/report.json, PNGs, a table;
  * --env toy_reach: closed-loop rollouts in the toy environment (`rollout`);
  * --env metaworld: closed-loop Meta-World tasks (`metaworld_eval`; needs .[sim]);
  * --web: held-out web (VQA) data of the checkpoint's web sources (`web_eval`): exact
    match and multiple-choice accuracy per question type.

The offline eval's Python API is re-exported here (`evaluate_offline`, `make_eval_fn`,
`EvalData`, ...), so `from vlax.evaluation.run import ...` keeps working. None of these
modules imports TensorFlow when imported: the offline stream loads it only when read,
and the Meta-World eval must never load it (MuJoCo's EGL rendering crashes under it).
"""

from __future__ import annotations

import os
import shutil
from typing import Any, Sequence

from vlax.data.oxe import metaworld
from vlax.errors import VlaxError
from vlax.evaluation.metaworld_curve import evaluate_curve
from vlax.evaluation.metaworld_eval import evaluate_metaworld
from vlax.evaluation.offline import (PredictFn, evaluate_offline, load_checkpoint,
                                     make_eval_fn, make_predict_fn, oracle_predict_fn)
from vlax.evaluation.offline_data import DATA_KEYS, EvalData, eval_config
from vlax.evaluation.rollout import evaluate_rollout
from vlax.evaluation.web_eval import DEFAULT_NUM_EXAMPLES, evaluate_web

__all__ = ["DATA_KEYS", "EvalData", "PredictFn", "eval_config", "evaluate_offline",
           "load_checkpoint", "main_eval", "make_eval_fn", "make_predict_fn",
           "oracle_predict_fn"]


def main_eval(args, overrides: Sequence[str] = ()) -> dict[str, Any]:
  """`vlax eval` entry point (args: checkpoint, step, out, config, env, episodes,
  max_batches). Everything is written to OUT.partial and moved into OUT at the end, so
  an eval that fails or is stopped (SIGTERM) leaves OUT as it was, but for the steps a
  learning curve finished (OUT/step_<N>/ with its report.json), which it keeps: the
  curve run again reads them instead of evaluating them again."""
  if not getattr(args, "out", None):
    return _dispatch(args, overrides)
  out = args.out
  with StagedOutput(out) as tmp:
    args.out = tmp
    try:
      return _dispatch(args, overrides)
    finally:
      args.out = out


class StagedOutput:
  """`with StagedOutput(OUT) as tmp:` a fresh OUT.partial directory to write into; on
  success its entries replace those of OUT, on any exception it is removed. OUT/_eval_data
  (the generated toy-data cache) and a curve's finished steps (`step_<N>/report.json`)
  are carried into it and, on an exception, back; a stale OUT.partial (a run killed
  past this cleanup) gives its finished steps back to OUT before it is replaced."""

  def __init__(self, out: str):
    self.out = os.path.abspath(out.rstrip("/") or out)
    self.tmp = self.out + ".partial"

  def __enter__(self) -> str:
    if os.path.exists(self.out) and not os.path.isdir(self.out):
      raise VlaxError(f"--out {self.out} exists and is not a directory")
    try:
      if os.path.isdir(self.tmp):
        # Left by a run killed past its cleanup (SIGKILL, a machine's end): the curve
        # steps it finished are in there, not in OUT. Take them back before starting over.
        self.abort()
      os.makedirs(self.tmp)
    except OSError as e:
      raise VlaxError(f"cannot create output directory {self.tmp}: "
                      f"{e.strerror or e}") from None
    self._move(self.out, self.tmp, _kept(self.out))
    return self.tmp

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is None:
      os.makedirs(self.out, exist_ok=True)
      self._move(self.tmp, self.out, sorted(os.listdir(self.tmp)))
      shutil.rmtree(self.tmp, ignore_errors=True)
      return
    self.abort()

  def abort(self) -> None:
    """Removes OUT.partial (the toy-data cache goes back into an existing OUT, finished
    curve steps into OUT, made if need be)."""
    keep = _kept(self.tmp)
    if os.path.isdir(self.out) or any(n != _CACHE for n in keep):
      os.makedirs(self.out, exist_ok=True)
      self._move(self.tmp, self.out, keep)
    shutil.rmtree(self.tmp, ignore_errors=True)

  @staticmethod
  def _move(src: str, dst: str, names: Sequence[str]) -> None:
    for name in names:
      a, b = os.path.join(src, name), os.path.join(dst, name)
      if not os.path.lexists(a):
        continue
      if os.path.isdir(b) and not os.path.islink(b):
        shutil.rmtree(b)
      os.replace(a, b)


_CACHE = "_eval_data"


def _kept(directory: str) -> list[str]:
  """What stays across a staged eval: the toy-data cache and finished curve steps."""
  if not os.path.isdir(directory):
    return []
  return [_CACHE, *sorted(n for n in os.listdir(directory) if n.startswith("step_")
                          and os.path.isfile(os.path.join(directory, n, "report.json")))]


def _dispatch(args, overrides: Sequence[str]) -> dict[str, Any]:
  if getattr(args, "web", False):
    return _web(args, overrides)
  if getattr(args, "web_examples", None) is not None:
    raise VlaxError("--web-examples is for --web")
  env = getattr(args, "env", None)
  curve = bool(getattr(args, "all_steps", False)) or getattr(args, "steps", None) is not None
  if curve and env != "metaworld":
    raise VlaxError("--all-steps / --steps are for --env metaworld")
  conditions = [c.strip() for c in (getattr(args, "condition", None) or "").split(",")
                if c.strip()]
  if (conditions or getattr(args, "concept", None)) and env != "toy_reach":
    raise VlaxError("--condition and --concept are for --env toy_reach")
  if env == "metaworld":
    if overrides or getattr(args, "config", None):
      raise VlaxError("--config and --config.* are for the offline eval, not for --env")
    kwargs = dict(
        episodes=int(args.episodes or 20), seed=int(getattr(args, "seed", None) or 0),
        execute_steps=getattr(args, "execute_steps", None),
        max_steps=int(getattr(args, "max_steps", None) or 200),
        image_ablation=getattr(args, "image_ablation", None),
        proprio_ablation=getattr(args, "proprio_ablation", None),
        baselines=[b.strip() for b in getattr(args, "baselines", "expert,zero,random")
                   .split(",") if b.strip()],
        workers=int(getattr(args, "workers", None) or 1),
        temporal_ensemble=getattr(args, "temporal_ensemble", None),
        layouts=getattr(args, "layouts", None) or "eval")
    if curve:
      if args.step is not None:
        raise VlaxError("--step picks one checkpoint; with --all-steps / --steps leave it out")
      if getattr(args, "all_steps", False) and getattr(args, "steps", None) is not None:
        raise VlaxError("give either --all-steps or --steps, not both")
      return evaluate_curve(args.checkpoint, args.out, _metaworld_tasks(args),
                            steps=getattr(args, "steps", None), **kwargs)
    return evaluate_metaworld(args.checkpoint, args.out, _metaworld_tasks(args),
                              step=args.step, **kwargs)
  if getattr(args, "temporal_ensemble", None) is not None:
    raise VlaxError("--temporal-ensemble is for --env metaworld")
  if (getattr(args, "layouts", None) or "eval") != "eval":
    raise VlaxError("--layouts is for --env metaworld")
  if getattr(args, "proprio_ablation", None):
    raise VlaxError("--proprio-ablation is for --env metaworld")
  if env:
    if (overrides or getattr(args, "max_batches", None) is not None
        or getattr(args, "config", None)):
      raise VlaxError("--max-batches, --config and --config.* are for the offline eval, "
                      "not for --env")
    return evaluate_rollout(args.checkpoint, args.out, env_name=env,
                            episodes=int(args.episodes or 20), step=args.step,
                            embodiment=getattr(args, "embodiment", None),
                            execute_steps=int(getattr(args, "execute_steps", None) or 1),
                            seed=int(getattr(args, "seed", None) or 0),
                            conditions=conditions or None,
                            concept=getattr(args, "concept", None))
  return evaluate_offline(args.checkpoint, args.out, step=args.step, config=args.config,
                          overrides=overrides, max_batches=args.max_batches)


def _metaworld_tasks(args) -> str:
  if getattr(args, "tasks", None):
    return args.tasks
  raise VlaxError(f"--env metaworld needs --tasks (mt10, mt50 or names such as "
                  f"{metaworld.MT10[0]})")


def _web(args, overrides: Sequence[str]) -> dict[str, Any]:
  """--web: held-out web (VQA) scores of the checkpoint (`web_eval.evaluate_web`)."""
  given = (("--env", getattr(args, "env", None)),
           ("--config", getattr(args, "config", None)), ("--config.*", overrides),
           ("--max-batches", getattr(args, "max_batches", None)),
           ("--all-steps", getattr(args, "all_steps", False)),
           ("--steps", getattr(args, "steps", None)),
           ("--condition", getattr(args, "condition", None)),
           ("--concept", getattr(args, "concept", None)))
  other = [flag for flag, value in given if value not in (None, False, "", [], ())]
  if other:
    raise VlaxError(f"--web scores held-out web data; {', '.join(other)} "
                    f"{'is' if len(other) == 1 else 'are'} for the other evals")
  n = getattr(args, "web_examples", None)
  return evaluate_web(args.checkpoint, args.out, step=args.step,
                      num_examples=DEFAULT_NUM_EXAMPLES if n is None else int(n))
