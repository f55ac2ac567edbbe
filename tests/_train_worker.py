"""A training process for the multi-process and SIGTERM tests (run as a subprocess).

python tests/_train_worker.py --workdir DIR [--num_processes 2 --process_id I --port P]
Each process appends its own log lines (every log step, its view of the global metrics)
to DIR/proc<I>.jsonl, and at the end writes DIR/result<I>.json; process 0 also writes
DIR/final_params.npz (gathered from all processes).
"""

import argparse
import json
import os
import sys
import time

p = argparse.ArgumentParser()
p.add_argument("--workdir", required=True)
p.add_argument("--num_steps", type=int, default=6)
p.add_argument("--num_processes", type=int, default=1)
p.add_argument("--process_id", type=int, default=0)
p.add_argument("--port", type=int, default=0)
p.add_argument("--devices", type=int, default=4)
p.add_argument("--mesh", default="1,-1,1")
p.add_argument("--checkpoint_every", type=int, default=3)
p.add_argument("--log_every", type=int, default=1)
p.add_argument("--fixed", action="store_true")
p.add_argument("--step_sleep", type=float, default=0.0)
p.add_argument("--lr", type=float, default=3e-3)
p.add_argument("--heartbeat", type=int, default=None, help="heartbeat timeout (s)")
p.add_argument("--stateful", action="store_true",
               help="use the save_state/restore_state iterator (exact resume)")
p.add_argument("--kill_at_save", type=int, default=0,
               help="SIGKILL this process right after the async save of this step "
                    "started (a host lost mid-save)")
p.add_argument("--kill_process", type=int, default=1, help="which process --kill_at_save kills")
args = p.parse_args()

os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from vlax.training import distributed  # pylint: disable=g-import-not-at-top

distributed.set_cpu_device_count(args.devices)
if args.num_processes > 1:
  distributed.initialize(f"127.0.0.1:{args.port}", args.num_processes, args.process_id,
                         heartbeat_timeout_s=args.heartbeat)

import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

import _train_utils as U  # pylint: disable=g-import-not-at-top
from vlax.training import trainer  # pylint: disable=g-import-not-at-top

data, fsdp, tensor = (int(x) for x in args.mesh.split(","))
config = U.tiny_config(num_steps=args.num_steps, checkpoint_every=args.checkpoint_every,
                       log_every=args.log_every,
                       **{"mesh.data": data, "mesh.fsdp": fsdp, "mesh.tensor": tensor,
                          "optimizer.lr": args.lr})
base_fn = U.synthetic_data_fn(fixed=args.fixed)


class SlowIterator(U.StatefulIterator):

  def __next__(self):
    if args.step_sleep:
      time.sleep(args.step_sleep)
    return super().__next__()


def data_fn(config, process_index, process_count, start_step):
  if args.stateful:
    served = os.path.join(args.workdir, f"served_p{process_index}.txt")
    return SlowIterator(config, process_index, process_count, served), U.metadata()
  it, meta = base_fn(config, process_index, process_count, start_step)

  def slow():
    for b in it:
      if args.step_sleep:
        time.sleep(args.step_sleep)
      yield b

  return slow(), meta


pid = jax.process_index()
if args.kill_at_save and pid == args.kill_process:
  import signal  # pylint: disable=g-import-not-at-top
  from vlax.training import checkpointing  # pylint: disable=g-import-not-at-top
  real_save = checkpointing.Checkpointer.save

  def save_then_die(self, step, *a, **k):
    out = real_save(self, step, *a, **k)
    if step == args.kill_at_save:  # the arrays are being written in the background now
      os.kill(os.getpid(), signal.SIGKILL)
    return out

  checkpointing.Checkpointer.save = save_then_die
log_path = os.path.join(args.workdir, f"proc{pid}.jsonl")
os.makedirs(args.workdir, exist_ok=True)


def on_log(step, metrics):
  with open(log_path, "a") as f:
    f.write(json.dumps({"step": step, "loss": metrics["loss"]}) + "\n")


out = trainer.train(config, args.workdir, data_iterator_fn=data_fn, on_log=on_log)
params = multihost_utils.process_allgather(out["state"].params, tiled=True)
if pid == 0:
  flat = {"/".join(str(k.key) for k in path): np.asarray(x)
          for path, x in jax.tree_util.tree_flatten_with_path(params)[0]}
  np.savez(os.path.join(args.workdir, "final_params.npz"), **flat)
with open(os.path.join(args.workdir, f"result{pid}.json"), "w") as f:
  json.dump({"step": out["step"], "preempted": out["preempted"],
             "resumed_from": out["resumed_from"], "devices": jax.device_count(),
             "processes": jax.process_count()}, f)
print("worker done", pid, out["step"], flush=True)
