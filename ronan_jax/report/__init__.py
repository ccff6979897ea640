"""HTML report of an audit: one self-contained file (inlined plots and evidence, no scripts).

Public API::

    render_report(rows, profile, run_meta, labels=None, *, out_path, k=8, ...) -> Path
    compute_summary(rows, labels=None) -> Summary      # counts, confusion, accuracy, AUC
    auc_from_losses(losses, labels) / roc_curve(losses, labels)
    label_key(row) -> "path" or "path::member"         # the key labels are given by
    write_report(db, out_path=None, labels=None, run=None) -> (Path, n)   # a database's report

Imports NumPy, matplotlib (Agg canvas, no pyplot), Pillow and Jinja2; never JAX.
"""

from ronan_jax.report._render import render_report
from ronan_jax.report._summary import (
    VERDICTS,
    Confusion,
    Summary,
    auc_diverged_last,
    auc_from_losses,
    compute_summary,
    label_key,
    roc_curve,
)
from ronan_jax.report.metadata import RunSelectionError, pick_run
from ronan_jax.report.write import write_report

__all__ = [
    "VERDICTS",
    "Confusion",
    "RunSelectionError",
    "Summary",
    "auc_diverged_last",
    "auc_from_losses",
    "compute_summary",
    "label_key",
    "pick_run",
    "render_report",
    "roc_curve",
    "write_report",
]
