"""Reproduce the paper's accuracy tables on the zoo (resumable; every loss cached).

    python -m benchmarks.accuracy core           # the core rows: dcgan-mnist, the paper's defaults
    python -m benchmarks.accuracy 2 3 8          # Tables 2, 3 and 8, the paper's defaults
    python -m benchmarks.accuracy all --steps 200 --n 50   # every table at reduced settings
    python -m benchmarks.accuracy core --quick   # a fast smoke run (20 steps x 2, n 10)
    python -m benchmarks.accuracy 2 4 --workers 2   # one pinned process per core
    python -m benchmarks.accuracy 2 --rows vae-mnist   # only the rows naming vae-mnist
    python -m benchmarks.accuracy 7 --partial    # score the rows already measured, invert nothing

Per-image losses are appended to benchmarks/accuracy/cache/*.jsonl as they are measured, so a
stopped run resumes and tables share inversions. Each table writes
benchmarks/accuracy/results/table-<T>[-<settings>].{json,md,png}. Expect ~14 s per image
(model + reference) at the paper's defaults on 2 CPU cores, i.e. ~45 minutes per 200-image row
whose images are not cached yet. With ``--workers K`` every inversion the chosen tables need
is first run on K processes pinned to one core each (2.3x the throughput of one process on
2 cores here), then the tables are scored from the cache.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from benchmarks.accuracy import cache, plot, sets, tables, workers
from ronan_jax.engine.config import InversionConfig

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def settings_tag(config: InversionConfig, n: int) -> str:
    default = InversionConfig()
    warm = "-warm" if config.warm_start else ""
    if (config.steps, config.restarts, n) == (default.steps, default.restarts, 100):
        return warm
    return f"-{config.steps}x{config.restarts}{warm}-n{n}"


def markdown(title: str, results: list[dict], command: str, seconds: float,
             missing: list[tables.Row] | None = None, fill_seconds: float | None = None) -> str:
    lines = [f"### {title}", "", f"`{command}`", "",
             "| row | TP | FP | FN | TN | accuracy | AUC | steps run | paper |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(
            f"| {r['row']['label']} | {r['TP']} | {r['FP']} | {r['FN']} | {r['TN']} | "
            f"{100 * r['accuracy']:.1f} % | {r['auc']:.3f} | "
            f"{100 * r['steps_run'] / r['steps_budget']:.1f} % | {r['row']['paper']} |")
    for row in missing or []:
        lines.append(f"| {row.label} | not measured yet | | | | | | | {row.paper} |")
    if not results:
        return "\n".join(lines) + "\n"
    s = results[0]["settings"]
    warm = " (+ 1 warm-started run from the encoders)" if s.get("warm_start") else ""
    lines += ["", f"Settings: {s['steps']} steps x {s['restarts']} restarts{warm}, lr {s['lr']}, "
              f"N = {results[0]['profile']['n']}, alpha {results[0]['alpha']}, "
              f"{results[0]['n']} + {results[0]['n']} images per row; wall time of this "
              f"invocation {seconds:.0f} s (cached inversions cost nothing)."]
    if fill_seconds is not None:
        lines[-1] += (f" Before that, the worker processes filled the cache for all tables of "
                      f"the command in {fill_seconds:.0f} s.")
    if "halving_at" in s:
        lines.append(f"Early stopping: successive halving at {s['halving_at']} of the steps, "
                     f"plateau window {s['plateau_window']} steps, rtol {s['plateau_rtol']} "
                     f"(checked every {s['check_every']} steps). Steps run: share of the "
                     "same images' full budget on M and the reference.")
    return "\n".join(lines) + "\n"


def second_chance_markdown(title: str, results: list[dict], command: str, seconds: float,
                           missing: list[tables.Row] | None = None,
                           belonging: list[dict] | None = None, n: int = 100) -> str:
    """The second-chance table: each row's first pass and second chance side by side, the
    images re-run and the extra optimisation steps, and the profile's normality."""
    lines = [f"### {title}", "", f"`{command}`", "",
             "| row | first pass: FN / FP, accuracy | second chance: FN / FP, accuracy | change "
             "| threshold before / after | re-run: profile / pos / neg | extra steps (all / test "
             "images) | profile Shapiro-Wilk W before / after |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        f, sc, nm = r["first_pass"], r["second_chance"], r["normality"]
        fl = sc["flagged"]
        lines.append(
            f"| {r['row']['label'].removesuffix(', second chance')} | {f['FN']} / {f['FP']}, "
            f"{100 * f['accuracy']:.1f} % | {r['FN']} / {r['FP']}, {100 * r['accuracy']:.1f} % | "
            f"{100 * (r['accuracy'] - f['accuracy']):+.1f} | {f['threshold']:.3g} / "
            f"{r['profile']['threshold']:.3g} | {fl['profile']} / {fl['positives']} / "
            f"{fl['negatives']} | {sc['extra_pct']:.1f} % / {sc['extra_pct_test_images']:.1f} % | "
            f"{nm['first_pass']['W']:.3f} / {nm['second_chance']['W']:.3f} |")
    sides = {b["label"]: b for b in belonging or []}
    for row in missing or []:
        b = sides.get(row.label)
        if b is None:
            lines.append(f"| {row.label.removesuffix(', second chance')} | not measured yet "
                         "| | | | | | |")
            continue
        f, sc, fl = b["first_pass"], b["second_chance"], b["flagged"]
        lines.append(
            f"| {row.label.removesuffix(', second chance')} | FN {f['FN']} | FN {sc['FN']} "
            f"(negatives not re-run yet) | | {f['threshold']:.3g} / {sc['threshold']:.3g} | "
            f"{fl['profile']} / {fl['positives']} / - | | {f['W']:.3f} / {sc['W']:.3f} |")
    if results:
        sc = results[0]["second_chance"]
        lines += ["", f"k = {sc['k']:g}; second pass {sc['second_pass']['steps']} steps x "
                  f"{sc['second_pass']['restarts']} new restarts (seed "
                  f"{sc['second_pass']['seed']}) on M only. Extra steps: the second pass's "
                  "optimisation steps over the first pass's (M and reference) for the row's "
                  f"{n} profile + {2 * n} test images, and for the {2 * n} test images alone. "
                  f"Wall time of this invocation {seconds:.0f} s."]
    return "\n".join(lines) + "\n"


def table_settings(rows: list[tables.Row], config: InversionConfig) -> InversionConfig:
    """The budget a table's rows run at: their shared steps/restarts overrides, else
    ``config``'s (so a reduced-budget table's files are named after the budget it ran)."""
    budgets = {(s.steps, s.restarts) for s in (row.settings(config) for row in rows)}
    if len(budgets) != 1:
        return config
    steps, restarts = budgets.pop()
    return config.replace(steps=steps, restarts=restarts)


def chosen_rows(name: str, patterns: list[str] | None) -> list[tables.Row]:
    """A table's rows, or those whose label contains one of ``patterns`` (a pattern that
    starts with ``=`` must be the whole label)."""
    rows = tables.TABLES[name][1]

    def match(pattern: str, label: str) -> bool:
        return label == pattern[1:] if pattern.startswith("=") else pattern in label

    return [r for r in rows if not patterns or any(match(p, r.label) for p in patterns)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tables", nargs="+", help=f"any of {', '.join(tables.TABLES)}, or all")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--restarts", type=int, default=8)
    ap.add_argument("--n", type=int, default=100, help="profile size N and images per side")
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--warm", action="store_true",
                    help="warm start: one more run per image from the model's (and the "
                         "reference's) encoder")
    ap.add_argument("--quick", action="store_true", help="20 steps x 2 restarts, n 10")
    ap.add_argument("--rows", nargs="+", metavar="TEXT",
                    help="only rows whose label contains one of these, or is exactly =LABEL "
                         "(file tagged -part)")
    ap.add_argument("--partial", action="store_true",
                    help="invert nothing: score the rows whose losses are all cached and "
                         "list the others as not measured (file tagged -partial)")
    ap.add_argument("--belonging-first", action="store_true",
                    help="table second: first run the second passes of every chosen MNIST "
                         "row's profile and positives (a few images each), then the rows")
    ap.add_argument("--workers", type=int, default=1,
                    help="processes, each pinned to one core, that fill the cache first")
    args = ap.parse_args(argv)
    names = list(tables.TABLES) if args.tables == ["all"] else args.tables
    unknown = [t for t in names if t not in tables.TABLES]
    if unknown:
        ap.error(f"unknown table(s) {unknown}; choose from {list(tables.TABLES)} or all")
    if args.quick:
        args.steps, args.restarts, args.n = 20, 2, 10
    config = InversionConfig(steps=args.steps, restarts=args.restarts, warm_start=args.warm)
    command = "python -m benchmarks.accuracy " + " ".join(sys.argv[1:] if argv is None else argv)
    fill_seconds = None
    if args.workers > 1 and not args.partial:
        t_fill = time.time()
        rows = [row for name in names for row in chosen_rows(name, args.rows)]
        for row in rows:
            if row.calibrated:
                tables.seed_from_shipped_profile(row.model, row.settings(config), args.n)
        workers.fill_cache(workers.plan(rows, config, args.n), args.workers,
                           log=lambda m: print(m, flush=True))
        fill_seconds = time.time() - t_fill
    if args.belonging_first and "second" in names and not args.partial:
        for row in chosen_rows("second", args.rows):
            if "photo" not in sets.training_data(row.model):
                tables.belonging_side(row, config, args.n, args.alpha,
                                      log=lambda m: print(m, flush=True))
    for name in names:
        title = tables.TABLES[name][0]
        t0 = time.time()
        results, missing, belonging = [], [], []
        rows = chosen_rows(name, args.rows)
        second = any(row.second_chance for row in rows)
        for row in rows:
            try:
                results.append(tables.score(row, config, args.n, args.alpha,
                                            log=lambda m: print(m, flush=True),
                                            cached_only=args.partial))
            except cache.NotCached as exc:
                print(f"  {row.label}: {exc}", flush=True)
                missing.append(row)
                if second:
                    try:
                        belonging.append(tables.belonging_side(row, config, args.n, args.alpha,
                                                               cached_only=True))
                    except cache.NotCached:
                        pass
        seconds = time.time() - t0
        tag = settings_tag(table_settings(rows, config), args.n) + ("-part" if args.rows else "") + (
            "-partial" if missing else "")
        stem = RESULTS_DIR / f"table-{name}{tag}"
        stem.parent.mkdir(parents=True, exist_ok=True)
        stem.with_suffix(".json").write_text(json.dumps(
            {"title": title, "command": command, "seconds": seconds,
             "fill_seconds": fill_seconds, "rows": results,
             "not_measured": [row.label for row in missing],
             "belonging_side_only": belonging}, indent=1))
        if second:
            text = second_chance_markdown(title, results, command, seconds, missing, belonging,
                                          n=args.n)
        else:
            text = markdown(title, results, command, seconds, missing, fill_seconds)
        stem.with_suffix(".md").write_text(text)
        if results:
            plot.plot_table(title, results, stem.with_suffix(".png"))
        print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
