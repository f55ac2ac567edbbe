"""PNG plots of offline evals: actions over time, error by dimension, by chunk position.

Figures are drawn with matplotlib's object API on an Agg canvas (no pyplot, no global
backend switch), so plotting works headless and from any thread.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def safe_name(name: str) -> str:
  """A dataset name as a file-name fragment."""
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("._") or "dataset"


def _save(fig: Figure, path: str) -> str:
  FigureCanvasAgg(fig)
  fig.savefig(path, dpi=80)
  return path


def _nan(values: Sequence[float | None]) -> np.ndarray:
  return np.array([np.nan if v is None else v for v in values], np.float64)


def plot_timeseries(plot_data: Mapping[str, Any], out_dir: str, units: str = "robot",
                    max_episodes: int | None = None) -> list[str]:
  """Predicted vs. true action over time, one PNG per buffered episode.

  One subplot per action dimension; the x axis is the episode timestep; values are the
  first step of each predicted chunk. plot_data: `ActionMetrics.plot_data()`.
  """
  paths = []
  for name, ds in plot_data.items():
    episodes = ds["episodes"][:max_episodes]
    dim, labels = int(ds["action_dim"]), ds["dimension_names"]
    for ei, ep in enumerate(episodes):
      t = np.asarray(ep["timestep"])
      pred = np.asarray(ep[f"pred_{units}"])[:, :dim]
      true = np.asarray(ep[f"true_{units}"])[:, :dim]
      mask = np.asarray(ep["mask"])[:, :dim]
      cols = min(dim, 4)
      rows = math.ceil(dim / cols)
      fig = Figure(figsize=(3.2 * cols, 2.2 * rows + 0.6))
      for d in range(dim):
        ax = fig.add_subplot(rows, cols, d + 1)
        valid = mask[:, d]
        ax.plot(t[valid], true[valid, d], color="black", lw=1.2, label="true")
        ax.plot(t[valid], pred[valid, d], color="tab:orange", lw=1.0, ls="--",
                label="predicted")
        tag = " (gripper)" if d in ds.get("gripper_dims", ()) else ""
        ax.set_title(f"{labels[d]}{tag}", fontsize=9)
        ax.tick_params(labelsize=7)
        if d >= dim - cols:
          ax.set_xlabel("timestep", fontsize=8)
        if d == 0:
          ax.legend(fontsize=7)
      fig.suptitle(f"{name}: episode {ep['episode_id']} ({units} units)", fontsize=10)
      fig.tight_layout()
      path = os.path.join(out_dir, f"timeseries_{safe_name(name)}_ep{ei}.png")
      paths.append(_save(fig, path))
  return paths


def plot_error_by_dimension(result: Mapping[str, Any], out_dir: str) -> list[str]:
  """Bar charts of L1 error per action dimension (normalized and robot units), per dataset."""
  paths = []
  for name, res in result["datasets"].items():
    if not res["num_action_values"]:
      continue
    per_dim = res["per_dimension"]
    x = np.arange(res["action_dim"])
    fig = Figure(figsize=(max(5.0, 0.6 * len(x) + 2.0), 5.0))
    for i, (key, title) in enumerate((("l1_norm", "L1, normalized"),
                                      ("l1_robot", "L1, robot units"))):
      ax = fig.add_subplot(2, 1, i + 1)
      ax.bar(x, _nan(per_dim[key]),
             color=["tab:red" if d in res["gripper_dims"] else "tab:blue" for d in x])
      ax.set_xticks(x)
      ax.set_xticklabels(res["dimension_names"], fontsize=8,
                         rotation=45 if len(x) > 8 else 0)
      ax.set_ylabel(title, fontsize=9)
    fig.suptitle(f"{name}: error by action dimension (red = gripper)", fontsize=10)
    fig.tight_layout()
    paths.append(_save(fig, os.path.join(out_dir, f"error_by_dim_{safe_name(name)}.png")))
  return paths


def plot_error_by_chunk_position(result: Mapping[str, Any], out_dir: str) -> list[str]:
  """L1 error against position in the action chunk, one line per dataset plus overall."""
  k = int(result["chunk_len"])
  x = np.arange(k)
  fig = Figure(figsize=(6.5, 5.0))
  groups = [(n, r) for n, r in result["datasets"].items() if r["num_action_values"]]
  groups.append(("overall", result["overall"]))
  for i, (key, title) in enumerate((("l1_norm", "L1, normalized"),
                                    ("l1_robot", "L1, robot units"))):
    ax = fig.add_subplot(2, 1, i + 1)
    for name, res in groups:
      style = {"color": "black", "lw": 2.0} if name == "overall" else {"lw": 1.2}
      ax.plot(x, _nan(res["per_chunk_position"][key]), marker="o", ms=3, label=name,
              **style)
    ax.set_ylabel(title, fontsize=9)
    ax.set_xticks(x)
    if i == 1:
      ax.set_xlabel("chunk position (0 = next step)", fontsize=9)
    else:
      ax.legend(fontsize=7)
  fig.suptitle("error by chunk position", fontsize=10)
  fig.tight_layout()
  return [_save(fig, os.path.join(out_dir, "error_by_chunk_position.png"))]
