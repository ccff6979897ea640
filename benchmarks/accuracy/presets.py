"""The inversion presets side by side on the core rows and Tables 2 and 3, from the cache.

    python -m benchmarks.accuracy.presets            # score what is cached, invert nothing

For every row: the paper preset (1500 x 8, cold, untrimmed profile: the SPEC-default run)
and the fast preset (``ronan_jax.attribution.presets``: warm start, fewer steps, trimmed
profile), each with its steps run per test image (model and reference), accuracy, AUC and
seconds per image (as the cache recorded them while filling: machine load included; NaN
where older records hold no time). Writes ``results/presets.{json,md}``. Fill the fast rows
with ``python -m benchmarks.accuracy core 2 3 --steps S --restarts R --warm --workers 2``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from benchmarks.accuracy import cache, tables
from ronan_jax.attribution.presets import PRESETS, get_preset

RESULTS = Path(__file__).resolve().parent / "results"
ROW_TABLES = ("core", "2", "3")


def rows() -> list[tables.Row]:
    """The core rows, then Tables 2 and 3 (a row in two tables once)."""
    out: dict[str, tables.Row] = {}
    for name in ROW_TABLES:
        for row in tables.TABLES[name][1]:
            out.setdefault(row.label, row)
    return list(out.values())


def score_preset(row: tables.Row, preset: str, n: int = 100) -> dict | None:
    """The row under ``preset`` from cached losses (None if not all cached)."""
    p = get_preset(preset)
    scored_row = dataclasses.replace(row, trim_profile=p.trim_outliers)
    try:
        r = tables.score(scored_row, p.config(), n, cached_only=True, log=lambda m: None)
    except cache.NotCached:
        return None
    return {"accuracy": r["accuracy"], "auc": r["auc"], "TP": r["TP"], "FP": r["FP"],
            "FN": r["FN"], "TN": r["TN"], "steps_per_image": r["steps_run"] / (2 * n),
            "seconds_per_image": r["seconds_per_image"], "trimmed": len(r["profile"]["trimmed"])}


def main(argv: list[str] | None = None) -> int:
    del argv
    out = []
    for row in rows():
        out.append({"row": row.label, **{name: score_preset(row, name) for name in PRESETS}})
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "presets.json").write_text(json.dumps(out, indent=1))
    lines = ["| row | preset | steps run / image | accuracy | AUC | s / image | vs paper |",
             "|---|---|---|---|---|---|---|"]
    for r in out:
        paper = r["paper"]
        for name in PRESETS:
            s = r[name]
            if s is None:
                lines.append(f"| {r['row']} | {name} | not measured | | | | |")
                continue
            secs = "-" if s["seconds_per_image"] is None else f"{s['seconds_per_image']:.2f}"
            delta = ""
            if name != "paper" and paper is not None:
                delta = (f"{100 * (s['accuracy'] - paper['accuracy']):+.1f} pts, AUC "
                         f"{s['auc'] - paper['auc']:+.3f}, steps x{s['steps_per_image'] / paper['steps_per_image']:.3f}")
            lines.append(f"| {r['row']} | {name} | {s['steps_per_image']:.0f} | "
                         f"{100 * s['accuracy']:.1f} % | {s['auc']:.3f} | {secs} | {delta} |")
    text = "\n".join(lines) + "\n"
    (RESULTS / "presets.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
