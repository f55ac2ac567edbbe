"""`vlax eval`: offline action prediction on held-out robot data (and the toy rollout).

The checkpoint is self-contained: its metadata rebuilds the model (`model`), the prompt
format and tokenizers (`text_tokenizer`, `action_tokenizer`), the normalization
statistics and the training config, whose `data` section names the datasets. The
held-out stream is the robot part of that data (each dataset's val split, in order, no
augmentation), normalized with the checkpoint's own statistics. Web examples carry no
actions and are skipped.

Per batch, one jitted function computes
  * teacher-forced action-token accuracy: argmax of the logit at position i-1 against
    token i where `action_token_mask[i]`;
  * greedy action tokens after the prompt (the prefix part of the sequence) with the
    KV-cache `greedy_decode`, for the tokenizer's budget of the largest action dim.
The generated ids are detokenized per example at its dataset's action dim, unnormalized
with that dataset's statistics and compared with the true (continuous) action chunk in
`ActionMetrics`, so the reported error includes the tokenizer's quantization error.

Also usable during training: `make_eval_fn(config, metadata, workdir)` returns
`fn(params, step) -> {"eval/<dataset>/<metric>": float}`.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from vlax.errors import VlaxError
from vlax.models.batch import Batch, ModelInputs

# Metadata entries that define the eval data (vs. "model", which defines the network).
DATA_KEYS = ("text_tokenizer", "action_tokenizer", "statistics", "dataset_names", "config")
PredictFn = Callable[[Any, Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]


# --------------------------------------------------------------------------- loading


def _check_exists(checkpoint: str) -> None:
  if not checkpoint:
    raise VlaxError("--checkpoint is empty")
  if "://" not in checkpoint and not os.path.exists(checkpoint):
    raise VlaxError(f"checkpoint not found: {checkpoint}")


def load_checkpoint(checkpoint: str, step: int | None = None) -> tuple[Any, dict[str, Any]]:
  """(params as numpy, metadata) of a checkpoint; VlaxError naming the path or step."""
  from vlax.checkpoints import format as ckpt_format  # pylint: disable=g-import-not-at-top
  _check_exists(checkpoint)
  params, meta = ckpt_format.load_params(checkpoint, step)
  return params, dict(meta)


def eval_config(metadata: Mapping[str, Any], config: str | None = None,
                overrides: Sequence[str] = ()):
  """The data config of the eval: the checkpoint's training config, or `config`."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from vlax.config import apply_overrides, load_config  # pylint: disable=g-import-not-at-top
  from vlax.data.cotrain import resolve_data_config  # pylint: disable=g-import-not-at-top
  if config:
    return load_config(config, overrides)
  stored = metadata.get("config") or {}
  if not stored:
    raise VlaxError("checkpoint metadata has no training 'config'; pass --config")
  cfg = ml_collections.ConfigDict(dict(stored))
  # Fill missing data keys with their defaults so that any of them can be overridden.
  cfg.data = resolve_data_config(cfg)
  return apply_overrides(cfg, overrides)


def _normalization_mode(name: str, stats: Mapping[str, Any]) -> str:
  from vlax.data.oxe import registry  # pylint: disable=g-import-not-at-top
  return stats.get("normalization_type") or registry.get_spec(name).normalization_type


