"""The training loop: `train(config, workdir, data_iterator_fn=...)`.

Same code for a CPU debug run and a TPU pod: build the mesh over every device of every
process, init or restore the sharded state, then run one jitted step per batch. The host
never waits on the device except at log / eval / checkpoint steps (metrics are summed
on device in between).

Config (`default_train_config()`; experiments/*.py start from it):
  num_steps            optimizer steps to reach (a resumed run continues up to it)
  batch_size           global batch (all hosts, all microbatches)
  seed                 init / data seed
  log_every            steps between metrics.jsonl lines (also the NaN/Inf check)
  checkpoint_every     steps between checkpoints (0 = only at the end / preemption)
  keep_checkpoints     keep the last K checkpoints ...
  keep_best            ... plus the best N by `best_metric` (0 = none)
  best_metric          'eval/loss' (if eval runs) or 'loss'; lower is better
  async_checkpointing  orbax async saves
  init_from            '' (random init) | vlax checkpoint ROOT or ROOT/<step> (a training
                       checkpoint or a `vlax export` bundle; its LoRA adapters, if any,
                       are merged first) | HF PaliGemma directory (vlax.load_pretrained).
                       Only the params are taken: statistics, tokenizers and dataset
                       names come from this run's data. Shapes must match the configured
                       model (VlaxError naming each differing param; the vocabulary size
                       is named on its own).
  init_from_required   fine-tuning configs: refuse to start from random weights
  reset_optimizer      on resume: restore params/step, start a fresh optimizer state.
                       With init_from: False keeps the init checkpoint's optimizer state
                       when it has one (an export bundle / HF weights have none: fresh)
                       and it fits the configured optimizer (else VlaxError); True
                       always starts fresh. The step counter restarts at 0 either way.
  lora.rank            0 = off; > 0: LoRA adapters on lora.targets, everything else
                       frozen (see vlax.models.lora); metadata['lora'] is saved
  lora.alpha           scale = alpha / rank
  lora.targets         regexes on param paths (comma-separated string or tuple)
  lora.trainable_patterns  regexes of non-adapter params that stay trainable with LoRA
  eval_every, eval_steps   validation loss every N steps over M batches (0 = off)
  mesh.data/fsdp/tensor    mesh sizes, -1 = the rest
  model.preset         vlax.models.presets name; model.overrides: nested dict
                       ({'llm': {'vocab_size': 1024}}) or 'llm.vocab_size=1024,...'
  model.dtype          compute dtype ('float32' / 'bfloat16'); params stay float32
  model.remat          rematerialize the scanned blocks
  model.scan_unroll    0 = unroll the layer stacks (CPU/GPU speed), k = scan k at a time
  optimizer.name       'adamw' | 'adafactor' | 'sgd'
  optimizer.lr, warmup_steps, schedule ('cosine'|'linear'|'constant'), end_lr_ratio
  optimizer.weight_decay, no_decay_patterns (regexes; '' = decay everything),
  optimizer.clip_norm (0 = off), grad_accum_steps, freeze_patterns (regexes, e.g. '^img/')
  optimizer.b1, b2, eps
  logging.tensorboard, logging.wandb, logging.wandb_project, logging.progress

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
  Optional exact resume: if the iterator has `save_state(dir)` / `restore_state(dir)`
  (e.g. `tf.train.Checkpoint(iterator=tf_iterator).write/read`), the trainer saves it per
  process at every checkpoint (WORKDIR/data_state/<step>/process_<i>) and restores it
  on resume when the process count is unchanged; otherwise the pipeline is only
  re-seeded with start_step (a fresh order, not the continuation of the old one).
eval_iterator_fn(config, process_index, process_count) -> iterator (same batches), fresh
  per evaluation; or None.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from typing import Any, Callable, Iterator, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vlax.checkpoints import format as ckpt_format
from vlax.checkpoints import weights as weights_lib
from vlax.errors import VlaxError
from vlax.models import lora as lora_lib
from vlax.models.batch import Batch
from vlax.training import checkpointing
from vlax.training import config_checks
from vlax.training import logging as logging_lib
from vlax.training import loss as loss_lib
from vlax.training import mesh as mesh_lib
from vlax.training import optimizer as optimizer_lib
from vlax.training import state as state_lib
from vlax.training import train_step as step_lib


class TrainingDivergedError(VlaxError):
  """The loss or gradient norm became NaN/Inf; the last good checkpoint is intact."""


def default_train_config() -> ml_collections.ConfigDict:
  """Every key train() reads, with defaults (see the module docstring)."""
  c = ml_collections.ConfigDict()
  c.num_steps = 1000
  c.batch_size = 32
  c.seed = 0
  c.log_every = 10
  c.checkpoint_every = 500
  c.keep_checkpoints = 3
  c.keep_best = 0
  c.best_metric = "loss"
  c.async_checkpointing = True
  c.save_data_state = True  # input-pipeline position with each checkpoint (holds the shuffle
  # buffers: ~6 MB for debug, GBs per host with OXE-sized buffers -> off in pretrain_oxe)
  c.init_from = ""
  c.init_from_required = False
  c.reset_optimizer = False
  c.eval_every = 0
  c.eval_steps = 10
  c.lora = ml_collections.ConfigDict({
      "rank": 0, "alpha": 16.0,
      "targets": r"^llm/layers/attn/,^llm/layers/mlp/",
      "trainable_patterns": ""})
  c.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1})
  c.model = ml_collections.ConfigDict({
      "preset": "debug", "overrides": None,
      "dtype": "float32", "remat": False,
      # Layer stacks: 0 = fully unrolled (fastest steps on CPU/GPU, longer compile),
      # k >= 1 = nn.scan unrolled k layers at a time (1 = a rolled loop: fast compile for
      # deep models, the usual choice with remat on TPU). The param tree is the same.
      "scan_unroll": 0})
  c.optimizer = optimizer_lib.default_optimizer_config()  # one default per key, documented there
  c.logging = ml_collections.ConfigDict({
      "tensorboard": True, "wandb": False, "wandb_project": "vlax", "progress": True})
  return c


def config_to_dict(config: Any) -> dict:
  if isinstance(config, ml_collections.ConfigDict):
    return json.loads(config.to_json_best_effort())
  return json.loads(json.dumps(dict(config), default=str))


def _get(c: Any, key: str, default: Any = None) -> Any:
  try:
    v = c[key]
  except (KeyError, AttributeError):
    return default
  return default if v is None else v


def _apply_overrides(d: dict, overrides: Mapping[str, Any], where: str = "model.overrides"):
  for k, v in dict(overrides).items():
    if isinstance(v, (dict, ml_collections.ConfigDict)) and isinstance(d.get(k), dict):
      _apply_overrides(d[k], dict(v), f"{where}.{k}")
      continue
    node, parts = d, k.split(".")
    for p in parts[:-1]:
      if not isinstance(node.get(p), dict):
        raise VlaxError(f"{where}: unknown key {k!r}")
      node = node[p]
    if parts[-1] not in node:
      raise VlaxError(f"{where}: unknown key {k!r}")
    node[parts[-1]] = v


def build_model_config(config: Any, data_metadata: Mapping[str, Any] | None = None):
  """VLAConfig from config.model (preset + dtype/remat + overrides) and the data's vocab."""
  from vlax.models.config import VLAConfig  # pylint: disable=g-import-not-at-top
  from vlax.models.presets import get_preset  # pylint: disable=g-import-not-at-top
  m = config.model
  d = get_preset(_get(m, "preset", "debug")).to_dict()
  d["dtype"] = _get(m, "dtype", d["dtype"])
  d["remat"] = bool(_get(m, "remat", d["remat"]))
  unroll = int(_get(m, "scan_unroll", 0))
  if unroll < 0:
    raise VlaxError(f"model.scan_unroll must be >= 0 (0 = fully unrolled), got {unroll}")
  d["scan_unroll"] = True if unroll == 0 else unroll
  vocab = (data_metadata or {}).get("vocab_size")
  if vocab:
    d["llm"]["vocab_size"] = int(vocab)
  _apply_overrides(d, _parse_overrides(_get(m, "overrides", {}) or {}))
  return VLAConfig.from_dict(d)


