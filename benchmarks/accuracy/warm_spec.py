"""The SPEC defaults with a warm start (1500 steps x 8 restarts + the encoder's run), at the
cost of two runs per image instead of nine.

    python -m benchmarks.accuracy.warm_spec core 2 3     # fill, then score with
    python -m benchmarks.accuracy core 2 3 --warm --partial

A warm-started inversion adds one run, started at the encoding of the image, beside the
``restarts`` prior runs, and those are drawn exactly as without it (tested in
``tests/test_warm_start.py``). Each run is optimised on its own, so the warm 1500 x 8 loss of an
image is the minimum of its cached cold 1500 x 8 loss and the loss of its encoder run. This
module inverts every image of the chosen rows once with ``restarts=1`` and the warm start (the
encoder run and the prior's first draw, which the cold run already holds) and enters
``min(cold, that)`` into the cache under the 1500 x 8 warm identity, with the nine runs' steps.
The ``restarts=1`` warm losses themselves are the "1500 x 1 + warm" budget. Images whose cold
losses are not cached are skipped (run ``python -m benchmarks.accuracy ...`` first).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import numpy as np

from benchmarks.accuracy import cache, sets, tables
from ronan_jax.attribution.classes import num_classes
from ronan_jax.engine.config import InversionConfig

COLD = InversionConfig()


def compose_set(gen_name: str, spec: str, n: int, log: Callable[[str], None] = print,
                cold: InversionConfig = COLD) -> int:
    """Fill the warm losses of ``cold`` + the warm start for one set on one zoo generator
    (default: the SPEC defaults); returns images added (0 where its cold losses are not all
    cached, or the generator is conditional or has no encoder)."""
    gen = sets.load_model(gen_name)
    if num_classes(gen) or gen.encoder is None:
        return 0
    warm = cold.replace(warm_start=True)
    encoder_run = warm.replace(restarts=1)
    images = sets.load_set(spec, n)
    try:
        cold_loss, cold_steps = cache.losses(gen, images, cold, spec, log, cached_only=True)
    except cache.NotCached as exc:
        log(f"  skipped: {exc} (cold run first)")
        return 0
    one, one_steps = cache.losses(gen, images, encoder_run, f"{spec} (encoder run)", log)
    # the encoder run's steps on top of the cold run's (its prior draw repeats cold restart 0)
    extra = one_steps - one_steps // encoder_run.runs_per_image(True)
    return cache.seed(gen, images, warm, np.fmin(cold_loss, one), cold_steps + extra,
                      source=f"min(cold {cold.steps}x{cold.restarts}, warm {cold.steps}x1)")


def row_sets(row: tables.Row) -> list[tuple[str, str]]:
    """(generator, set) pairs a row inverts: M on its three sets, and the reference."""
    out = [(row.model, spec) for spec in row.specs]
    if row.calibrated:
        out += [(sets.default_reference(row.model), spec) for spec in row.specs]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tables", nargs="+", help=f"any of {', '.join(tables.TABLES)}")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--rows", nargs="+", metavar="TEXT",
                    help="only rows whose label contains one of these")
    args = ap.parse_args(argv)
    done: set[tuple[str, str]] = set()
    for name in args.tables:
        for row in tables.TABLES[name][1]:
            if args.rows and not any(p in row.label for p in args.rows):
                continue
            for pair in row_sets(row):
                if pair in done:
                    continue
                done.add(pair)
                added = compose_set(*pair, args.n, log=lambda m: print(m, flush=True))
                print(f"{row.label}: {pair[1]} on {pair[0]}: {added} warm 1500 x 8 losses "
                      "entered", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
