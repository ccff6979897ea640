"""Cheaper second passes on the failures the second chance was built for (issue 19): the
belonging side (profile and positives) of the rows a failed inversion broke, re-scored with
second-pass schedules that cost less than the default (32 restarts halved at 10, 25 and 50 %).

    python -m benchmarks.second_pass_schedules [--rows TEXT ...]

Only the belonging side is inverted (a few flagged images per row; the negatives, most of a
row's cost, are not), so this says which schedules still find the failed inversions, not yet
whether a row's accuracy holds. Second passes are cached like the table's
(``benchmarks/accuracy/cache``; the default schedule's are the table's own), so a rerun costs
nothing.
"""

from __future__ import annotations

import argparse

from benchmarks.accuracy import tables
from ronan_jax.engine.config import InversionConfig
from ronan_jax.engine.stopping import halving_steps

# (restarts, halving fractions): the default first, then cheaper ones
SCHEDULES: tuple[tuple[int, tuple[float, ...]], ...] = (
    (32, (0.1, 0.25, 0.5)),
    (32, (0.05, 0.1, 0.25)),
    (32, (0.05, 0.1, 0.2, 0.4)),
    (16, (0.1, 0.25, 0.5)),
)
ROWS = ("dcgan-mnist-b vs dcgan-mnist images", "dcgan-mnist vs held-out real digits",
        "dcgan-mnist, ssim")


def run_steps(config: InversionConfig) -> int:
    """Restart-steps of one pass under ``config`` when no image stops early: successive
    halving at the engine's own halving steps (fractions rounded to check steps), keeping
    half the runs, rounded up, as the engine does."""
    total, alive, start = 0, config.restarts, 0
    for at in (*sorted(halving_steps(config)), config.steps):
        total += alive * (at - start)
        alive, start = -(-alive // 2), at
    return total


def second_pass(restarts: int, halving: tuple[float, ...]) -> InversionConfig:
    """The second pass of the paper's settings with this schedule."""
    return InversionConfig(second_restarts=restarts, second_halving=halving).second_pass()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", nargs="+", default=list(ROWS))
    args = ap.parse_args(argv)
    rows = [r for r in tables.TABLES["second"][1]
            if any(r.label.startswith(p) for p in args.rows)]
    base = run_steps(second_pass(*SCHEDULES[0]))
    print("| row | schedule | cost vs the default | threshold (first pass / second chance) | "
          "FN (first / second) | profile W |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        for restarts, halving in SCHEDULES:
            config = InversionConfig(second_restarts=restarts, second_halving=halving)
            side = tables.belonging_side(row, config, 100, 0.05, log=lambda m: None)
            f, sc = side["first_pass"], side["second_chance"]
            print(f"| {row.label.removesuffix(', second chance')} | {restarts} halved at "
                  f"{list(halving)} | {run_steps(second_pass(restarts, halving)) / base:.2f}x | "
                  f"{f['threshold']:.3g} / {sc['threshold']:.3g} | {f['FN']} / {sc['FN']} | "
                  f"{sc['W']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
