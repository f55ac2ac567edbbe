"""Offline eval outputs: OUT/report.json, PNG plots and the table printed by `vlax eval`."""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Iterable, Mapping

from vlax.errors import VlaxError
from vlax.evaluation.metrics import ActionMetrics

REPORT_FORMAT = "vlax-eval/1"

_COLUMNS = (("n", "num_examples", "{:d}"), ("token acc", "token_accuracy", "{:.4f}"),
            ("L1 norm", "l1_norm", "{:.4f}"), ("MSE norm", "mse_norm", "{:.4f}"),
            ("L1 robot", "l1_robot", "{:.4g}"), ("gripper acc", "gripper_accuracy",
                                                 "{:.4f}"))


def write_report(result: Mapping[str, Any], out_dir: str,
                 plots_data: Mapping[str, Any] | None = None,
                 metadata: Mapping[str, Any] | None = None,
                 max_plot_episodes: int | None = None) -> dict[str, Any]:
  """Writes out_dir/report.json and the PNGs; returns where they are.

  result: `ActionMetrics.result()`; plots_data: `ActionMetrics.plot_data()` (None or no
  episodes: no time-series plots); metadata: JSON-safe extras stored under "metadata"
  (checkpoint, step, config...). report.json = result + {"format", "plots" (file names
  relative to out_dir), "metadata"}. Returns {"report_path", "plot_paths", "report"}.
  """
  if "datasets" not in result or "overall" not in result:
    raise VlaxError("write_report: result must come from ActionMetrics.result() "
                    "(keys 'datasets' and 'overall')")
  try:
    os.makedirs(out_dir, exist_ok=True)
  except OSError as e:
    raise VlaxError(f"write_report: cannot create output directory {out_dir!r}: {e}") from e
  # Imported here: matplotlib is slow to import and training only needs the metrics.
  from vlax.evaluation import plots  # pylint: disable=g-import-not-at-top
  paths = []
  if plots_data:
    paths += plots.plot_timeseries(plots_data, out_dir, max_episodes=max_plot_episodes)
  paths += plots.plot_error_by_dimension(result, out_dir)
  paths += plots.plot_error_by_chunk_position(result, out_dir)
  report = {"format": REPORT_FORMAT, **result,
            "plots": [os.path.relpath(p, out_dir) for p in paths],
            "metadata": dict(metadata or {})}
  report_path = os.path.join(out_dir, "report.json")
  try:
    text = json.dumps(report, indent=2, sort_keys=True, allow_nan=False)
  except (TypeError, ValueError) as e:
    raise VlaxError(f"write_report: result/metadata is not JSON-safe: {e}") from e
  with open(report_path, "w") as f:
    f.write(text + "\n")
  return {"report_path": report_path, "plot_paths": paths, "report": report}


def _cell(value: Any, fmt: str) -> str:
  return "-" if value is None else fmt.format(value)


def format_table(result: Mapping[str, Any]) -> str:
  """A fixed-width table: one row per dataset, then "overall"; "-" where not counted."""
  rows = [(name, res) for name, res in result["datasets"].items()]
  rows.append(("overall", result["overall"]))
  cells = [[name] + [_cell(res.get(key), fmt) for _, key, fmt in _COLUMNS]
           for name, res in rows]
  header = ["dataset"] + [title for title, _, _ in _COLUMNS]
  widths = [max(len(r[i]) for r in cells + [header]) for i in range(len(header))]

  def line(r: list[str]) -> str:
    return "  ".join([r[0].ljust(widths[0])] +
                     [c.rjust(w) for c, w in zip(r[1:], widths[1:])])

  out = [line(header), "  ".join("-" * w for w in widths)]
  out += [line(r) for r in cells[:-1]]
  out += ["  ".join("-" * w for w in widths), line(cells[-1])]
  return "\n".join(out)


def run_offline_eval(records: Iterable[Mapping[str, Any]], metrics: ActionMetrics,
                     out_dir: str | None = None, max_batches: int | None = None,
                     metadata: Mapping[str, Any] | None = None,
                     print_fn: Callable[[str], Any] | None = print,
                     counters: Callable[[], Mapping[str, int]] | None = None
                     ) -> dict[str, Any]:
  """The thin driver behind `vlax eval` (and periodic evals in training).

  `counters()` (read once the records are consumed) adds event counts to the result,
  e.g. `decode_errors`: predicted chunks whose action tokens had the wrong length.

  records: an iterable of dicts of `ActionMetrics.update` keyword arguments (one per
  batch; the caller decodes tokens and unnormalizes). Consumes at most max_batches,
  then writes the report to out_dir (if given) and prints the table (if print_fn).
  Returns the result dict.
  """
  n = 0
  for record in records:
    if max_batches is not None and n >= max_batches:
      break
    try:
      metrics.update(**record)
    except TypeError as e:
      raise VlaxError(f"run_offline_eval: batch {n} has bad update arguments: {e}") from e
    n += 1
  if n == 0:
    raise VlaxError("run_offline_eval: no evaluation batches (is the eval split empty?)")
  result = metrics.result()
  result["num_batches"] = n
  if counters is not None:
    result.update({k: int(v) for k, v in counters().items()})
  if out_dir is not None:
    write_report(result, out_dir, metrics.plot_data(), metadata=metadata)
  if print_fn is not None:
    print_fn(format_table(result))
    if result.get("decode_errors"):
      print_fn(f"decode_errors: {result['decode_errors']} predicted chunks had action "
               f"tokens of the wrong length (decoded from what was there)")
  return result
