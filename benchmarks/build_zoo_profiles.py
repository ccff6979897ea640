"""Build the belonging profiles shipped with the zoo (resumable).

    python -m benchmarks.build_zoo_profiles dcgan-mnist            # the paper's defaults: N 100, 1500 x 8
    python -m benchmarks.build_zoo_profiles dcgan-mnist --demo     # the demo's: N 100, 100 x 8
    python -m benchmarks.build_zoo_profiles dcgan-mnist --preset fast   # N 100, the fast preset (or express)
    python -m benchmarks.build_zoo_profiles vae-mnist --preset fast --from-cache   # losses the
                                               # accuracy benchmark measured on the same images

Progress is appended to benchmarks/progress/<name>.progress.jsonl (committed) after every chunk of images, so
a stopped build resumes where it stopped. Expected runtime on 2 CPU cores: ~5 minutes for the
demo profile, ~1 hour for the full one (most of it on the reference model).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

from ronan_jax import zoo
from ronan_jax.attribution.build import (
    build_profile,
    profile_classes,
    profile_images,
    record_measured_losses,
)
from ronan_jax.attribution.presets import PRESETS, get_preset
from ronan_jax.attribution.profile import quantize_8bit
from ronan_jax.engine.config import InversionConfig
from ronan_jax.engine.generator import Generator
from ronan_jax.models.resolver import preset_profile_name

DEMO_STEPS = 100


def seed_from_accuracy_cache(progress: Path, model: Generator, reference: Generator,
                             n: int, config: InversionConfig) -> str:
    """Enter the accuracy benchmark's cached losses of the profile's images (the set
    ``gen:MODEL:0`` there is the same images) into the build's resume file; says what it did."""
    from benchmarks.accuracy import cache

    drawn = profile_classes(model, n, 0)  # None for an unconditional model
    images = np.round(quantize_8bit(profile_images(model, n, 0, drawn)) * 255).astype(np.uint8)
    first = config.replace(second_chance=0.0)  # the cache holds first passes; the build
    try:                                        # runs the second pass of the flagged images
        loss, _ = cache.losses(model, images, first, cached_only=True, classes=drawn)
        ref_loss, _ = cache.losses(reference, images, first, cached_only=True)
    except cache.NotCached as exc:
        return f"not all cached ({exc}): inverting them"
    record_measured_losses(progress, model, reference, n, 0, config, loss, ref_loss)
    return f"{n} profile images' losses taken from the accuracy benchmark's cache"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--demo", action="store_true", help=f"{DEMO_STEPS} steps (the demo's profile)")
    ap.add_argument("--preset", default="paper", choices=list(PRESETS),
                    help="the inversion preset (fast / express: NAME-fast.json / NAME-express.json, warm start, second chance)")
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--from-cache", action="store_true",
                    help="take the losses the accuracy benchmark's cache holds for the same "
                         "images and settings (benchmarks/accuracy/cache), invert the rest; run "
                         "it unpinned: XLA's rounding of the generated images depends on the "
                         "thread count, and the cache's sets were generated on 2 threads")
    ap.add_argument("--out-dir", default=str(Path(zoo.__file__).parent / "profiles"))
    args = ap.parse_args(argv)
    preset = get_preset(args.preset)
    config = InversionConfig(steps=DEMO_STEPS, restarts=8) if args.demo else preset.config()
    name = f"{args.model}-demo" if args.demo else preset_profile_name(args.model, args.preset)
    out = Path(args.out_dir) / f"{name}.json"
    progress = Path("benchmarks/progress") / f"{name}.progress.jsonl"
    model = zoo.load(args.model)
    reference = zoo.load(zoo.default_reference(args.model))
    t0 = time.time()
    if args.from_cache:
        print(seed_from_accuracy_cache(progress, model, reference, args.samples, config), flush=True)

    def report(done: int, total: int) -> None:
        print(f"{name}: {done}/{total} images, {time.time() - t0:.0f} s", flush=True)

    prof = build_profile(model, reference, n=args.samples, seed=0, config=config,
                         progress=report, resume_path=progress,
                         trim_outliers=preset.trim_outliers and not args.demo,
                         trim_failed=preset.trim_failed and not args.demo)
    ref_name = zoo.default_reference(args.model)
    prof = dataclasses.replace(
        prof,
        model={**prof.model, "spec": f"builtin:{args.model}"},
        reference={**prof.reference, "spec": f"builtin:{ref_name}"},
    )
    prof.save(out)
    print(f"wrote {out}: mu={prof.mu:.4g} sigma={prof.sigma:.4g} n={prof.n} "
          f"threshold={prof.threshold:.4g} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