def _parse_overrides(o: Any) -> dict:
  """Nested dict ({'llm': {'vocab_size': 1024}}) or a string 'llm.vocab_size=1024,...'
  (the string form is handy on the command line)."""
  if isinstance(o, str):
    import ast  # pylint: disable=g-import-not-at-top
    out = {}
    for item in (x.strip() for x in o.split(",") if x.strip()):
      if "=" not in item:
        raise VlaxError(f"model.overrides: expected KEY=VALUE, got {item!r}")
      k, v = item.split("=", 1)
      try:
        out[k.strip()] = ast.literal_eval(v.strip())
      except (ValueError, SyntaxError):
        out[k.strip()] = v.strip()
    return out
  if isinstance(o, ml_collections.ConfigDict):
    return o.to_dict()
  return dict(o)


def _model_and_rules(model_config):
  from vlax.models import sharding as sharding_lib  # pylint: disable=g-import-not-at-top
  from vlax.models.vla import VLA  # pylint: disable=g-import-not-at-top
  return VLA(model_config), sharding_lib


class ModelSetup:
  """Model, mesh, shardings and the jitted functions built from them."""

  def __init__(self, config: Any, model_config, mesh, example_batch: Batch | Mapping[str, Any],
               num_datasets: int):
    self.config = config
    self.mesh = mesh
    self.model, sharding_lib = _model_and_rules(model_config)
    self.rules = sharding_lib.logical_rules()
    # The data's fields and per-example shapes (a dict from the data iterator is converted).
    self.example = (example_batch if isinstance(example_batch, Batch)
                    else Batch.from_dict(example_batch, "example batch"))
    dummy = self.example.inputs.dummy().args()
    self._dummy = dummy
    # The key is made inside eval_shape: no concrete array under the mesh context, so the
    # mesh may be an abstract TPU topology (`vlax plan`).
    with self.context():
      boxed = jax.eval_shape(lambda: self.model.init(jax.random.key(0), *dummy)["params"])
    # Outside the mesh context: unboxing there would apply eager sharding constraints.
    self.params_sharding = sharding_lib.param_shardings(mesh, boxed)
    self.abstract_params = nn.unbox(boxed)
    self.base_abstract_params = self.abstract_params
    self.lora = lora_lib.config_from(_get(config, "lora", None))
    trainable = None
    if self.lora is not None:
      self.abstract_params = lora_lib.abstract_adapters(self.abstract_params, self.lora)
      self.params_sharding = lora_lib.fill_like(
          self.abstract_params, self.params_sharding, mesh_lib.replicated(mesh))
      keep = optimizer_lib.match_tree(
          self.abstract_params,
          _get(_get(config, "lora", {}), "trainable_patterns", ""),
          "lora.trainable_patterns")
      trainable = jax.tree.map(lambda a, k: bool(a or k),
                               lora_lib.adapter_mask(self.abstract_params), keep)
    num_steps = int(config.num_steps)
    self.tx, self.schedule, self.frozen = optimizer_lib.make_optimizer(
        config.optimizer, self.abstract_params, num_steps, trainable=trainable)
    scale = self.lora.scale if self.lora is not None else None
    self.abstract_state = jax.eval_shape(
        lambda p: state_lib.create(p, self.tx, jax.random.key(0)), self.abstract_params)
    self.state_sharding = step_lib.state_shardings(mesh, self.abstract_state,
                                                   self.params_sharding)
    accum = int(_get(config.optimizer, "grad_accum_steps", 1))
    step_fn = step_lib.make_train_step(self.model, self.tx, self.schedule, self.frozen,
                                       num_datasets=num_datasets, grad_accum_steps=accum,
                                       mesh=mesh, lora_scale=scale,
                                       grad_shardings=self.params_sharding)
    self.train_step = step_lib.jit_train_step(step_fn, mesh, self.state_sharding,
                                              self.example)
    eval_fn = step_lib.make_eval_step(self.model, num_datasets=num_datasets,
                                      lora_scale=scale)
    self.eval_step = step_lib.jit_eval_step(eval_fn, mesh, self.params_sharding,
                                            self.example)

  def context(self):
    """Mesh + logical rules in scope while tracing (the model's activation constraints)."""
    import contextlib  # pylint: disable=g-import-not-at-top
    stack = contextlib.ExitStack()
    stack.enter_context(jax.set_mesh(self.mesh))
    stack.enter_context(nn.logical_axis_rules(self.rules))
    return stack

  def init_params(self, seed: int):
    dummy = self._dummy
    init = jax.jit(lambda r: self.add_adapters(nn.unbox(self.model.init(r, *dummy)["params"]),
                                               seed),
                   out_shardings=self.params_sharding)
    with self.context():
      return init(jax.random.key(seed))

  def add_adapters(self, base_params, seed: int):
    """Base params -> params + fresh LoRA adapters (identity when LoRA is off)."""
    if self.lora is None:
      return base_params
    return lora_lib.init_adapters(base_params, self.lora,
                                  jax.random.fold_in(jax.random.key(seed), 0x10A))

  def create_state(self, params, seed: int, step: int = 0) -> state_lib.TrainState:
    fn = jax.jit(lambda p, r: state_lib.create(p, self.tx, r, step),
                 in_shardings=(self.params_sharding, None), out_shardings=self.state_sharding)
    with self.context():
      return fn(params, jax.random.key_data(jax.random.key(seed + 1)))

  def step(self, state, batch):
    with self.context():
      return self.train_step(state, batch)

  def evaluate(self, params, batch):
    with self.context():
      return self.eval_step(params, batch)


