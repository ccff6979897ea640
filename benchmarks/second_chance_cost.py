"""What the second chance costs in time (issue 19): a first pass (the model and its reference,
as an audit runs them) and the second pass (the model only, ``InversionConfig.second_pass``)
on the same images, timed side by side in one process, interleaved, best of ``--reps``.

    python -m benchmarks.second_chance_cost [--models dcgan-mnist,vae-mnist,dcgan-mnist:ssim,...]
        [--steps 300] [--restarts 8] [--images 8] [--reps 3] [--out FILE.json]
        [--table benchmarks/accuracy/results/table-second.json]
    python -m benchmarks.second_chance_cost --ratios-from FILE.json [FILE.json ...] --table T.json

The images are each model's unseen real images (the images a second pass is mostly spent on:
every non-belonging image is above the level). Both passes scale linearly with the steps, so
their ratio at ``--steps`` is the ratio at the paper's 1500; compile time is kept out (a
warm-up call of the same shapes first). With ``--table`` (a second-chance table written by
``python -m benchmarks.accuracy second``) each row's extra compute in time is printed: its
flagged images x the second pass's seconds over all its images x the first pass's, next to
the table's extra optimisation steps (a reference step and a model step count alike there).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import numpy as np

from benchmarks.accuracy import sets
from benchmarks.accuracy.tables import unseen_set
from benchmarks.robust_cost import timed
from ronan_jax import zoo
from ronan_jax.attribution.second_chance import DEFAULT_K
from ronan_jax.engine.config import InversionConfig
from ronan_jax.engine.invert import invert


def pass_seconds(name: str, steps: int, n: int, reps: int, metric: str = "mse",
                 restarts: int = 8) -> dict[str, float]:
    """Seconds per image of a first pass (model + reference, ``restarts`` restarts) and of a
    second pass (model, 32 halved restarts), same images, and their ratio."""
    model = sets.load_model(name)
    reference = zoo.load(sets.default_reference(name)).for_shape(model.output_shape)
    images = sets.load_set(unseen_set(name), n).astype(np.float32) / 255.0
    first = InversionConfig(steps=steps, restarts=restarts, metric=metric)
    second = first.replace(second_chance=DEFAULT_K).second_pass()

    def run_first():
        return invert(model, images, first).loss, invert(reference, images, first).loss

    def run_second():
        return invert(model, images, second).loss

    run_first(), run_second()  # compile
    best = {"first": float("inf"), "second": float("inf")}
    for _ in range(reps):
        best["first"] = min(best["first"], timed(run_first))
        best["second"] = min(best["second"], timed(run_second))
    return {"first_s": best["first"] / n, "second_s": best["second"] / n,
            "ratio": best["second"] / best["first"]}


def row_extra(row: dict, ratio: float) -> dict[str, float]:
    """A table row's extra compute in time from its flagged counts and the measured ratio."""
    sc = row["second_chance"]
    flagged = sum(sc["flagged"].values())
    images = row["n"] * 3  # the profile, the positives and the negatives
    return {"flagged": flagged, "images": images, "extra_time_pct": 100.0 * ratio * flagged / images,
            "extra_steps_pct": sc["extra_pct"]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="dcgan-mnist,vae-mnist,dcgan-photo,ref-photo",
                    help="comma-separated NAME or NAME:METRIC (default metric mse)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--restarts", type=int, default=8, help="the first pass's restarts")
    ap.add_argument("--table", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    ap.add_argument("--ratios-from", type=Path, nargs="+", default=None,
                    help="time nothing: take the ratios from --out files of earlier runs "
                         "(to weigh a table finished later); --models is then ignored")
    args = ap.parse_args(argv)
    record: dict = {"argv": sys.argv[1:] if argv is None else argv, "models": {}, "rows": []}
    if args.ratios_from:
        for path in args.ratios_from:
            earlier = json.loads(path.read_text())
            print(f"ratios from {path} ({earlier['steps']} steps, first pass "
                  f"{earlier['restarts']} restarts, {earlier['images']} images per call, best of "
                  f"{earlier['reps']})", flush=True)
            record["models"].update(earlier["models"])
    else:
        print(f"jax {jax.__version__} on {jax.devices()[0].platform}; {args.steps} steps, first "
              f"pass {args.restarts} restarts, {args.images} images per call, best of "
              f"{args.reps}", flush=True)
        record.update(steps=args.steps, restarts=args.restarts, images=args.images,
                      reps=args.reps)
        for entry in args.models.split(","):
            name, _, metric = entry.partition(":")
            key = f"{name}:{metric or 'mse'}"
            record["models"][key] = pass_seconds(name, args.steps, args.images, args.reps,
                                                 metric=metric or "mse", restarts=args.restarts)
    for key, r in record["models"].items():
        print(f"{key:18s} first pass {r['first_s']:7.3f} s/image (model + reference), second "
              f"pass {r['second_s']:7.3f} s/image (model): {r['ratio']:.3f}x", flush=True)
    for row in json.loads(args.table.read_text())["rows"] if args.table else []:
        key = f"{row['row']['model']}:{row['row']['metric']}"
        if "second_chance" not in row or key not in record["models"]:
            continue
        e = row_extra(row, record["models"][key]["ratio"])
        record["rows"].append({"label": row["row"]["label"], "ratio_of": key, **e})
        print(f"{row['row']['label'][:70]:70s} flagged {e['flagged']:3d}/{e['images']}: extra time "
              f"{e['extra_time_pct']:5.1f} %, extra steps {e['extra_steps_pct']:5.1f} %", flush=True)
    if args.out:
        args.out.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
