"""How fast does the debug VLA learn to *see* the toy block? A learning-speed probe.

One question, isolated from the action pipeline: is the single block on the left or the
right half of the table (ToyReachEnv robot a, primary camera)? The debug VLA (ViT +
decoder, 16 patches per camera) answers with one token after a fixed prompt; a small CNN
with a linear head is the reference for how easy the question is. Both train from
scratch (AdamW, batch 16) on fresh scenes and are scored on 256 held-out ones.

This is the check behind the README's "Toy closed loop" note that a ViT from scratch is
slow on small objects (which is why the debug config draws one large block):

  python benchmarks/toy_vision_probe.py --steps 2000 --json /tmp/probe.json

Writes JSON (accuracy curves and the first step at >= 90% per model and block size) and a
PNG of the curves next to it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vlax.envs.toy_env import ToyReachEnv  # pylint: disable=g-import-not-at-top,wrong-import-position
from vlax.models.config import VLAConfig  # pylint: disable=g-import-not-at-top,wrong-import-position
from vlax.models.presets import get_preset  # pylint: disable=g-import-not-at-top,wrong-import-position
from vlax.models.vla import VLA  # pylint: disable=g-import-not-at-top,wrong-import-position

PROMPT = np.array([2, 5, 6, 7, 8], np.int32)  # any fixed prompt; the answer token follows
ANSWER = (10, 11)  # "left", "right"


def scenes(block_size: float, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Images float [n, 64, 64, 3] in [-1, 1] and labels int [n] (1 = block right of centre)."""
  env = ToyReachEnv("a", num_blocks=1, block_size=block_size)
  images, labels = [], []
  for i in range(n):
    env.reset(seed=seed * 1_000_003 + i)
    images.append(env.render("primary"))
    labels.append(int(env.block_pos[0, 0] > 0))
  return np.stack(images).astype(np.float32) / 127.5 - 1, np.array(labels, np.int32)


class SmallCNN(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(32, (5, 5), strides=(2, 2))(x))
    x = nn.relu(nn.Conv(32, (3, 3), strides=(2, 2))(x))
    return nn.Dense(2)(x.reshape(x.shape[0], -1))


def vla_logits_fn() -> tuple[Any, Callable]:
  cfg = get_preset("debug").to_dict()
  cfg["vision"]["patch_size"] = 16
  model = VLA(VLAConfig.from_dict(cfg))
  tokens = np.concatenate([PROMPT, [ANSWER[0]]])[None]
  prefix = np.array([[True] * len(PROMPT) + [False]])

  def logits(params, images):
    b = images.shape[0]
    out = model.apply({"params": params}, images[:, None], jnp.ones((b, 1), bool),
                      jnp.tile(tokens, (b, 1)), jnp.ones((b, tokens.shape[1]), bool),
                      jnp.tile(prefix, (b, 1)))
    return out[:, len(PROMPT) - 1][:, jnp.array(ANSWER)]  # the answer position, 2 classes

  dummy = np.zeros((1, 1, 64, 64, 3), np.float32)
  params = model.init(jax.random.PRNGKey(0), dummy, np.ones((1, 1), bool), tokens,
                      np.ones_like(prefix), prefix)["params"]
  return nn.meta.unbox(params), logits


def cnn_logits_fn() -> tuple[Any, Callable]:
  model = SmallCNN()
  params = model.init(jax.random.PRNGKey(0), np.zeros((1, 64, 64, 3), np.float32))["params"]
  return params, lambda p, images: model.apply({"params": p}, images)


def train_curve(name: str, block_size: float, steps: int, every: int,
                lr: float) -> dict[str, Any]:
  params, logits = {"vla": vla_logits_fn, "cnn": cnn_logits_fn}[name]()
  warmup = min(40, steps // 2)  # 40 for real runs; short smoke runs still decay
  tx = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, lr, warmup, steps, lr * 0.1),
                   weight_decay=1e-4)
  opt = tx.init(params)

  def loss_fn(p, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits(p, x), y).mean()

  @jax.jit
  def step(p, o, x, y):
    loss, g = jax.value_and_grad(loss_fn)(p, x, y)
    updates, o = tx.update(g, o, p)
    return optax.apply_updates(p, updates), o, loss

  accuracy = jax.jit(lambda p, x, y: jnp.mean(jnp.argmax(logits(p, x), -1) == y))
  test_x, test_y = scenes(block_size, 256, seed=999)
  curve, t0 = [], time.time()
  for s in range(1, steps + 1):
    params, opt, _ = step(params, opt, *scenes(block_size, 16, seed=s))
    if s % every == 0:
      curve.append((s, float(accuracy(params, test_x, test_y))))
      print(f"{name} block {block_size}: step {s} held-out accuracy {curve[-1][1]:.3f} "
            f"({time.time() - t0:.0f} s)", flush=True)
  first = next((s for s, a in curve if a >= 0.9), None)
  return {"model": name, "block_size": block_size, "curve": curve, "steps_to_90": first,
          "seconds": time.time() - t0}


def plot(runs: list[dict[str, Any]], path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 4))
  for r in runs:
    s, a = zip(*r["curve"])
    ax.plot(s, a, label=f"{r['model']}, block half-width {r['block_size']}")
  ax.axhline(0.5, color="grey", lw=0.5)
  ax.set(xlabel="step (batch 16)", ylabel="held-out accuracy",
         title="Is the block left or right? (from scratch)")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  p.add_argument("--steps", type=int, default=2000)
  p.add_argument("--every", type=int, default=100)
  p.add_argument("--block-sizes", default="0.09,0.2")
  p.add_argument("--models", default="cnn,vla")
  p.add_argument("--lr", type=float, default=1e-3)
  p.add_argument("--json", default=None, help="output JSON (a PNG is written next to it)")
  args = p.parse_args(argv)
  runs = [train_curve(m, float(b), args.steps, args.every, args.lr)
          for b in args.block_sizes.split(",") for m in args.models.split(",")]
  summary = {f"{r['model']}@{r['block_size']}": r["steps_to_90"] for r in runs}
  print(json.dumps({"steps_to_90": summary}))
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"runs": runs, "steps_to_90": summary, "steps": args.steps}, f, indent=1)
    plot(runs, os.path.splitext(args.json)[0] + ".png")
  return 0


if __name__ == "__main__":
  sys.exit(main())