def _load_init_params(init_from: str, setup: ModelSetup, seed: int = 0):
  """Params from a vlax checkpoint / export bundle or an HF PaliGemma directory, on the
  right shardings (+ fresh LoRA adapters when this run uses LoRA)."""
  if not os.path.exists(init_from) and "://" not in init_from:
    raise VlaxError(f"init_from: path does not exist: {init_from}")
  params = weights_lib.load_for(init_from, setup.base_abstract_params,
                                f"init_from {init_from}")
  params = jax.tree.map(np.asarray, setup.add_adapters(params, seed))
  return jax.tree.map(
      lambda x, s: jax.make_array_from_callback(x.shape, s, lambda idx: x[idx]),
      params, setup.params_sharding)


def _is_hf_dir(path: str) -> bool:
  return os.path.exists(os.path.join(path, "config.json")) and not (
      ckpt_format.all_steps(path) or ckpt_format._is_step_dir(path))  # pylint: disable=protected-access


def _init_opt_state(init_from: str, setup: ModelSetup, state, reset: bool):
  """With init_from and reset_optimizer=False: the init checkpoint's optimizer state
  (if it has one) replaces the fresh one. Returns (state, message)."""
  if reset:
    return state, "fresh optimizer state (reset_optimizer=True)"
  if _is_hf_dir(init_from):
    return state, "fresh optimizer state (init_from holds released weights only)"
  root, step = ckpt_format.resolve(init_from)
  d = os.path.join(root, str(step), checkpointing.OPT_STATE)
  if "://" not in d and not os.path.isdir(d):
    return state, (f"fresh optimizer state ({root}/{step} has no optimizer state, e.g. "
                   "an export bundle)")
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  opt_abs = checkpointing._flat_opt_state(checkpointing._abstract(  # pylint: disable=protected-access
      setup.abstract_state.opt_state, setup.state_sharding.opt_state))
  opt_abs["num_leaves"] = jax.ShapeDtypeStruct((), np.int32,
                                               sharding=setup.state_sharding.step)
  try:
    flat = ocp.PyTreeCheckpointer().restore(d, args=ocp.args.PyTreeRestore(
        item=opt_abs, restore_args=ocp.checkpoint_utils.construct_restore_args(opt_abs)))
    opt_state = checkpointing._unflat_opt_state(flat, setup.abstract_state.opt_state)  # pylint: disable=protected-access
  except Exception as e:  # pylint: disable=broad-except
    raise VlaxError(
        f"init_from {init_from}: its optimizer state (step {step}) does not fit this run's "
        f"optimizer (name, freeze_patterns, LoRA or model shapes differ): "
        f"{type(e).__name__}: {str(e)[:300]}. Set reset_optimizer=True to start a fresh "
        "optimizer state from its params") from None
  return state.replace(opt_state=opt_state), (
      f"optimizer state kept from {root}/{step} (reset_optimizer=False)")


