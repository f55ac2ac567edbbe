"""The training loop: `train(config, workdir, data_iterator_fn=...)`.

Same code for a CPU debug run and a TPU pod: build the mesh over every device of every
process, init or restore the sharded state, then run one jitted step per batch. The host
never waits on the device except at log / eval / checkpoint steps (metrics are summed
on device in between).

Where the pieces live:
  config.py      every config key, its one default and meaning (default_train_config)
  setup.py       model config, shardings, optimizer, jitted steps (ModelSetup)
  init_from.py   starting from weights on disk (config.init_from)
  data_state.py  the input pipeline's position saved with each checkpoint
  saving.py      a run's saves, the divergence verdict, clean-up after a failed save
  preemption.py  SIGTERM -> stop at the next step boundary on every process

data_iterator_fn(config, process_index, process_count, start_step)
    -> (iterator, metadata)
  iterator yields this host's numpy batches: dicts of the model-batch keys
  (images, image_mask, tokens, input_mask, prefix_mask, loss_mask, action_token_mask,
  source, dataset_index: the fields of `vlax.models.batch.Batch`, which is accepted too)
  with leading dim batch_size // process_count. It should seed
  its shuffling with (config.seed, start_step, process_index) so a resumed run does not
  replay the same order. metadata: JSON-safe dict stored in every checkpoint, keys
  'statistics', 'text_tokenizer', 'action_tokenizer', 'dataset_names' (list, defines
  loss/<dataset> names and num_datasets) and optionally 'vocab_size' (sets
  model llm.vocab_size unless model.overrides sets it).
  Optional exact resume: an iterator with `save_state(dir)` / `restore_state(dir)` is
  saved and restored with each checkpoint (see data_state.py).
eval_iterator_fn(config, process_index, process_count) -> iterator (same batches), fresh
  per evaluation; or None.
web_eval_fn(params, metadata) -> {"web_eval/...": float}: held-out web (VQA) scores every
  config.web_eval_every steps, run on process 0 only (params gathered to it first when
  they span processes); or None (`vlax.evaluation.web_eval.make_web_eval_fn(config)`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Any, Callable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from vlax.errors import VlaxError
from vlax.models.batch import Batch
from vlax.training import checkpointing
from vlax.training import config_checks
from vlax.training import data_state
from vlax.training import distributed
from vlax.training import init_from as init_from_lib
from vlax.training import logging as logging_lib
from vlax.training import loss as loss_lib
from vlax.training import mesh as mesh_lib
from vlax.training import optimizer as optimizer_lib
from vlax.training import perf as perf_lib
from vlax.training import profiling
from vlax.training import saving
from vlax.training import train_step as step_lib
from vlax.training import workdir_lock
from vlax.training.config import config_to_dict, default_train_config, with_defaults
from vlax.training.preemption import Preemption
from vlax.training.saving import TrainingDivergedError  # raised by train()
from vlax.training.setup import ModelSetup, build_model_config

__all__ = ["train", "default_train_config", "TrainingDivergedError", "ModelSetup",
           "build_model_config", "config_to_dict"]


_acc_jit = jax.jit(step_lib.accumulate)  # adds a step's metric sums to the window's


def train(config: Any, workdir: str, *,
          data_iterator_fn: Callable[..., tuple[Iterator[Mapping[str, np.ndarray]], dict]],
          eval_iterator_fn: Callable[..., Iterator[Mapping[str, np.ndarray]]] | None = None,
          web_eval_fn: Callable[[Any, Mapping], Mapping[str, float]] | None = None,
          mesh: jax.sharding.Mesh | None = None,
          on_log: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, Any]:
  """Trains (or resumes) in `workdir`; returns a summary dict.

  `on_log(step, metrics)` is called on every process at each log step (metrics.jsonl is
  written by process 0 only).
  Returns {'step': last step, 'preempted': bool, 'resumed_from': step or None,
  'metrics': last logged metrics, 'state': the final TrainState, 'seconds': float}.
  Raises TrainingDivergedError on NaN/Inf (nothing is saved for the bad steps; the error names the newest good checkpoint, which a re-run
  resumes from), checkpointing.CheckpointSaveError when a save fails (training stops;
  earlier checkpoints are intact), VlaxError on bad input.
  """
  t_start = time.time()
  preemption = Preemption()  # first, so a SIGTERM during set-up is not fatal
  lock = workdir_lock.WorkdirLock(os.path.abspath(workdir))  # taken in _train
  try:
    return _train(with_defaults(config), workdir, data_iterator_fn, eval_iterator_fn,
                  web_eval_fn, mesh, on_log, preemption, t_start, lock)
  finally:
    lock.release()
    preemption.close()


def _train(config, workdir, data_iterator_fn, eval_iterator_fn, web_eval_fn, mesh, on_log,
           preemption, t_start, lock):
  # Set-up: checks, mesh, WORKDIR/config.json, the checkpoint manager.
  config_checks.check_train_config(config)
  workdir = os.path.abspath(workdir)
  num_steps, batch_size = int(config.num_steps), int(config.batch_size)
  pid, nproc = jax.process_index(), jax.process_count()
  if mesh is None:
    mesh = mesh_lib.mesh_from_config(config.mesh)
  mesh_lib.check_batch_size(batch_size, mesh, int(config.optimizer.grad_accum_steps))
  local_bs = batch_size // nproc
  log_every, ckpt_every = max(1, int(config.log_every)), int(config.checkpoint_every)
  eval_every = int(config.eval_every) if eval_iterator_fn else 0
  web_eval_every = int(config.web_eval_every) if web_eval_fn else 0
  # One writer per workdir (process 0 holds WORKDIR/vlax.lock for the whole run).
  lock.acquire(pid, nproc, prepare=lambda: _make_workdir(workdir))
  if pid == 0:
    _write_config(workdir, config)
  ckpt = checkpointing.Checkpointer(
      os.path.join(workdir, "checkpoints"), keep=int(config.keep_checkpoints),
      keep_best=int(config.keep_best), best_metric=config.best_metric,
      async_save=bool(config.async_checkpointing))
  distributed.watch(ckpt.root)  # a lost process: one line naming the resume checkpoint
  logger = run = None
  profiler = profiling.Profiler(config.profile, workdir, pid)
  try:
    # Data, model and state: resume from the latest checkpoint, else init / init_from.
    run = _start(config, workdir, ckpt, mesh, data_iterator_fn, local_bs)
    logger = _logger(config, workdir, run, ckpt, mesh)
    step, state, setup = run.start_step, run.state, run.setup
    meter = _meter(config, run, mesh, t_start)
    compiled = False
    acc, last_metrics, pending_eval, pending = None, {}, {}, run.first
    # A periodic checkpoint is confirmed (may evict older ones) once the next step's loss
    # is finite; that step is checked (one host sync per checkpoint).
    unconfirmed, preempted = run.resume_step, False
    while step < num_steps:
      # Data: the next batch (the end of the data saves what was trained and stops).
      local, pending = pending, None
      if local is None:
        try:
          with meter.timed("data"):
            local = Batch.from_host(next(run.data_it), local_bs, step)
        except StopIteration:
          _end_of_data(logger, ckpt, run, step, state, acc, last_metrics, workdir)
          break
      # Step: async on device; the host only syncs below, at log/eval/checkpoint steps.
      batch = mesh_lib.global_batch(local, mesh)
      profiler.before_step(step + 1)
      with meter.timed(None if compiled else "compile"):
        state, metrics = setup.step(state, batch)  # the first call compiles
      compiled = True
      step += 1
      profiler.after_step(step, state)
      meter.add("profile", profiler.take_overhead())  # writing the trace: not step time
      acc = metrics if acc is None else _acc_jit(acc, metrics)
      logger.step(step)
      ckpt.poll()  # a save that failed in the background stops the run here (host-only)
      is_last = step == num_steps
      is_log = step % log_every == 0 or is_last
      is_ckpt = (ckpt_every > 0 and step % ckpt_every == 0) or is_last
      is_eval = eval_every > 0 and (step % eval_every == 0 or is_last)
      is_web_eval = web_eval_every > 0 and (step % web_eval_every == 0 or is_last)
      is_probe = unconfirmed is not None and step == unconfirmed + 1
      preempted = preemption.reached(step)
      if not (is_log or is_ckpt or is_eval or is_web_eval or preempted or is_probe):
        continue
      # Divergence: NaN/Inf in this window stops the run, naming the last good checkpoint.
      host = jax.device_get(acc)
      if host["sums"]["nonfinite"] > 0:
        saving.raise_diverged(ckpt, host["sums"], step, unconfirmed if is_probe else None,
                              run.resume_step)
      if is_probe:
        ckpt.confirm(unconfirmed)
        unconfirmed = None
      # Eval and log.
      if is_eval:
        with meter.timed("eval"):
          pending_eval = {**pending_eval, **_evaluate(  # keeps web_eval/ not yet logged
              setup, state.params, eval_iterator_fn, config, run.dataset_names, local_bs)}
        last_metrics.update(pending_eval)
      if is_web_eval:
        with meter.timed("eval"):
          web = _web_evaluate(web_eval_fn, state.params, run.metadata)
        pending_eval = {**pending_eval, **web}
        last_metrics.update(web)
      if is_log:
        m = _log(logger, on_log, host, step, pending_eval, run.dataset_names, meter)
        pending_eval, acc = {}, None
        last_metrics.update(m)
      # Checkpoint (data state + model). No next step confirms the last or a preemption
      # save: the on-device check of this window (loss, gradient and new-param norms
      # finite) is what vouches for it.
      if is_ckpt or preempted:
        best = dict(last_metrics)
        if not is_log:
          best.update(loss_lib.summarize(host["sums"], run.dataset_names))
        final = is_last or preempted
        with meter.timed("checkpoint"):
          saving.save(ckpt, run.data_it, workdir, step, state, run.metadata, best, pid,
                      nproc, save_data_state=bool(config.save_data_state), confirmed=final)
        unconfirmed = None if final else step
      # Preemption: every process agreed on this step; its checkpoint is saved.
      if preempted:
        logger.message(f"preemption: saved checkpoint at step {step}; exiting")
        break
  except BaseException as e:
    distributed.wait_for_peer_verdict(e)  # a lost process: one line and exit, not this
    distributed.unwatch()
    profiler.close()
    try:
      saving.close_after_error(ckpt, e, workdir, pid)
    finally:
      if logger is not None:
        logger.close()
    raise
  profiler.close()
  distributed.unwatch()
  try:
    with meter.timed("checkpoint"):
      saving.close(ckpt, run.data_it, workdir, pid)  # waits for the last save (may raise)
    _goodput(meter, logger, workdir, step)
  finally:
    logger.close()
  return {"step": step, "preempted": preempted, "resumed_from": run.resume_step,
          "metrics": last_metrics, "state": state, "seconds": time.time() - t_start}


@dataclasses.dataclass
class _Run:
  """What set-up hands the loop."""
  setup: ModelSetup
  state: Any
  data_it: Any
  first: Mapping[str, Any]  # the first batch (set-up reads its shapes)
  dataset_names: list[str]
  metadata: dict[str, Any]  # stored in every checkpoint
  resume_step: int | None
  start_step: int
  data_restored: bool
  init_message: str | None


def _start(config, workdir: str, ckpt, mesh, data_iterator_fn, local_bs: int) -> _Run:
  """Opens the data at the resume step, builds the model and restores or inits the state."""
  pid, nproc = jax.process_index(), jax.process_count()
  try:  # steps on disk and none complete: stop (or start over when asked), never silently
    ckpt.check_restorable()
  except checkpointing.NoReadableCheckpointError as e:
    _start_over(config, workdir, ckpt, e)
  resume_step = ckpt.latest_step()
  start_step = resume_step or 0
  if resume_step is None:
    _check_init_from(config)
  data_it, data_meta, data_restored = data_state.open_data(
      data_iterator_fn, config, workdir, resume_step, pid, nproc)
  dataset_names = list(data_meta.get("dataset_names", []))
  num_datasets = max(1, len(dataset_names), int(data_meta.get("num_datasets", 0) or 0))
  first = Batch.from_host(next(data_it), local_bs, start_step)

  model_config = build_model_config(config, data_meta)
  setup = ModelSetup(config, model_config, mesh, first, num_datasets,
                     action_tokenizer=data_meta.get("action_tokenizer"))
  metadata = {
      "model": model_config.to_dict(),
      "text_tokenizer": data_meta.get("text_tokenizer", {}),
      "action_tokenizer": data_meta.get("action_tokenizer", {}),
      "statistics": data_meta.get("statistics", {}),
      "dataset_names": dataset_names,
      "config": config_to_dict(config),
  }
  if setup.lora is not None:
    metadata["lora"] = setup.lora.to_metadata()
  init_message = state = None
  seed, reset_opt = int(config.seed), bool(config.reset_optimizer)
  if resume_step is not None:
    try:
      found, state = ckpt.restore_latest(setup.abstract_state, setup.state_sharding,
                                         restore_opt_state=not reset_opt)
    except checkpointing.NoReadableCheckpointError as e:
      _start_over(config, workdir, ckpt, e)  # raises unless restart_over_unreadable
      found = None
    if found != resume_step:  # walked back past unreadable steps (or started over)
      resume_step, start_step = found, found or 0
      data_it, first, data_restored = _reopen_data(
          data_iterator_fn, config, workdir, found, pid, nproc, local_bs)
    if state is not None and reset_opt:
      state = setup.create_state(state.params, seed, resume_step).replace(
          rng=state.rng, ema_params=state.ema_params)
  if state is None:
    _check_init_from(config)
    init_from = config.init_from
    params = (init_from_lib.load_params(init_from, setup, seed) if init_from
              else setup.init_params(seed))
    state = setup.create_state(params, seed)
    if init_from:
      state, init_message = init_from_lib.with_opt_state(init_from, setup, state, reset_opt)
      init_message = f"initialized from {init_from}; {init_message}"
  return _Run(setup=setup, state=state, data_it=data_it, first=first,
              dataset_names=dataset_names, metadata=metadata, resume_step=resume_step,
              start_step=start_step, data_restored=data_restored,
              init_message=init_message)


def _check_init_from(config) -> None:
  if config.init_from_required and not config.init_from:
    raise VlaxError("config.init_from is required by this config (a fine-tuning "
                    "config): pass --config.init_from=PATH (a vlax checkpoint, an "
                    "export bundle or imported PaliGemma weights)")


def _start_over(config, workdir: str, ckpt, error: checkpointing.NoReadableCheckpointError
                ) -> None:
  """No step restores: raise `error` (nothing moved), unless the user chose
  `restart_over_unreadable`: then every step is set aside as <step>.unreadable and the
  metrics history as metrics.jsonl.<time>.old (kept, never deleted) for a run from 0."""
  if not config.restart_over_unreadable:
    raise error
  moved = ckpt.set_aside_all("unreadable")
  old = logging_lib.set_aside_history(workdir) if jax.process_index() == 0 else None
  if jax.process_index() == 0:
    print(f"warning: restart_over_unreadable: starting from step 0; {len(moved)} "
          f"unreadable step(s) set aside as {ckpt.root}/<step>.unreadable"
          + (f"; metrics history moved to {old}" if old else ""), file=sys.stderr,
          flush=True)


def _logger(config, workdir: str, run: _Run, ckpt, mesh) -> logging_lib.MetricsLogger:
  """The metric sinks, with the run's first messages (resume, init, model size)."""
  logger = logging_lib.MetricsLogger(
      workdir, total_steps=int(config.num_steps), start_step=run.start_step,
      batch_size=int(config.batch_size), tensorboard=bool(config.logging.tensorboard),
      wandb=bool(config.logging.wandb), wandb_project=config.logging.wandb_project,
      progress=bool(config.logging.progress), config=config_to_dict(config))
  if run.resume_step is not None:
    logger.message(f"resumed from {ckpt.root}/{run.resume_step}; input pipeline: "
                   + ("iterator state restored" if run.data_restored else
                      f"re-seeded with start_step={run.start_step}"))
  if run.init_message:
    logger.message(run.init_message)
  setup = run.setup
  n_params = optimizer_lib.count_params(setup.abstract_params)
  n_frozen = optimizer_lib.count_params(setup.abstract_params, setup.frozen)
  logger.message(f"model {config.model.preset}: {n_params:,} params "
                 f"({n_frozen:,} frozen); mesh {dict(mesh.shape)}; "
                 f"{jax.process_count()} process(es); global batch {config.batch_size}")
  return logger


