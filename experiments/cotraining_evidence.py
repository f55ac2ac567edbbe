"""Does web co-training help? The arms of the held-out-concept experiment (issue 21).

One web-only "VLM" stage, then robot fine-tuning arms that differ only in their web share,
matched in robot examples seen (notes/cotraining-evidence.md section 4). The colour
purple is the held-out concept: it is taught by the toy web data (VQA about coloured
shapes) and never appears in the robot data (toy embodiment b, two blocks), so whether a
policy follows "move to the purple block" measures transfer from web to robot.

  s0        web only from scratch (all colours, purple included): the shared "VLM".
  s0_minus  web only from scratch on web-minus-purple (A4's own stage 0).
  a1        from s0, robot only (web weight 0).
  a2        from s0, web weight 0.25 (ChatVLA's best ratio).
  a3        from s0, web weight 0.5 (RT-2's PaLI-X ratio).
  a4        from s0_minus, web weight 0.25 on web-minus-purple (control: does transfer
            need the concept in the web data, or does co-training only regularise?).

  vlax train --config experiments/cotraining_evidence.py:s0 --workdir /tmp/ce/s0
  vlax train --config experiments/cotraining_evidence.py:a2 --workdir /tmp/ce/a2 \\
      --config.init_from=/tmp/ce/s0/checkpoints

`python benchmarks/cotraining_evidence.py --out /tmp/ce` runs every stage, the web and
closed-loop evals, and the table. The fine-tuning arms see ROBOT_STEPS * batch_size robot
examples each: num_steps = ROBOT_STEPS / (1 - web_weight) (`arm_steps`), so a larger web
share is not also less robot data. Every stage uses the same model and optimizer
(float32, the debug preset); the robot-only arms keep the toy web source configured at
weight 0 so `vlax eval --web` scores them on the same held-out questions as s0.
"""

from __future__ import annotations

import math

import ml_collections

from vlax.experiments import debug

CONCEPT = "purple"
STAGE0 = ("s0", "s0_minus")
# Fine-tuning arm -> (its stage 0, web weight, web data without the concept).
ARMS = {"a1": ("s0", 0.0, False), "a2": ("s0", 0.25, False), "a3": ("s0", 0.5, False),
        "a4": ("s0_minus", 0.25, True)}
S0_STEPS = 1500  # web-only steps; the gate asks VQA >= 0.90 (purple questions included)
ROBOT_STEPS = 2000  # N: steps' worth of robot examples every fine-tuning arm sees
ROBOT_DATASET = "toy_reach_b"  # the embodiment that learns within the debug budget
# Toy VQA training examples (held-out questions are drawn apart). With 4,096 the model
# memorised them: held-out accuracy flat from step 1000 while the loss kept falling
# (README "Does web co-training help?"); 32,768 draws hold ~14,000 distinct questions.
WEB_EXAMPLES = 32768


def arm_steps(robot_steps: int, web_weight: float) -> int:
  """Steps that give `robot_steps` steps' worth of robot examples at this web share."""
  if not 0.0 <= web_weight < 1.0:
    raise ValueError(f"web weight must be in [0, 1) for a robot arm, got {web_weight}")
  return int(math.ceil(robot_steps / (1.0 - web_weight) - 1e-9))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arm = (arg or "").strip().lower()
  if arm not in (*STAGE0, *ARMS):
    raise ValueError(f"unknown arm {arg!r}; use one of {[*STAGE0, *ARMS]} "
                     f"(--config experiments/cotraining_evidence.py:a2)")
  c = debug.get_config()
  c.log_every = 50
  c.checkpoint_every = 500
  c.keep_checkpoints = 2
  c.eval_every = 0  # robot validation loss: off (the closed loop is the robot metric)
  # The forgetting curve: held-out VQA every 250 steps on 200 questions (the final
  # 1,200-question score comes from `vlax eval --web`).
  c.web_eval_every = 250
  c.web_eval_examples = 200

  c.data.web_sources = ({"kind": "toy", "num_examples": WEB_EXAMPLES, "seed": 0},)
  c.data.held_out_concept = CONCEPT  # counted in both streams (data counters)
  c.data.held_out_robot = "absent"  # the primary split: purple never in robot scenes
  c.data.toy_num_blocks = 2  # a target and a distractor: follow chance 1/2
  c.data.toy_block_size = 0.2  # large enough for the from-scratch ViT (debug notes)
  c.data.toy_episodes = 2000  # one embodiment, ~5 frames per episode

  if arm in STAGE0:
    c.num_steps = S0_STEPS
    c.data.robot_datasets = ""  # web only
    c.data.web_weight = 1.0
    c.data.web_drop_concept = arm == "s0_minus"
    return c

  _, weight, drop = ARMS[arm]
  c.init_from = ""  # the arm's stage 0: --config.init_from=OUT/<s0>/checkpoints
  c.init_from_required = True
  c.reset_optimizer = True  # a fresh optimizer per arm, as the stage 0s had
  c.num_steps = arm_steps(ROBOT_STEPS, weight)
  c.data.robot_datasets = ROBOT_DATASET
  c.data.web_weight = weight
  c.data.web_drop_concept = drop
  return c