class _Preemption:
  """SIGTERM -> stop at the next step boundary, agreed by every process.

  Single process: our own SIGTERM handler sets a flag. Multi-process:
  jax.distributed's preemption notifier catches SIGTERM and
  `multihost_utils.reached_preemption_sync_point(step)` returns True on every process
  at the same step.
  """

  def __init__(self):
    self.flag = False
    self.multi = jax.process_count() > 1
    self._prev = None
    if not self.multi and threading.current_thread() is threading.main_thread():
      self._prev = signal.signal(signal.SIGTERM, self._handler)

  def _handler(self, signum, frame):  # pylint: disable=unused-argument
    self.flag = True

  def reached(self, step: int) -> bool:
    if self.multi:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      try:
        return bool(multihost_utils.reached_preemption_sync_point(step))
      except RuntimeError:
        return False
    return self.flag

  def close(self):
    if self._prev is not None:
      signal.signal(signal.SIGTERM, self._prev)


def _evaluate(setup: ModelSetup, params, eval_iterator_fn, config, dataset_names,
              local_bs: int) -> dict[str, float]:
  it = eval_iterator_fn(config, jax.process_index(), jax.process_count())
  acc = None
  for i in range(int(_get(config, "eval_steps", 10))):
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


_acc_jit = jax.jit(step_lib.accumulate)


