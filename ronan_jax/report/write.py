"""The report of a results database in one call: pick the run, read its rows, write HTML.
The database is opened read-only (``ResultStore(db, readonly=True)``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ronan_jax.report._render import render_report
from ronan_jax.report.metadata import pick_run, run_metadata, run_profile
from ronan_jax.results.store import ResultStore, RunInfo


def report_rows(db: str | os.PathLike[str], chosen: RunInfo) -> list[dict[str, Any]]:
    """Every result row of ``chosen``'s settings."""
    with ResultStore(db, readonly=True) as store:
        return list(store.iter_results(chosen.config_key))


def write_report(
    db: str | os.PathLike[str],
    out_path: str | os.PathLike[str] | None = None,
    labels: Mapping[str, bool] | None = None,
    run: str | None = None,
    rows: list[dict[str, Any]] | None = None,
) -> tuple[Path, int]:
    """Write the HTML report of ``db`` (the latest run, or ``run``: an id or results-key
    prefix) to ``out_path`` (default: the database's name with ``.html``); ``labels`` add
    the confusion matrix, accuracy and ROC; ``rows`` replaces the run's rows (a subset).
    ``db`` is read read-only and never changed; a file that is not a results database is
    refused with StoreError naming it. Returns the path and the number of images reported."""
    chosen, runs = pick_run(db, run)
    rows = report_rows(db, chosen) if rows is None else rows
    out = Path(out_path) if out_path else Path(db).with_suffix(".html")
    meta = run_metadata(db, chosen, runs)
    return render_report(rows, run_profile(chosen), meta, labels, out_path=out), len(rows)
