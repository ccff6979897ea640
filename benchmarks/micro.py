"""Micro-benchmark: seconds per image at B = 1 vs B = 32 images per call, same generator,
steps and restarts, measured side by side in one run.

    python -m benchmarks.micro [--steps 100] [--restarts 8] [--ngf 32] [--impl lax|subpixel]

Expected runtime: about a minute on 2 CPU cores. Prints one line per batch size and the
ratio last. Seconds exclude compilation (a warm-up call of each shape runs first).
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from ronan_jax.attribution.profile import quantize_8bit
from ronan_jax.engine.config import InversionConfig
from ronan_jax.engine.invert import invert
from ronan_jax.engine.program import default_max_batch, images_per_call
from ronan_jax.models import dcgan


def seconds_per_image(gen, images: np.ndarray, config: InversionConfig, repeats: int = 2) -> tuple[float, float]:
    """(compile-inclusive first call seconds, best steady-state seconds per image)."""
    t0 = time.perf_counter()
    invert(gen, images, config)
    first = time.perf_counter() - t0
    best = float("inf")
    for r in range(repeats):
        t0 = time.perf_counter()
        invert(gen, images * (1.0 - 1e-3 * (r + 1)), config)  # new content, same shapes
        best = min(best, time.perf_counter() - t0)
    return first, best / len(images)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--restarts", type=int, default=8)
    ap.add_argument("--ngf", type=int, default=32)
    ap.add_argument("--nc", type=int, default=1)
    ap.add_argument("--impl", default="lax", choices=["lax", "subpixel"])
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--loop", default="auto")
    args = ap.parse_args(argv)
    cfg = dcgan.DCGANConfig(nz=100, ngf=args.ngf, nc=args.nc, depth=4, convt_impl=args.impl)
    gen = dcgan.make_generator(cfg, dcgan.random_variables(cfg, jax.random.key(0)), name="bench-dcgan")
    sizes = [int(b) for b in args.batches.split(",")]
    images = quantize_8bit(np.asarray(gen.generate(jax.random.key(1), max(sizes))))
    inv = InversionConfig(steps=args.steps, restarts=args.restarts, loop=args.loop, max_batch=max(sizes) * args.restarts)
    print(f"backend {jax.default_backend()} ({jax.devices()[0].device_kind}); DCGAN 32x32 ngf={args.ngf} nc={args.nc} "
          f"impl={args.impl}; {args.steps} steps x {args.restarts} restarts")
    per_image = {}
    for b in sizes:
        first, s = seconds_per_image(gen, images[:b], inv.replace(max_batch=b * args.restarts))
        per_image[b] = s
        print(f"B={b:4d} in one call : {s:8.4f} s/image ({s * 1500 / args.steps:7.2f} s/image at 1500 steps), first call {first:6.2f} s")
    lo, hi = min(sizes), max(sizes)
    first, s = seconds_per_image(gen, images[:hi], inv.replace(max_batch=0))
    auto = default_max_batch()
    print(f"B={hi:4d} default max_batch ({auto} runs = {images_per_call(inv.replace(max_batch=0))} images/call): {s:8.4f} s/image "
          f"({s * 1500 / args.steps:7.2f} s/image at 1500 steps)")
    print(f"speed-up B={hi} (one call) over B={lo}: {per_image[lo] / per_image[hi]:.2f}x")
    print(f"speed-up B={hi} (default chunking) over B={lo}: {per_image[lo] / s:.2f}x")


if __name__ == "__main__":
    main()