def _data_state_dir(workdir: str, step: int, pid: int) -> "epath.Path":
  from etils import epath  # pylint: disable=g-import-not-at-top  (local or gs://)
  return epath.Path(workdir) / "data_state" / str(step) / f"process_{pid}"


def _save_data_state(data_it, workdir: str, step: int, pid: int, nproc: int, ckpt) -> None:
  """If the iterator supports it (`save_state(dir)`), saves its position per process.

  Written before the model checkpoint of the same step, so a finalized checkpoint always
  has its data state; states of steps no longer kept are deleted.
  """
  if not hasattr(data_it, "save_state"):
    return
  d = _data_state_dir(workdir, step, pid)
  d.mkdir(parents=True, exist_ok=True)
  data_it.save_state(os.fspath(d))
  (d / "process_count").write_text(str(nproc))
  _prune_data_state(workdir, set(ckpt.all_steps()) | {step}, pid)


def _prune_data_state(workdir: str, keep: set[int], pid: int) -> None:
  """Deletes this process's data states of steps whose checkpoint is gone."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  root = epath.Path(workdir) / "data_state"
  if not root.is_dir():
    return
  for step_dir in root.iterdir():
    if step_dir.name.isdigit() and int(step_dir.name) not in keep:
      mine = step_dir / f"process_{pid}"
      if mine.exists():
        mine.rmtree()
      try:
        if not any(step_dir.iterdir()):  # the last process to leave removes the step
          step_dir.rmdir()
      except OSError:
        pass


def _restore_data_state(data_it, workdir: str, step: int | None, pid: int,
                        nproc: int) -> bool | None:
  """Restores the iterator position saved with checkpoint `step` (same process count).

  Returns False (the stream is then re-seeded with the resume step) when there is no
  state or the process count changed, None when reading it failed (unreadable, or it
  does not fit the pipeline, e.g. the data config changed: the iterator may be half
  restored, the caller builds a fresh one); the reason is printed, never ignored.
  """
  if step is None or not hasattr(data_it, "restore_state"):
    return False
  d = _data_state_dir(workdir, step, pid)
  try:
    saved_nproc = int((d / "process_count").read_text().strip())
  except (OSError, ValueError):
    return False
  if saved_nproc != nproc:
    print(f"data state of step {step} was written by {saved_nproc} processes, this run has "
          f"{nproc}: the input stream is re-seeded with the resume step instead")
    return False
  try:
    data_it.restore_state(os.fspath(d))
  except Exception as e:  # pylint: disable=broad-except  (truncated, garbage, config change)
    why = e if isinstance(e, VlaxError) else ckpt_format.short_error(e)
    print(f"data state not restored ({why}); the input stream is re-seeded with the "
          "resume step instead")
    return None
  return True


def _write_config(workdir: str, config: Any) -> None:
  """Creates WORKDIR and writes config.json: the first write, so an unusable workdir (a
  file, read-only, no space) is a one-line error before any set-up."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise VlaxError(f"workdir {workdir} exists and is not a directory")
  try:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      json.dump(config_to_dict(config), f, indent=2, sort_keys=True)
  except OSError as e:
    raise VlaxError(f"workdir {workdir} is not writable: {e.strerror or e}") from None


def _open_data(data_iterator_fn, config, workdir: str, step: int | None, pid: int,
               nproc: int):
  """(iterator, metadata, restored): the pipeline for `step`, with its saved position
  when that reads back; a state that fails half-way is dropped with a fresh iterator."""
  it, meta = data_iterator_fn(config, pid, nproc, step or 0)
  restored = _restore_data_state(it, workdir, step, pid, nproc)
  if restored is None:
    it, meta = data_iterator_fn(config, pid, nproc, step or 0)
  return it, dict(meta or {}), bool(restored)


