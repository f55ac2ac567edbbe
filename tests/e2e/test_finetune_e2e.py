"""End to end, the README recipe: pretrain the debug model on toy robots a + b, export it,
fine-tune it on the unseen robot c, evaluate offline and in closed loop.

The issue's "Done when": the fine-tuned policy beats both the untuned pretrained
checkpoint and a from-scratch run with the same number of steps on robot c's held-out
offline metrics, and the toy closed-loop success rate is reported.

Robot c (`toy_reach_c`) has a different action dimension (2: dx, dy, no gripper) than a
(3) and b (4). Pretraining is the debug config (shortened to PRE_STEPS), fine-tuning is
`experiments/finetune_new_robot.py` as shipped (FT_STEPS, also the from-scratch run's).
Asserted on c's held-out episodes: teacher-forced action-token accuracy and greedy-decoded
L1 (normalized), against both; and closed-loop success on c (20 episodes, the same seeds
for every policy) against the from-scratch policy and the zero / random baselines.

The workflow runs in a subprocess (one CPU device, no 8-device test mesh) through the
CLI: `python tests/e2e/test_finetune_e2e.py ROOT [SEED]` runs it by hand and prints the
numbers.
"""

import json
import os
import subprocess
import sys
import time

import pytest

# Manual runs may change the budget: VLAX_E2E_PRE_STEPS=3000 python tests/e2e/test_finetune_e2e.py
# The debug model leaves its proprio-only plateau after ~1000-1500 steps (README "Toy
# closed loop"); 150 steps, as this test once used, transfer only the action format.
# 2000: at 1400 (its CI-budget setting until it became a manual test) seed 0 passed on
# one machine (2026-12-05) and failed on another (2026-12-07: token accuracy 0.76, closed
# loop 5/20, identical metrics from the code of both days): when the plateau ends depends
# on the CPU's float rounding, so the bound needs steps to spare.
PRE_STEPS = int(os.environ.get("VLAX_E2E_PRE_STEPS", 2000))
FT_STEPS = int(os.environ.get("VLAX_E2E_FT_STEPS", 200))
ROLLOUT_EPISODES = 20
QUIET = [
    "--config.logging.progress=False",
    "--config.logging.tensorboard=False",
    "--config.async_checkpointing=False",
    "--config.checkpoint_every=0",
    "--config.eval_every=0",
]


def _train(argv):
  from vlax import cli  # pylint: disable=g-import-not-at-top
  workdir = argv[argv.index("--workdir") + 1]
  if os.path.isdir(os.path.join(workdir, "checkpoints")):
    return  # a manual re-run of the workflow: keep what is there
  rc = cli.main(["train", *argv])
  if rc != 0:
    raise RuntimeError(f"vlax train {argv} exited with {rc}")