class EvalData:
  """What the eval needs to know about the robot datasets of a config + checkpoint."""

  def __init__(self, config, metadata: Mapping[str, Any],
               datasets: Sequence[str] | None = None):
    from vlax.data.cotrain import _robot_entries, resolve_data_config  # pylint: disable=g-import-not-at-top
    from vlax.data.oxe import registry  # pylint: disable=g-import-not-at-top
    from vlax.data.sequence import SequenceBuilder  # pylint: disable=g-import-not-at-top
    self.config = config
    self.data = resolve_data_config(config)
    entries = _robot_entries(self.data.robot_datasets)
    if datasets:
      known = [n for n, _ in entries]
      unknown = [n for n in datasets if n not in known]
      if unknown:
        raise VlaxError(f"dataset(s) {unknown} not in the eval config's robot datasets "
                        f"{known}")
      entries = [(n, w) for n, w in entries if n in datasets]
    if not entries:
      raise VlaxError("the eval config has no robot datasets (config.data.robot_datasets "
                      "is empty): nothing to evaluate")
    self.entries = entries
    self.names = [n for n, _ in entries]
    statistics = dict(metadata.get("statistics") or {})
    act = dict(metadata.get("action_tokenizer") or {})
    ckpt_dims = dict(act.get("action_dims") or {})
    self.statistics, self.action_dims, self.modes, self.gripper_dims = {}, {}, {}, {}
    for name in self.names:
      spec = registry.get_spec(name)  # VlaxError for an unregistered dataset
      if name not in statistics:
        raise VlaxError(f"dataset {name!r} has no normalization statistics in the "
                        f"checkpoint (it has: {sorted(statistics)})")
      st = statistics[name]
      dim = int(spec.action_dim)
      if name in ckpt_dims and int(ckpt_dims[name]) != dim:
        raise VlaxError(f"dataset {name!r}: action dim {dim} in the registry but "
                        f"{ckpt_dims[name]} in the checkpoint")
      if len(st["action"]["mean"]) != dim:
        raise VlaxError(f"dataset {name!r}: checkpoint statistics have "
                        f"{len(st['action']['mean'])} action dims, the dataset has {dim}")
      self.statistics[name] = st
      self.action_dims[name] = dim
      self.modes[name] = _normalization_mode(name, st)
      mask = st["action"].get("mask") or [True] * dim
      # Dims kept raw (not normalized) are the binary ones: grippers / flags.
      self.gripper_dims[name] = [i for i, m in enumerate(mask) if not m]
    self.builder = SequenceBuilder.from_metadata(metadata)
    self.chunk_len = int(self.data.chunk_len)
    ckpt_chunk = act.get("chunk_len")
    if ckpt_chunk is not None and int(ckpt_chunk) != self.chunk_len:
      raise VlaxError(f"config.data.chunk_len={self.chunk_len} but the checkpoint was "
                      f"trained with chunk_len={ckpt_chunk}")
    self.max_action_dim = max(self.action_dims.values())
    self.decode_steps = self.builder.max_decode_steps(self.chunk_len, self.max_action_dim)

  def make_metrics(self, max_plot_episodes: int = 3):
    from vlax.evaluation.metrics import ActionMetrics  # pylint: disable=g-import-not-at-top
    return ActionMetrics(self.names, self.action_dims, self.chunk_len,
                         gripper_dims=self.gripper_dims,
                         max_plot_episodes=max_plot_episodes)

  def data_dir(self, workdir: str) -> tuple[str, str | None]:
    """(data_dir, stats cache); toy datasets are (re)generated under workdir/toy_data."""
    d = self.data
    if d.data_dir:
      return d.data_dir, d.stats_cache_dir or None
    from vlax.data.oxe import toy  # pylint: disable=g-import-not-at-top
    if not all(n in toy.TOY_DATASETS for n in self.names):
      raise VlaxError(f"config.data.data_dir is empty but the robot datasets {self.names} "
                      f"are not the built-in toy ones")
    data_dir = os.path.join(workdir, "toy_data")
    # Same generator arguments as training -> the same (deterministic) episodes.
    toy.write_for_data_config(data_dir, d, self.names)
    return data_dir, d.stats_cache_dir or os.path.join(workdir, "cache")

  def batches(self, workdir: str, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Held-out robot batches: the `Batch` keys + action, action_pad_mask, episode, timestep.

    The last batch is padded to `batch_size` (one compiled shape); `valid` marks real
    rows. `episode` / `timestep` are recovered from the in-order stream (an episode
    ends at the frame whose chunk has a single valid step).
    """
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from vlax.data import robot as robot_lib  # pylint: disable=g-import-not-at-top
    from vlax.data.sequence import filter_flagged, numpy_iterator  # pylint: disable=g-import-not-at-top
    d = self.data
    data_dir, stats_cache = self.data_dir(workdir)
    frames, _ = robot_lib.make_robot_dataset(
        self.entries, data_dir, image_size=int(d.image_size), cameras=tuple(d.cameras),
        chunk_len=self.chunk_len, history=int(d.history), train=False, augment=False,
        seed=0, stats_cache_dir=stats_cache, statistics=self.statistics,
        process_index=0, process_count=1, max_action_dim=self.max_action_dim,
        progress=False)
    builder = self.builder

    def example(frame):
      out, keep = builder.robot_example(frame)
      out.update(action=tf.cast(frame["action"], tf.float32),
                 action_pad_mask=tf.cast(frame["action_pad_mask"], tf.bool))
      return out, keep

    ds = filter_flagged(frames.map(example, num_parallel_calls=tf.data.AUTOTUNE,
                                   deterministic=True))
    ds = ds.batch(batch_size).prefetch(2)
    episode = np.zeros(len(self.names), np.int64)
    step = np.zeros(len(self.names), np.int64)
    for batch in numpy_iterator(ds):
      n = len(batch["tokens"])
      ep_ids, ts = np.zeros(n, np.int64), np.zeros(n, np.int64)
      valid_steps = batch["action_pad_mask"].any(-1).sum(-1)  # [B]
      for j, di in enumerate(batch["dataset_index"]):
        ep_ids[j] = episode[di] * len(self.names) + di
        ts[j] = step[di]
        step[di] += 1
        if (self.chunk_len > 1 and valid_steps[j] <= 1) or step[di] >= 1000:
          episode[di] += 1
          step[di] = 0
      batch = dict(batch, episode=ep_ids, timestep=ts, valid=np.ones(n, bool))
      if n < batch_size:
        pad = batch_size - n
        batch = {k: np.concatenate([v, np.repeat(v[-1:], pad, 0)]) for k, v in
                 batch.items()}
        batch["valid"][n:] = False
      yield batch


# --------------------------------------------------------------------------- prediction


@functools.lru_cache(maxsize=8)
def make_predict_fn(model_config, decode_steps: int) -> PredictFn:
  """jitted (params, batch) -> {action_ids [B, S], token_correct [B], token_total [B]}.

  Teacher forcing and greedy decoding in one compiled call per batch shape; cached per
  (model config, decode steps), so periodic evals and repeated calls compile once.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from vlax.models.decoding import greedy_decode  # pylint: disable=g-import-not-at-top
  from vlax.models.vla import VLA  # pylint: disable=g-import-not-at-top
  model = VLA(model_config)

  @jax.jit
  def run(params, inputs, action_mask):
    images, image_mask, tokens = inputs.images, inputs.image_mask, inputs.tokens
    input_mask, prefix_mask = inputs.input_mask.astype(bool), inputs.prefix_mask.astype(bool)
    logits = model.apply({"params": params}, images, image_mask, tokens, input_mask,
                         prefix_mask)
    pred = jnp.argmax(logits[:, :-1], axis=-1).astype(jnp.int32)  # predicts tokens[1:]
    hit = (pred == tokens[:, 1:]) & action_mask[:, 1:]
    correct = jnp.sum(hit, axis=-1)
    total = jnp.sum(action_mask[:, 1:], axis=-1)
    prompt = input_mask & prefix_mask
    ids = greedy_decode(model, params, images, image_mask, jnp.where(prompt, tokens, 0),
                        prompt, prompt, decode_steps)
    return ids, correct, total

  def predict(params, batch):
    b = Batch.from_dict(batch, "eval batch")
    ids, correct, total = run(params, b.inputs, np.asarray(b.action_token_mask, bool))
    ids, correct, total = jax.device_get((ids, correct, total))
    return {"action_ids": ids, "token_correct": correct, "token_total": total}

  return predict


def oracle_predict_fn(eos_id: int, decode_steps: int) -> PredictFn:
  """Predicts the target tokens themselves (tests the driver's wiring: L1 ~ 0, acc 1)."""
  from vlax.data.sequence import target_action_ids  # pylint: disable=g-import-not-at-top

  def predict(params, batch):
    del params
    b = Batch.from_dict(batch, "eval batch")
    ids = np.full((b.size, decode_steps), eos_id, np.int32)
    for i in range(b.size):
      t = target_action_ids(ModelInputs(*(x[i] for x in b.inputs.args())), eos_id)
      ids[i, :len(t)] = t[:decode_steps]
    total = np.asarray(b.action_token_mask).sum(-1)
    return {"action_ids": ids, "token_correct": total, "token_total": total}

  return predict


def _records(data: EvalData, batches: Iterator[Mapping[str, np.ndarray]], params,
             predict_fn: PredictFn) -> Iterator[dict[str, Any]]:
  """Model batches -> `ActionMetrics.update` kwargs (detokenized, unnormalized)."""
  from vlax.data.normalization import unnormalize  # pylint: disable=g-import-not-at-top
  k, a = data.chunk_len, data.max_action_dim
  for batch in batches:
    out = predict_fn(params, batch)
    model_batch = Batch.from_dict(batch, "eval batch")
    keep = np.asarray(batch["valid"]) & (np.asarray(model_batch.source) == 0)
    rows = np.nonzero(keep)[0]
    if not rows.size:
      continue
    ids = np.asarray(out["action_ids"])
    ds_idx = np.asarray(model_batch.dataset_index)[rows]
    true_norm = np.asarray(batch["action"], np.float32)[rows][:, :, :a]
    mask = np.asarray(batch["action_pad_mask"], bool)[rows][:, :, :a]
    pred_norm = np.zeros_like(true_norm)
    pred_robot = np.zeros_like(true_norm)
    true_robot = np.zeros_like(true_norm)
    for j, r in enumerate(rows):
      name = data.names[int(ds_idx[j])]
      dim = data.action_dims[name]
      pred_norm[j, :, :dim] = data.builder.actions_from_tokens(ids[r], dim, k)
    for i, name in enumerate(data.names):
      sel = ds_idx == i
      if not sel.any():
        continue
      dim, st, mode = data.action_dims[name], data.statistics[name], data.modes[name]
      pred_robot[sel, :, :dim] = unnormalize(pred_norm[sel, :, :dim], st["action"], mode)
      true_robot[sel, :, :dim] = unnormalize(true_norm[sel, :, :dim], st["action"], mode)
    yield {"dataset_index": ds_idx, "pred_norm": pred_norm, "true_norm": true_norm,
           "pred_robot": pred_robot, "true_robot": true_robot, "mask": mask,
           "token_correct": np.asarray(out["token_correct"])[rows],
           "token_total": np.asarray(out["token_total"])[rows],
           "episode_id": np.asarray(batch["episode"])[rows],
           "timestep": np.asarray(batch["timestep"])[rows]}


def _model_config(metadata: Mapping[str, Any], data: EvalData | None = None):
  """The checkpoint's VLAConfig, checked against the vocabulary the eval data needs."""
  from vlax.models.config import VLAConfig  # pylint: disable=g-import-not-at-top
  if "model" not in metadata:
    raise VlaxError("checkpoint metadata has no 'model' entry")
  config = VLAConfig.from_dict(metadata["model"])
  if data is not None:
    need = data.builder.model_vocab_size
    if config.llm.vocab_size < need:
      raise VlaxError(f"model vocab_size {config.llm.vocab_size} is smaller than the eval "
                      f"data's tokenizers need ({need})")
    size = config.vision.image_size
    if int(data.data.image_size) != size:
      raise VlaxError(f"config.data.image_size={data.data.image_size} differs from the "
                      f"model's vision.image_size {size}")
  return config


def _merge_lora(params, metadata: Mapping[str, Any]):
  """LoRA adapters folded into their base weights (the plain model has none)."""
  from vlax.inference.export import merge_lora  # pylint: disable=g-import-not-at-top
  return merge_lora(params, metadata.get("lora"))


def _batch_size(config, batch_size: int | None) -> int:
  bs = int(batch_size or min(int(config.get("batch_size", 16) or 16), 32))
  if bs < 1:
    raise VlaxError(f"eval batch size must be >= 1, got {bs}")
  return bs


def _eval_workdir(checkpoint: str, out: str | None) -> str:
  """Where toy data lives: the training workdir when it is there, else OUT/_eval_data."""
  root = os.path.abspath(checkpoint.rstrip("/"))
  for cand in (os.path.dirname(root), os.path.dirname(os.path.dirname(root))):
    if os.path.isdir(os.path.join(cand, "toy_data")):
      return cand
  return os.path.join(out or ".", "_eval_data")


# --------------------------------------------------------------------------- drivers


def evaluate_offline(checkpoint: str, out: str | None, step: int | None = None,
                     config: str | None = None, overrides: Sequence[str] = (),
                     max_batches: int | None = None, batch_size: int | None = None,
                     datasets: Sequence[str] | None = None,
                     predict_fn: PredictFn | None = None, workdir: str | None = None,
                     data_from: str | None = None,
                     print_fn: Callable[[str], Any] | None = print) -> dict[str, Any]:
  """Offline eval of a checkpoint; writes out/report.json + PNGs; returns the result.

  `predict_fn(params, batch)` replaces the model (tests use `oracle_predict_fn`);
  `workdir` is where toy data is found or generated (default: the training workdir or
  out/_eval_data). `data_from`: another checkpoint whose tokenizers, statistics and
  training config define the eval data (e.g. score an untuned checkpoint on the robot
  that a fine-tuned one was trained on); the model and params stay this checkpoint's.
  """
  from vlax.evaluation.report import run_offline_eval  # pylint: disable=g-import-not-at-top
  from vlax.checkpoints import format as ckpt_format  # pylint: disable=g-import-not-at-top
  _check_exists(checkpoint)
  # Metadata first: a bad config or dataset fails before the (large) params are read.
  meta = ckpt_format.read_metadata(checkpoint, step)
  if data_from:
    _check_exists(data_from)
    other = ckpt_format.read_metadata(data_from)
    meta.update({k: other[k] for k in DATA_KEYS if k in other})
  cfg = eval_config(meta, config, overrides)
  data = EvalData(cfg, meta, datasets)
  params = None
  if predict_fn is None:
    import jax  # pylint: disable=g-import-not-at-top
    model_config = _model_config(meta, data)
    params, _ = load_checkpoint(checkpoint, step)
    params = jax.device_put(_merge_lora(params, meta))
    predict_fn = make_predict_fn(model_config, data.decode_steps)
  bs = _batch_size(cfg, batch_size)
  workdir = workdir or _eval_workdir(checkpoint, out)
  records = _records(data, data.batches(workdir, bs), params, predict_fn)
  metadata = {"checkpoint": os.path.abspath(checkpoint) if "://" not in checkpoint
              else checkpoint, "step": int(meta.get("step", -1)),
              "datasets": data.names, "batch_size": bs, "decode_steps": data.decode_steps,
              "max_batches": max_batches, "normalization": data.modes,
              "data_from": data_from}
  return run_offline_eval(records, data.make_metrics(), out_dir=out,
                          max_batches=max_batches, metadata=metadata, print_fn=print_fn)


def make_eval_fn(config, metadata: Mapping[str, Any], workdir: str,
                 out_dir: str | None = None, max_batches: int | None = 10,
                 batch_size: int | None = None, prefix: str = "eval",
                 print_fn: Callable[[str], Any] | None = None
                 ) -> Callable[[Any, int], dict[str, float]]:
  """Periodic offline eval for the training loop: `fn(params, step) -> scalars`.

  config: the training ConfigDict; metadata: the checkpoint metadata the trainer writes
  (needs model, text_tokenizer, action_tokenizer, statistics). The predict function is
  compiled once; each call re-reads the first `max_batches` held-out batches. With
  `out_dir`, the report of each call goes to out_dir/step_<step>/. Single-process only
  (host numpy batches; params may be sharded on the local devices).
  """
  from vlax.evaluation.metrics import summary_scalars  # pylint: disable=g-import-not-at-top
  from vlax.evaluation.report import run_offline_eval  # pylint: disable=g-import-not-at-top
  data = EvalData(config, metadata)
  predict_fn = make_predict_fn(_model_config(metadata, data), data.decode_steps)
  bs = _batch_size(config, batch_size)
  metrics = data.make_metrics()

  def eval_fn(params, step: int) -> dict[str, float]:
    params = _merge_lora(params, metadata)
    metrics.reset()
    out = os.path.join(out_dir, f"step_{int(step)}") if out_dir else None
    result = run_offline_eval(_records(data, data.batches(workdir, bs), params, predict_fn),
                              metrics, out_dir=out, max_batches=max_batches,
                              metadata={"step": int(step)}, print_fn=print_fn)
    return summary_scalars(result, prefix=prefix)

  return eval_fn


def main_eval(args, overrides: Sequence[str] = ()) -> dict[str, Any]:
  """`vlax eval` entry point (args: checkpoint, step, out, config, env, episodes,
  max_batches)."""
  env = getattr(args, "env", None)
  if env == "metaworld":
    from vlax.evaluation.metaworld_eval import evaluate_metaworld  # pylint: disable=g-import-not-at-top
    if overrides or getattr(args, "config", None):
      raise VlaxError("--config and --config.* are for the offline eval, not for --env")
    return evaluate_metaworld(
        args.checkpoint, args.out, _metaworld_tasks(args), episodes=int(args.episodes or 20),
        step=args.step, seed=int(getattr(args, "seed", None) or 0),
        execute_steps=getattr(args, "execute_steps", None),
        max_steps=int(getattr(args, "max_steps", None) or 200),
        image_ablation=getattr(args, "image_ablation", None),
        baselines=[b for b in getattr(args, "baselines", "expert,zero,random").split(",")
                   if b.strip()],
        workers=int(getattr(args, "workers", None) or 1))
  if env:
    from vlax.evaluation.rollout import evaluate_rollout  # pylint: disable=g-import-not-at-top
    if (overrides or getattr(args, "max_batches", None) is not None
        or getattr(args, "config", None)):
      raise VlaxError("--max-batches, --config and --config.* are for the offline eval, "
                      "not for --env")
    return evaluate_rollout(args.checkpoint, args.out, env_name=env,
                            episodes=int(args.episodes or 20), step=args.step,
                            embodiment=getattr(args, "embodiment", None),
                            execute_steps=int(getattr(args, "execute_steps", None) or 1),
                            seed=int(getattr(args, "seed", None) or 0))
  return evaluate_offline(args.checkpoint, args.out, step=args.step, config=args.config,
                          overrides=overrides, max_batches=args.max_batches)


def _metaworld_tasks(args) -> str:
  if getattr(args, "tasks", None):
    return args.tasks
  from vlax.data.oxe import metaworld  # pylint: disable=g-import-not-at-top
  raise VlaxError(f"--env metaworld needs --tasks (mt10, mt50 or names such as "
                  f"{metaworld.MT10[0]})")
