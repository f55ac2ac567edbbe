"""Offline action-prediction evaluation: streaming metrics, report.json, PNG plots.

Pure numpy + matplotlib; the model/data side (decoding, unnormalizing) lives with the
caller, which feeds `ActionMetrics.update` one batch at a time.
"""

from vlax.evaluation.metrics import ActionMetrics, summary_scalars, token_accuracy_counts
from vlax.evaluation.report import format_table, run_offline_eval, write_report

__all__ = ["ActionMetrics", "summary_scalars", "token_accuracy_counts", "format_table",
           "run_offline_eval", "write_report"]
