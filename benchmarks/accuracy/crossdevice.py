"""Do two machines reach the same verdicts? Compare a row's losses measured on each.

Tables mix losses measured on CPU and on a GPU (the cache records name the device), so a row
may be scored from one machine's profile and another's test images. This checks that it
matters not: invert a row's images again on another device into a separate cache, then
compare per-image losses and the row's verdicts with the main cache.

    python -m benchmarks.accuracy.crossdevice invert DIR [--row TEXT]   # on the other device
    python -m benchmarks.accuracy.crossdevice compare DIR [--row TEXT]  # here, afterwards
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.accuracy import cache, tables, workers
from ronan_jax.engine.config import InversionConfig

DEFAULT_ROW = "dcgan-mnist vs held-out real digits"


def find_row(text: str) -> tables.Row:
    """The first row, in table order (``core`` first), whose label contains ``text``."""
    for _, rows in tables.TABLES.values():
        for row in rows:
            if text in row.label:
                return row
    raise ValueError(f"no accuracy row's label contains {text!r}")


def invert_row(row: tables.Row, config: InversionConfig, n: int, root: Path) -> float:
    """Invert every image the row needs (model and reference) into the cache at ``root``."""
    t0 = time.time()
    for job in workers.plan([row], config, n):
        workers.run_job(job, cache_root=root)
    return time.time() - t0


def _records(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    lines = path.read_text().splitlines()
    return cache.read(path, json.loads(lines[0])["identity"]) if lines else {}


def compare(other: Path, row: tables.Row, config: InversionConfig, n: int,
            main: Path | None = None) -> dict:
    """Per-image loss agreement of each cache file, and the row scored from each cache."""
    main = main or cache.CACHE_DIR
    files = {}
    for path in sorted(other.glob("*.jsonl")):
        theirs, ours = _records(path), _records(main / path.name)
        shas = [s for s in theirs if s in ours]
        if not shas:
            continue
        a = np.array([ours[s]["loss"] for s in shas])
        b = np.array([theirs[s]["loss"] for s in shas])
        rel = np.abs(b - a) / np.abs(a)
        files[path.name] = {
            "images": len(shas), "identical": int(np.sum(a == b)),
            "rel_diff_median": float(np.median(rel)), "rel_diff_p90": float(np.quantile(rel, 0.9)),
            "rel_diff_max": float(rel.max()),
            "devices": sorted({str(theirs[s].get("device", "-")) for s in shas}),
        }
    scored = {}
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "other"  # scoring may seed a shipped profile: never write `other`
        shutil.copytree(other, copy)
        for label, root in (("main", main), ("other", copy)):
            scored[label] = tables.score(row, config, n, log=lambda m: None,
                                         cached_only=True, root=root)

    def verdicts(r: dict) -> np.ndarray:
        cal = np.array(r["calibrated"]["positives"] + r["calibrated"]["negatives"], float)
        return np.nan_to_num(cal, nan=np.inf) < r["profile"]["threshold"]

    same = int(np.sum(verdicts(scored["main"]) == verdicts(scored["other"])))
    summary = {k: {m: r[m] for m in ("TP", "FP", "FN", "TN", "accuracy", "auc")}
               | {"threshold": r["profile"]["threshold"]} for k, r in scored.items()}
    return {"row": row.label, "files": files, "scores": summary, "same_verdicts": same,
            "images": 2 * n}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=("invert", "compare"))
    ap.add_argument("dir", type=Path, help="the other device's cache folder")
    ap.add_argument("--row", default=DEFAULT_ROW, help="text of the row's label")
    ap.add_argument("--n", type=int, default=100)
    args = ap.parse_args(argv)
    row, config = find_row(args.row), InversionConfig()
    if args.action == "invert":
        seconds = invert_row(row, config, args.n, args.dir)
        print(f"{row.label}: every image inverted into {args.dir} in {seconds:.0f} s")
        return 0
    out = compare(args.dir, row, config, args.n)
    for name, f in out["files"].items():
        print(f"{name} ({', '.join(f['devices'])}): {f['images']} images, {f['identical']} "
              f"identical; relative difference median {f['rel_diff_median']:.2e}, 90th "
              f"percentile {f['rel_diff_p90']:.2e}, max {f['rel_diff_max']:.2e}")
    for label, s in out["scores"].items():
        print(f"{label}: TP {s['TP']} FP {s['FP']} FN {s['FN']} TN {s['TN']}, accuracy "
              f"{100 * s['accuracy']:.1f} %, AUC {s['auc']:.4f}, threshold {s['threshold']:.4f}")
    print(f"same verdicts: {out['same_verdicts']}/{out['images']}")
    return 0 if out["same_verdicts"] == out["images"] else 1


if __name__ == "__main__":
    sys.exit(main())