def _reopen_data(data_iterator_fn, config, workdir: str, step: int, pid: int, nproc: int,
                 local_bs: int):
  """After restore fell back to an earlier `step`: its pipeline and first batch."""
  it, _, restored = _open_data(data_iterator_fn, config, workdir, step, pid, nproc)
  first = Batch.from_host(next(it), local_bs, step)
  return it, first, restored


def _save(ckpt, data_it, workdir: str, step: int, state, metadata, metrics, pid: int,
          nproc: int, *, save_data_state: bool, confirmed: bool = True) -> None:
  """Data state first (a finalized checkpoint always has its data state), then the
  async model save. Any write failure -> CheckpointSaveError with its files removed."""
  if save_data_state and hasattr(data_it, "save_state"):
    try:
      _save_data_state(data_it, workdir, step, pid, nproc, ckpt)
    except Exception as e:  # pylint: disable=broad-except  (disk full, permission, ...)
      d = _data_state_dir(workdir, step, pid)
      if d.exists():
        d.rmtree()
      good = ckpt.good_steps()
      raise checkpointing.CheckpointSaveError(
          f"saving the data state of step {step} to {d} failed "
          f"({ckpt_format.short_error(e)}); partial files removed; last good checkpoint: "
          f"{f'{ckpt.root}/{good[-1]}' if good else 'none'}") from None
  ckpt.save(step, state, metadata, metrics=metrics, confirmed=confirmed)


def _diverged(ckpt, sums, step: int, probed: int | None, resume_step: int | None):
  """Raises TrainingDivergedError naming the newest good checkpoint.

  `probed`: the checkpoint saved one step before `step`, whose state the loss of `step`
  just tested. A NaN/Inf loss there makes it suspect: set aside as ROOT/<step>.diverged
  (never resumed from); a finite loss with overflowing new params confirms it."""
  bad_loss = float(sums["nonfinite_loss"]) > 0
  note = ""
  ckpt.wait(prune=False)
  if probed is not None and bad_loss and probed == resume_step:
    note = (f"The first step after resuming from {ckpt.root}/{probed} already has a "
            "NaN/Inf loss: that checkpoint (or the data) is bad. ")
  elif probed is not None and bad_loss:
    moved = ckpt.set_aside(probed, "diverged")
    note = (f"Checkpoint {probed}, saved one step before, gives a NaN/Inf loss: moved "
            f"to {moved}. ")
  elif probed is not None:
    ckpt.confirm(probed)
  good = [s for s in ckpt.good_steps() if not (bad_loss and s == probed)]
  what = ("the loss or gradient norm" if bad_loss else
          "the parameter norm (an update blew the weights up)")
  raise TrainingDivergedError(
      f"training diverged: {what} is NaN/Inf at a step in "
      f"({step - int(sums['steps'])}, {step}]; nothing was saved for it. {note}"
      f"Last good checkpoint: {f'{ckpt.root}/{good[-1]}' if good else 'none'}. "
      "Try a lower optimizer.lr, more warmup or optimizer.clip_norm.")


def _kept_steps(ckpt) -> set[int]:
  try:
    return set(ckpt.all_steps())
  except Exception:  # pylint: disable=broad-except  (a closed manager)
    return set(ckpt_format.all_steps(ckpt.root))


def _close_quietly(ckpt) -> None:
  try:
    ckpt.close(prune=False)
  except Exception:  # pylint: disable=broad-except
    pass


def train(config: Any, workdir: str, *,
          data_iterator_fn: Callable[..., tuple[Iterator[Mapping[str, np.ndarray]], dict]],
          eval_iterator_fn: Callable[..., Iterator[Mapping[str, np.ndarray]]] | None = None,
          mesh: jax.sharding.Mesh | None = None,
          on_log: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, Any]:
  """Trains (or resumes) in `workdir`; returns a summary dict.

  `on_log(step, metrics)` is called on every process at each log step (metrics.jsonl is
  written by process 0 only).
  Returns {'step': last step, 'preempted': bool, 'resumed_from': step or None,
  'metrics': last logged metrics, 'state': the final TrainState, 'seconds': float}. Raises TrainingDivergedError on NaN/Inf (nothing is
  saved for the bad steps; the error names the newest good checkpoint, which a re-run
  resumes from), checkpointing.CheckpointSaveError when a save fails (training stops;
  earlier checkpoints are intact), VlaxError on bad input.
  """
  t_start = time.time()
  preemption = _Preemption()  # first, so a SIGTERM during set-up is not fatal
  try:
    return _train(config, workdir, data_iterator_fn, eval_iterator_fn, mesh, on_log,
                  preemption, t_start)
  finally:
    preemption.close()


