"""A picture of what the shipped encoders do before any Adam step: images and G(E(x)).

    python -m benchmarks.encoder_grid [--out benchmarks/results/encoder-reconstructions.png]

Rows, in pairs (the images, then the model's output at their encoding): 10 images
``dcgan-mnist`` generated, 10 real digits of ``mnist-b`` (never seen by ``dcgan-mnist`` or
its encoder), 10 patches of the held-out photos through ``ref-photo``. Pixels are upscaled 3x.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import numpy as np
from PIL import Image

from ronan_jax import zoo
from ronan_jax.zoo import data as zoo_data

OUT = Path(__file__).resolve().parent / "results" / "encoder-reconstructions.png"


def _tile(images: np.ndarray) -> np.ndarray:
    big = [np.kron(np.repeat(im, 3 // im.shape[-1], -1), np.ones((3, 3, 1))) for im in images]
    return np.concatenate([np.pad(b, ((2, 2), (2, 2), (0, 0)), constant_values=1.0) for b in big], axis=1)


def grid() -> np.ndarray:
    """The grid as float RGB in [0, 1]."""
    model, ref = zoo.load("dcgan-mnist"), zoo.load("ref-photo")
    own = np.asarray(model.generate(jax.random.key(5), 10))
    digits = np.asarray(zoo_data.dataset("mnist-b").images[:10], np.float32)
    photos = np.asarray(zoo_data.dataset("photo-heldout").images[::97][:10], np.float32)
    rows = []
    for images, gen in ((own, model), (digits, model), (photos, ref)):
        rows += [_tile(images), _tile(np.asarray(gen(gen.encoder(images))))]
    return np.clip(np.concatenate(rows, axis=0), 0.0, 1.0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(grid() * 255).astype(np.uint8)).save(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