def _log(logger, on_log, host, step: int, pending_eval, dataset_names,
         meter: perf_lib.PerfMeter) -> dict[str, float]:
  """One metrics line: the window's loss sums, the last step's norms, rates, perf/*
  (step time, TFLOP/s, MFU, data wait) and eval."""
  m = loss_lib.summarize(host["sums"], dataset_names)
  m.update({k: float(v) for k, v in host["last"].items() if k != "loss"})
  m.update(logger.rates(step))
  m.update(meter.window(step))
  m.update(pending_eval)
  logger.write(step, m)
  if on_log is not None:
    on_log(step, m)
  return m


def _meter(config, run: _Run, mesh, t_start: float) -> perf_lib.PerfMeter:
  """The run's perf meter: analytic FLOPs per step and the device's peak (a CPU peak is
  measured once, on process 0, before the first step)."""
  flops = perf_lib.train_flops_per_step(run.setup.model.config, run.first,
                                        int(config.batch_size))
  peak = None
  if jax.process_index() == 0:
    peak, _ = perf_lib.device_peak_flops(mesh.devices.flat[0], str(config.model.dtype))
  meter = perf_lib.PerfMeter(flops, peak, mesh.devices.size, run.start_step)
  meter.t_start -= time.time() - t_start  # the wall clock started with train()
  return meter


