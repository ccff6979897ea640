"""HTML report of an audit: one self-contained file (inlined plots and evidence, no scripts).

Public API::

    render_report(rows, profile, run_meta, labels=None, *, out_path, k=8, ...) -> Path
    compute_summary(rows, labels=None) -> Summary      # counts, confusion, accuracy, AUC
    auc_from_losses(losses, labels) / roc_curve(losses, labels)
    image_key(row) -> "path" or "path::member"         # the key labels are given by

Imports NumPy, matplotlib (Agg canvas, no pyplot), Pillow and Jinja2; never JAX.
"""

from ronan_jax.report._render import render_report
from ronan_jax.report._summary import (
    VERDICTS,
    Confusion,
    Summary,
    auc_from_losses,
    compute_summary,
    image_key,
    roc_curve,
)

__all__ = [
    "VERDICTS",
    "Confusion",
    "Summary",
    "auc_from_losses",
    "compute_summary",
    "image_key",
    "render_report",
    "roc_curve",
]
