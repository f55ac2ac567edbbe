"""Training: mesh, train state, optimizer, loss, train loop, checkpointing, logging.

  mesh.py           (data, fsdp, tensor) mesh from config; global batch from per-host data
  distributed.py    jax.distributed start-up (explicit flags, TPU auto, single-process no-op)
  optimizer.py      optax AdamW/Adafactor, schedules, clipping, decay mask, frozen groups
  loss.py           shifted next-token CE on targets; per-source / per-dataset sums
  state.py          TrainState pytree (step, params, opt_state, rng)
  train_step.py     the one jitted train step (+ eval step) with explicit shardings
  checkpointing.py  orbax CheckpointManager: async, atomic, keep-last-K + best, reshard
  logging.py        metrics.jsonl, TensorBoard, optional W&B, progress bar
  trainer.py        train(config, workdir, data_iterator_fn=...) and default_train_config()

Import the submodules directly (this package does not import JAX on its own).
"""