def _goodput(meter: perf_lib.PerfMeter, logger, workdir: str, step: int) -> None:
  """The goodput summary (process 0): printed, WORKDIR/goodput.json, TensorBoard/W&B."""
  if jax.process_index() != 0:
    return
  s = meter.summary()
  logger.message(perf_lib.format_summary(s))
  with open(os.path.join(workdir, "goodput.json"), "w") as f:
    json.dump(s, f, indent=2)
  logger.summary(step, {f"goodput/{k}": v for k, v in s.items()})


def _end_of_data(logger, ckpt, run: _Run, step: int, state, acc, last_metrics,
                 workdir: str) -> None:
  """The data iterator ended: save the steps trained since the last checkpoint (when
  they are finite; without data state: the stream has nothing left to resume)."""
  logger.message(f"data iterator ended at step {step}")
  if step > run.start_step and step not in ckpt.all_steps():
    host = jax.device_get(acc) if acc is not None else None
    if host is None or host["sums"]["nonfinite"] == 0:
      saving.save(ckpt, run.data_it, workdir, step, state, run.metadata,
                  dict(last_metrics), jax.process_index(), jax.process_count(),
                  save_data_state=False)


def _make_workdir(workdir: str) -> None:
  """Creates WORKDIR: the first write, so an unusable workdir (a file, read-only, no
  space) is a one-line error before any set-up."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise VlaxError(f"workdir {workdir} exists and is not a directory")
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise VlaxError(f"workdir {workdir} is not writable: {e.strerror or e}") from None


def _write_config(workdir: str, config: Any) -> None:
  """Writes WORKDIR/config.json (once the lock is ours)."""
  try:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      json.dump(config_to_dict(config), f, indent=2, sort_keys=True)
  except OSError as e:
    raise VlaxError(f"workdir {workdir} is not writable: {e.strerror or e}") from None


def _reopen_data(data_iterator_fn, config, workdir: str, step: int | None, pid: int,
                 nproc: int, local_bs: int):
  """After restore fell back to an earlier `step` (None: started over): its pipeline and
  first batch."""
  it, _, restored = data_state.open_data(data_iterator_fn, config, workdir, step, pid, nproc)
  first = Batch.from_host(next(it), local_bs, step or 0)
  return it, first, restored


def _web_evaluate(web_eval_fn, params, metadata: Mapping[str, Any]) -> dict[str, float]:
  """web_eval/ metrics, computed on process 0 only (the others return {}): decoding is
  no collective, so its params are first gathered to that host when they span several."""
  if jax.process_count() > 1:
    params = multihost_utils.process_allgather(params)  # every process takes part
  if jax.process_index() != 0:
    return {}
  return {k: float(v) for k, v in web_eval_fn(params, metadata).items()}


def _evaluate(setup: ModelSetup, params, eval_iterator_fn, config, dataset_names,
              local_bs: int) -> dict[str, float]:
  """eval/ metrics: the loss over `config.eval_steps` batches of a fresh eval stream."""
  it = eval_iterator_fn(config, jax.process_index(), jax.process_count())
  acc = None
  for i in range(int(config.eval_steps)):
    try:
      b = next(it)
    except StopIteration:
      break
    gb = mesh_lib.global_batch(Batch.from_host(b, local_bs, -1), setup.mesh)
    sums = setup.evaluate(params, gb)
    acc = sums if acc is None else jax.tree.map(jnp.add, acc, sums)
  if acc is None:
    return {}
  return loss_lib.summarize(jax.device_get(acc), dataset_names, prefix="eval/")

