"""Results out of the store: one record per image as CSV or JSON Lines."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

from ronan_jax.results.store import ROW_KEYS, escape_text

EXPORT_FIELDS: tuple[str, ...] = (
    "path",
    "member",
    "sha256",
    "verdict",
    "loss",
    "ref_loss",
    "calibrated_loss",
    "z",
    "critical_value",
    "p_value",
    "error_kind",
    "error",
    *(k for k in ROW_KEYS if k not in {
        "path", "member", "sha256", "verdict", "loss", "ref_loss", "calibrated_loss", "z",
        "critical_value", "p_value", "error_kind", "error",
    }),
    "config_key",
)
"""Columns of ``ronan export``, in order: identity and verdict first, then every stored field."""

EXPORT_FORMATS = ("csv", "jsonl")


def _plain(value: Any) -> Any:
    """A value fit for CSV and JSON: NaN/inf as empty, text by the store's escaping rule."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str | bytes):
        return escape_text(value)
    return value


def export_rows(rows: Iterable[Mapping[str, Any]], fmt: str, out: TextIO) -> int:
    """Write result rows as CSV (header + one line per image; empty = NULL) or JSON Lines
    (one object per image; null = NULL) with :data:`EXPORT_FIELDS`; return the count."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {EXPORT_FORMATS}, got {fmt!r}")
    n = 0
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=EXPORT_FIELDS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else _plain(row.get(k))) for k in EXPORT_FIELDS})
            n += 1
    else:
        for row in rows:
            record = {k: _plain(row.get(k)) for k in EXPORT_FIELDS}
            out.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")
            n += 1
    return n
