"""Training: mesh, train state, optimizer, loss, train loop, checkpointing, logging.

  mesh.py           mesh from config (built by models.sharding.make_mesh); global batch
  distributed.py    jax.distributed start-up (explicit flags, TPU auto, single-process no-op)
  optimizer.py      optax AdamW/Adafactor, schedules, clipping, decay mask, frozen groups
  loss.py           shifted next-token CE on targets; per-source / per-dataset sums
  state.py          TrainState pytree (step, params, opt_state, rng)
  train_step.py     the one jitted train step (+ eval step) with explicit shardings
  checkpointing.py  orbax CheckpointManager: async, atomic, keep-last-K + best, reshard
  logging.py        metrics.jsonl, TensorBoard, optional W&B, progress bar
  config.py         default_train_config(): every key, its one default, documented
  setup.py          ModelSetup: model config, shardings (params, optimizer state), jitted
                    steps, all from abstract shapes (works on a TPU topology's mesh)
  init_from.py      start from weights on disk (config.init_from), keep their opt state
  data_state.py     the input pipeline's position saved with each checkpoint
  saving.py         a run's saves, the divergence verdict, clean-up after a failed save
  preemption.py     SIGTERM -> stop at the next step boundary on every process
  workdir_lock.py   one writer per workdir: WORKDIR/vlax.lock, a lease process 0 renews
  trainer.py        train(config, workdir, data_iterator_fn=...): the loop
  plan.py           `vlax plan`: compile the train step for a TPU topology

Import the submodules directly (this package does not import JAX on its own).
"""