def run_workflow(root: str, seed: int = 0) -> dict:
  """Runs the whole recipe under `root`; returns the measured numbers."""
  from vlax import cli  # pylint: disable=g-import-not-at-top
  from vlax.envs.toy_env import scene_kwargs  # pylint: disable=g-import-not-at-top
  from vlax.evaluation.rollout import rollout  # pylint: disable=g-import-not-at-top
  from vlax.evaluation.run import evaluate_offline  # pylint: disable=g-import-not-at-top
  from vlax.inference.policy import Policy  # pylint: disable=g-import-not-at-top
  t0 = time.time()
  times = {}

  # 1. Pretrain the debug model on robots a + b (+ toy web data); it writes its toy data.
  pre = os.path.join(root, "pretrain")
  _train(["--workdir", pre, *QUIET, f"--config.seed={seed}",
          f"--config.num_steps={PRE_STEPS}"])
  times["pretrain"] = time.time() - t0

  # 2. Export it (what a user downloads).
  bundle = os.path.join(root, "bundle")
  if not os.path.isdir(bundle):
    assert cli.main(["export", os.path.join(pre, "checkpoints"), bundle]) == 0

  # 3. Fine-tune on robot c from the bundle, and the same run from scratch.
  ft_args = ["--config", "experiments/finetune_new_robot.py", *QUIET,
             f"--config.seed={seed}", f"--config.num_steps={FT_STEPS}"]
  ft = os.path.join(root, "finetune")
  _train(["--workdir", ft, *ft_args, f"--config.init_from={bundle}"])
  times["finetune"] = time.time() - t0 - sum(times.values())
  scratch = os.path.join(root, "scratch")
  _train(["--workdir", scratch, *ft_args, "--config.init_from_required=False"])
  times["scratch"] = time.time() - t0 - sum(times.values())

  # 4. Offline metrics on robot c's held-out episodes (the fine-tune run's data config,
  # tokenizers and statistics define the eval data for all three).
  ft_ckpt = os.path.join(ft, "checkpoints")
  results = {}
  for name, ckpt, data_from in (("finetuned", ft_ckpt, None),
                                ("scratch", os.path.join(scratch, "checkpoints"), None),
                                ("untuned", bundle, ft_ckpt)):
    r = evaluate_offline(ckpt, os.path.join(root, "eval", name), data_from=data_from,
                         workdir=ft, print_fn=None)
    c = r["datasets"]["toy_reach_c"]
    results[name] = {k: float(c[k]) for k in ("token_accuracy", "l1_norm", "mse_norm",
                                               "l1_robot") if c.get(k) is not None}
  times["eval"] = time.time() - t0 - sum(times.values())

  # 5. Closed loop on the toy robot c, same episode seeds (and scene) for all. The
  # untuned checkpoint has no statistics for robot c, so it cannot act there.
  ft_policy = Policy(ft_ckpt, dataset="toy_reach_c")
  scene = scene_kwargs(ft_policy.metadata["config"]["data"])
  closed_loop = {}
  for name, policy in (
      ("finetuned", ft_policy),
      ("scratch", Policy(os.path.join(scratch, "checkpoints"), dataset="toy_reach_c")),
      ("zero", "zero"), ("random", "random"), ("oracle", "oracle")):
    r = rollout(policy, "toy_reach", episodes=ROLLOUT_EPISODES, embodiment="c", seed=seed,
                env_kwargs=scene)
    closed_loop[name] = {"success_rate": float(r["success_rate"]),
                         "mean_final_distance": float(r["mean_final_distance"]),
                         "mean_min_distance": float(r["mean_min_distance"])}
  times["rollout"] = time.time() - t0 - sum(times.values())
  meta = json.load(open(os.path.join(ft, "config.json")))
  return {"seed": seed, "offline": results, "closed_loop": closed_loop,
          "finetune_init_from": meta["init_from"], "seconds": times,
          "total_seconds": time.time() - t0}


def test_finetune_changes_action_dim_chunk_and_cameras(tmp_path):
  """The recipe's plumbing at the tiny size: a checkpoint trained on robots a + b (3-/4-D
  actions, chunks of 4, primary + wrist) fine-tunes on robot c with 2-D actions, chunks of
  2 and the primary camera only; the fine-tuned Policy emits c's chunks."""
  from vlax import cli  # pylint: disable=g-import-not-at-top
  from vlax.inference.policy import Policy  # pylint: disable=g-import-not-at-top
  from vlax.envs.toy_env import ToyReachEnv  # pylint: disable=g-import-not-at-top
  tiny = ["--config.model.preset=tiny", "--config.data.image_size=32",
          "--config.data.toy_episodes=6", "--config.batch_size=8", "--config.num_steps=2",
          "--config.data.shuffle_buffer=16", *QUIET]
  pre = str(tmp_path / "pre")
  assert cli.main(["train", "--workdir", pre, *tiny]) == 0
  ft = str(tmp_path / "ft")
  config = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                        "experiments", "finetune_new_robot.py")
  assert cli.main(["train", "--config", config, "--workdir", ft,
                   *tiny, f"--config.init_from={pre}/checkpoints",
                   "--config.data.chunk_len=2", "--config.data.cameras=('primary',)"]) == 0
  meta = json.load(open(os.path.join(ft, "config.json")))
  assert meta["init_from"].startswith(pre)
  policy = Policy(os.path.join(ft, "checkpoints"), dataset="toy_reach_c")
  assert tuple(policy.cameras) == ("primary",)
  obs = ToyReachEnv("c", image_size=32, num_blocks=1, block_size=0.2).reset(seed=0)
  action = policy.predict_action({"image_primary": obs["image_primary"],
                                  "proprio": obs["proprio"]}, obs["instruction"])
  assert action.shape == (2, 2)  # chunk 2 of [dx, dy]


