"""The inversion presets side by side on the core rows and Tables 2 and 3, from the cache.

    python -m benchmarks.accuracy.presets            # score what is cached, invert nothing
    python -m benchmarks.accuracy.presets --fill     # first invert what the named presets lack

For every row: the paper preset (1500 x 8, cold, untrimmed profile: the SPEC-default run),
the SPEC defaults with the warm start (1500 x 8 + the encoder's run; filled by
``python -m benchmarks.accuracy.warm_spec core 2 3``), and every other named preset
(``ronan_jax.attribution.presets``), each with its steps run per test image (model and
reference), accuracy, AUC and seconds per image (as the cache recorded them while filling:
machine load included; "-" where the records hold no time: older ones, and the composed
warm SPEC losses). Writes ``results/presets.{json,md}``. Fill a preset's rows with
``python -m benchmarks.accuracy core 2 3 --steps S --restarts R --warm --workers 2``; then
``--fill`` runs what is still missing of the named presets' rows (in practice the second
passes of the images a preset flags, a few minutes), in this one process.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from benchmarks.accuracy import cache, tables
from ronan_jax.attribution.presets import PRESETS, get_preset
from ronan_jax.engine.config import InversionConfig

RESULTS = Path(__file__).resolve().parent / "results"
ROW_TABLES = ("core", "2", "3")


def rows() -> list[tables.Row]:
    """The core rows, then Tables 2 and 3 (a row in two tables once)."""
    out: dict[str, tables.Row] = {}
    for name in ROW_TABLES:
        for row in tables.TABLES[name][1]:
            out.setdefault(row.label, row)
    return list(out.values())


@dataclasses.dataclass(frozen=True)
class Column:
    """One budget of the table: inversion settings and how the profile is scored."""

    name: str
    config: InversionConfig
    trim: bool = False
    second_chance: float = 0.0
    trim_failed: bool = False


def columns() -> list[Column]:
    """The paper preset (the SPEC defaults, cold), the SPEC defaults with the warm start
    (filled by :mod:`benchmarks.accuracy.warm_spec`), then every other named preset."""
    paper = get_preset("paper")
    out = [Column("paper", paper.config(), paper.trim_outliers),
           Column("paper + warm", paper.config(warm_start=True), paper.trim_outliers)]
    for name, p in PRESETS.items():
        if name != "paper":
            # first passes are cached without the second chance; the row applies it
            out.append(Column(name, p.config(second_chance=0.0), p.trim_outliers, p.second_chance,
                              p.trim_failed))
    return out


def score_column(row: tables.Row, column: Column, n: int = 100, fill: bool = False) -> dict | None:
    """The row under ``column`` from cached losses (None if not all cached), or, with
    ``fill``, inverting what is missing first."""
    scored_row = dataclasses.replace(row, trim_profile=column.trim,
                                     second_chance=column.second_chance,
                                     trim_failed=column.trim_failed)
    try:
        r = tables.score(scored_row, column.config, n, cached_only=not fill,
                         log=(lambda m: print(m, flush=True)) if fill else (lambda m: None))
    except cache.NotCached:
        return None
    steps, seconds = r["steps_run"], r["seconds_per_image"]
    if column.second_chance:  # the test images' second passes, in steps and recorded time
        sc, st = r["second_chance"]["extra_steps"], r["second_chance"]["extra_seconds"]
        steps += sc["positives"] + sc["negatives"]
        if seconds is not None:
            seconds += (st["positives"] + st["negatives"]) / (2 * n)
    return {"accuracy": r["accuracy"], "auc": r["auc"], "TP": r["TP"], "FP": r["FP"],
            "FN": r["FN"], "TN": r["TN"], "steps_per_image": steps / (2 * n),
            "seconds_per_image": seconds, "trimmed": len(r["profile"]["trimmed"]),
            "threshold": r["profile"]["threshold"]}


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args not in ([], ["--fill"]):
        print("usage: python -m benchmarks.accuracy.presets [--fill]", file=sys.stderr)
        return 2
    fill = args == ["--fill"]
    cols = columns()
    out = []
    for row in rows():
        # paper and paper + warm come from their own benchmarks; --fill runs the named presets
        out.append({"row": row.label, **{c.name: score_column(row, c, fill=fill and not c.name.startswith("paper"))
                                         for c in cols}})
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "presets.json").write_text(json.dumps(out, indent=1))
    lines = ["| row | budget | steps run / image | accuracy | AUC | s / image | vs paper |",
             "|---|---|---|---|---|---|---|"]
    for r in out:
        paper = r["paper"]
        for c in cols:
            s = r[c.name]
            if s is None:
                lines.append(f"| {r['row']} | {c.name} | not measured | | | | |")
                continue
            secs = ("-" if s["seconds_per_image"] is None or s["seconds_per_image"] != s["seconds_per_image"]
                    else f"{s['seconds_per_image']:.2f}")
            delta = ""
            if c.name != "paper" and paper is not None:
                delta = (f"{100 * (s['accuracy'] - paper['accuracy']):+.1f} pts, AUC "
                         f"{s['auc'] - paper['auc']:+.3f}, steps x{s['steps_per_image'] / paper['steps_per_image']:.3f}")
            lines.append(f"| {r['row']} | {c.name} | {s['steps_per_image']:.0f} | "
                         f"{100 * s['accuracy']:.1f} % | {s['auc']:.3f} | {secs} | {delta} |")
    text = "\n".join(lines) + "\n"
    (RESULTS / "presets.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