def _train(config, workdir, data_iterator_fn, eval_iterator_fn, mesh, on_log, preemption,
           t_start):
  config_checks.check_train_config(config)
  workdir = os.path.abspath(workdir)
  num_steps = int(config.num_steps)
  batch_size = int(config.batch_size)
  accum = int(_get(config.optimizer, "grad_accum_steps", 1))
  pid, nproc = jax.process_index(), jax.process_count()
  if mesh is None:
    mesh = mesh_lib.mesh_from_config(dict(config.mesh))
  mesh_lib.check_batch_size(batch_size, mesh, accum)
  local_bs = batch_size // nproc
  log_every = max(1, int(_get(config, "log_every", 10)))
  ckpt_every = int(_get(config, "checkpoint_every", 0))
  save_data_state = bool(_get(config, "save_data_state", True))
  eval_every = int(_get(config, "eval_every", 0)) if eval_iterator_fn else 0

  if pid == 0:
    _write_config(workdir, config)

  ckpt = checkpointing.Checkpointer(
      os.path.join(workdir, "checkpoints"), keep=int(_get(config, "keep_checkpoints", 3)),
      keep_best=int(_get(config, "keep_best", 0)),
      best_metric=_get(config, "best_metric", "loss"),
      async_save=bool(_get(config, "async_checkpointing", True)))
  logger = None
  data_it = None
  try:
    resume_step = ckpt.latest_step()
    start_step = resume_step or 0
    if (resume_step is None and _get(config, "init_from_required", False)
        and not _get(config, "init_from", "")):
      raise VlaxError("config.init_from is required by this config (a fine-tuning "
                      "config): pass --config.init_from=PATH (a vlax checkpoint, an "
                      "export bundle or imported PaliGemma weights)")

    data_it, data_meta, data_restored = _open_data(data_iterator_fn, config, workdir,
                                                   resume_step, pid, nproc)
    dataset_names = list(data_meta.get("dataset_names", []))
    num_datasets = max(1, len(dataset_names), int(data_meta.get("num_datasets", 0) or 0))
    first = Batch.from_host(next(data_it), local_bs, start_step)

    model_config = build_model_config(config, data_meta)
    setup = ModelSetup(config, model_config, mesh, first, num_datasets)
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
    init_message = None
    seed = int(_get(config, "seed", 0))
    reset_opt = bool(_get(config, "reset_optimizer", False))
    if resume_step is not None:
      found, restored = ckpt.restore_latest(setup.abstract_state, setup.state_sharding,
                                            restore_opt_state=not reset_opt)
      if found != resume_step:  # walked back past unreadable steps: data from `found`
        resume_step = start_step = found
        data_it, first, data_restored = _reopen_data(
            data_iterator_fn, config, workdir, found, pid, nproc, local_bs)
      if reset_opt:
        fresh = setup.create_state(restored.params, seed, resume_step)
        restored = fresh.replace(rng=restored.rng)
      state = restored
    else:
      init_from = _get(config, "init_from", "")
      params = (_load_init_params(init_from, setup, seed) if init_from
                else setup.init_params(seed))
      state = setup.create_state(params, seed)
      if init_from:
        state, init_message = _init_opt_state(init_from, setup, state, reset_opt)
        init_message = f"initialized from {init_from}; {init_message}"

    logger = logging_lib.MetricsLogger(
        workdir, total_steps=num_steps, start_step=start_step, batch_size=batch_size,
        tensorboard=bool(_get(config.logging, "tensorboard", True)),
        wandb=bool(_get(config.logging, "wandb", False)),
        wandb_project=_get(config.logging, "wandb_project", "vlax"),
        progress=bool(_get(config.logging, "progress", True)),
        config=config_to_dict(config))
    if resume_step is not None:
      logger.message(f"resumed from {ckpt.root}/{resume_step}; input pipeline: "
                     + ("iterator state restored" if data_restored else
                        f"re-seeded with start_step={start_step}"))
    if init_message:
      logger.message(init_message)
    n_params = optimizer_lib.count_params(setup.abstract_params)
    n_frozen = optimizer_lib.count_params(setup.abstract_params, setup.frozen)
    logger.message(f"model {_get(config.model, 'preset')}: {n_params:,} params "
                   f"({n_frozen:,} frozen); mesh {dict(mesh.shape)}; "
                   f"{nproc} process(es); global batch {batch_size}")

    step = start_step
    acc = None
    last_metrics: dict[str, Any] = {}
    # A periodic checkpoint is confirmed (may evict older ones) once the next step's loss
    # is finite; that step is checked (one host sync per checkpoint).
    unconfirmed = resume_step
    preempted = False
    pending = first
    pending_eval: dict[str, float] = {}
    while step < num_steps:
      if pending is not None:
        local, pending = pending, None
      else:
        try:
          local = next(data_it)
        except StopIteration:
          logger.message(f"data iterator ended at step {step}")
          if step > start_step and step not in ckpt.all_steps():
            host = jax.device_get(acc) if acc is not None else None
            if host is None or host["sums"]["nonfinite"] == 0:
              _save(ckpt, data_it, workdir, step, state, metadata, dict(last_metrics),
                    pid, nproc, save_data_state=False)
          break
        local = Batch.from_host(local, local_bs, step)
      batch = mesh_lib.global_batch(local, mesh)
      state, metrics = setup.step(state, batch)
      step += 1
      acc = metrics if acc is None else _acc_jit(acc, metrics)
      logger.step(step)
      ckpt.poll()  # a save that failed in the background stops the run here (host-only)

      is_last = step == num_steps
      is_log = step % log_every == 0 or is_last
      is_ckpt = (ckpt_every > 0 and step % ckpt_every == 0) or is_last
      is_eval = eval_every > 0 and (step % eval_every == 0 or is_last)
      is_probe = unconfirmed is not None and step == unconfirmed + 1
      preempted = preemption.reached(step)
      if not (is_log or is_ckpt or is_eval or preempted or is_probe):
        continue
      host = jax.device_get(acc)
      if host["sums"]["nonfinite"] > 0:
        _diverged(ckpt, host["sums"], step, unconfirmed if is_probe else None,
                  resume_step)
      if is_probe:
        ckpt.confirm(unconfirmed)
        unconfirmed = None
      if is_eval:
        pending_eval = _evaluate(setup, state.params, eval_iterator_fn, config,
                                 dataset_names, local_bs)
        last_metrics.update(pending_eval)
      if is_log:
        m = loss_lib.summarize(host["sums"], dataset_names)
        m.update({k: float(v) for k, v in host["last"].items() if k != "loss"})
        m.update(logger.rates(step))
        m.update(pending_eval)
        pending_eval = {}
        last_metrics.update(m)
        logger.write(step, m)
        if on_log is not None:
          on_log(step, m)
        acc = None
      if is_ckpt or preempted:
        best = dict(last_metrics)
        if not is_log:
          best.update(loss_lib.summarize(host["sums"], dataset_names))
        # No next step to confirm the last / preemption save: the on-device check of
        # this window (loss, gradient and new-param norms finite) is what vouches for it.
        final = is_last or preempted
        _save(ckpt, data_it, workdir, step, state, metadata, best, pid, nproc,
              save_data_state=save_data_state, confirmed=final)
        unconfirmed = None if final else step
      if preempted:
        logger.message(f"preemption: saved checkpoint at step {step}; exiting")
        break
  except BaseException as e:
    if isinstance(e, checkpointing.CheckpointSaveError):
      _prune_data_state(workdir, _kept_steps(ckpt), pid)
    _close_quietly(ckpt)  # the error in flight is the one to report
    raise
  finally:
    if logger is not None:
      logger.close()
  try:
    ckpt.close()  # waits for the last save: it may still fail here
  except checkpointing.CheckpointSaveError:
    _prune_data_state(workdir, _kept_steps(ckpt), pid)
    raise
  if hasattr(data_it, "save_state"):
    _prune_data_state(workdir, _kept_steps(ckpt), pid)
  return {"step": step, "preempted": preempted, "resumed_from": resume_step,
          "metrics": last_metrics, "state": state, "seconds": time.time() - t_start}