@pytest.mark.manual  # ~19 minutes on 2 quiet cores: VLAX_MANUAL_TESTS=1 (README "Tests")
def test_finetune_beats_untuned_and_scratch(tmp_path):
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)  # one CPU device: the tiny model is not worth 8 shards
  env["JAX_PLATFORMS"] = "cpu"
  env["TF_CPP_MIN_LOG_LEVEL"] = "2"
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  out = tmp_path / "result.json"
  proc = subprocess.run(
      [sys.executable, os.path.abspath(__file__), str(tmp_path / "run"), "0", str(out)],
      cwd=repo, env=env, capture_output=True, text=True, timeout=1500)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
  res = json.loads(out.read_text())
  off = res["offline"]
  print("\noffline toy_reach_c (held-out):",
        json.dumps(off, indent=1, sort_keys=True))
  print(f"closed loop on toy_reach_c ({ROLLOUT_EPISODES} episodes):")
  for name, r in res["closed_loop"].items():
    print(f"  {name:10s} success {r['success_rate']:.2f}  final distance "
          f"{r['mean_final_distance']:.3f}  min distance {r['mean_min_distance']:.3f}")
  print(f"timings {json.dumps({k: round(v) for k, v in res['seconds'].items()})}")
  ft, sc, un = off["finetuned"], off["scratch"], off["untuned"]
  cl = res["closed_loop"]
  # Measured at PRE_STEPS=2000 (2026-12-07, 2 quiet cores, 19 min), seed 0, fine-tuned /
  # scratch / untuned: token accuracy 0.87 / 0.71 / 0.54, L1 normalized 0.15 / 0.85 / 0.63,
  # MSE 0.14 / 1.30 / 0.82; closed loop on c 16/20 / 1/20 (zero 2/20, random 3/20, oracle
  # 20/20). At 1400 on the same machine: 0.76 / 0.71 / 0.51, L1 0.56 / 0.85 / 0.71, 5/20.
  # Measured at PRE_STEPS=1400 (2026-12-05, 2 cores shared with one training run, 13.6
  # min), seed 0, fine-tuned / scratch / untuned: token accuracy 0.82 / 0.71 / 0.48, L1
  # normalized 0.36 / 0.85 / 0.71, MSE 0.44 / 1.30 / 0.92; closed loop on c 15/20 / 1/20
  # (zero 2/20, random 3/20, oracle 20/20).
  # Measured at PRE_STEPS=2000 (2026-11-25, 2 cores, 7.5 min), fine-tuned / scratch / untuned:
  #   seed 0: token accuracy 0.82 / 0.71 / 0.51, L1 normalized 0.30 / 0.85 / 0.66, MSE
  #     0.35 / 1.30 / 0.83; closed loop on c 17/20 / 1/20 (zero 2/20, random 3/20);
  #   seed 1: token accuracy 0.86 / 0.74 / 0.48, L1 0.18 / 0.75 / 0.63, MSE 0.17 / 1.07 /
  #     0.80; closed loop 19/20 / 6/20 (zero 0/20, random 0/20). Oracle 20/20.
  assert ft["token_accuracy"] > sc["token_accuracy"] + 0.05, off
  assert ft["token_accuracy"] > un["token_accuracy"] + 0.05, off
  assert ft["l1_norm"] < 0.75 * min(sc["l1_norm"], un["l1_norm"]), off
  assert ft["mse_norm"] < min(sc["mse_norm"], un["mse_norm"]), off
  best_other = max(cl[k]["success_rate"] for k in ("scratch", "zero", "random"))
  assert cl["finetuned"]["success_rate"] >= max(0.5, best_other + 0.3), cl
  assert cl["oracle"]["success_rate"] == 1.0, cl


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  result = run_workflow(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 0)
  text = json.dumps(result, indent=1, sort_keys=True)
  print(text)
  if len(sys.argv) > 3:
    with open(sys.argv[3], "w") as f:
      f.write(text)
