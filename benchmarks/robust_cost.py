"""What robust mode costs per image (issue 20): the same inversion in the default mode and in
each robust setting, timed side by side in one process, interleaved, best of ``--reps``.

    python -m benchmarks.robust_cost [--models dcgan-mnist,dcgan-photo] [--steps 100]
        [--restarts 8] [--images 8] [--reps 3]

Each mode inverts the same ``--images`` belonging images of the model (and, as an audit
does, the same images on its default reference) for ``--steps`` steps; compile time is kept
out (a warm-up call of the same shapes first). Prints seconds per image at the timed steps
and extrapolated to the paper's 1500, and each mode's ratio to the default mode.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from ronan_jax.attribution.profile import quantize_8bit
from ronan_jax.engine.config import ROBUST_MODES, InversionConfig
from ronan_jax.engine.invert import invert
from ronan_jax.models.resolver import default_reference_spec, load_model, load_reference


def timed(fn) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="dcgan-mnist,dcgan-photo")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--restarts", type=int, default=8)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args(argv)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; {args.steps} steps x "
          f"{args.restarts} restarts, {args.images} images per call, best of {args.reps}", flush=True)
    for name in args.models.split(","):
        for line in model_costs(name, args.steps, args.restarts, args.images, args.reps):
            print(line, flush=True)


def model_costs(name: str, steps: int, restarts: int, n: int, reps: int) -> list[str]:
    """One line per mode: its seconds per image for ``name`` and its ratio to the default."""
    model = load_model(f"builtin:{name}")
    reference = load_reference(default_reference_spec(f"builtin:{name}")).for_shape(model.output_shape)
    images = np.asarray(quantize_8bit(np.asarray(model.generate(jax.random.key(1), n))))
    configs = {m: InversionConfig(steps=steps, restarts=restarts, robust=m) for m in ROBUST_MODES}

    def run(mode: str):
        cfg = configs[mode]
        return invert(model, images, cfg).loss, invert(reference, images, cfg).loss

    for mode in ROBUST_MODES:
        run(mode)  # compile
    best = {m: float("inf") for m in ROBUST_MODES}
    for _ in range(reps):
        for mode in ROBUST_MODES:
            best[mode] = min(best[mode], timed(lambda mode=mode: run(mode)))
    lines = []
    for mode in ROBUST_MODES:
        per = best[mode] / n
        lines.append(f"{name:12s} {mode:10s} {per:8.3f} s/image (model + reference) at {steps} steps, "
                     f"{per * 1500 / steps:8.1f} s at 1500; {best[mode] / best['off']:.2f}x the default mode")
    return lines

if __name__ == "__main__":
    main()
