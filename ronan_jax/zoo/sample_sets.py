"""Small fixed sets of real images shipped with the zoo, for tests, demos and benchmarks.

``ronan_jax/zoo/samples/samples.npz`` (uint8, compressed) holds:

- ``mnist_unseen``: 100 held-out digits (the first 100 of MNIST split ``unseen``), 32x32x1;
  no zoo model was trained on them.
- ``mnist_train``: 100 training digits (the first 100 of half A, the data of ``dcgan-mnist``
  and ``vae-mnist``), 32x32x1.
- ``photo_unseen``: 100 patches of the held-out photos (``chelsea``, ``china``), 32x32x3,
  drawn with a fixed seed; no zoo model was trained on those photos.

Sources and licences are those of :mod:`ronan_jax.zoo.data`. Rebuild (needs the ``train``
extras) with ``python -m ronan_jax.zoo.sample_sets``.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import numpy as np

SAMPLES_FILE = "samples.npz"
SAMPLE_SEED = 0
N_PER_SET = 100


def _default_path() -> Path:
    return Path(str(importlib.resources.files("ronan_jax.zoo") / "samples" / SAMPLES_FILE))


def load_samples(path: str | Path | None = None) -> dict[str, np.ndarray]:
    """The shipped sample sets: ``name -> (100, H, W, C)`` float32 in [0, 1], NHWC."""
    with np.load(path or _default_path()) as npz:
        return {k: npz[k].astype(np.float32) / np.float32(255.0) for k in npz.files}


def build_samples() -> dict[str, np.ndarray]:
    """The sample sets as uint8 NHWC arrays, rebuilt from :mod:`ronan_jax.zoo.data`."""
    from ronan_jax.zoo import data

    def to_u8(x: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)

    patches = data.photo_patches("heldout")
    pick = np.sort(
        np.random.default_rng(SAMPLE_SEED).choice(len(patches), N_PER_SET, replace=False)
    )
    return {
        "mnist_unseen": to_u8(data.mnist_split("unseen")[0][:N_PER_SET]),
        "mnist_train": to_u8(data.mnist_split("a")[0][:N_PER_SET]),
        "photo_unseen": to_u8(patches[pick]),
    }


def write_samples(path: str | Path | None = None) -> Path:
    """Write :func:`build_samples` to ``path`` (default: the package's samples file)."""
    path = Path(path or _default_path())
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **build_samples())
    return path


if __name__ == "__main__":
    print(write_samples())
