"""The post-processing transforms of the accuracy benchmark (issue 20): shapes and dtypes
kept, each one changes the images, JPEG's error grows as its quality falls, greyscale stays
one channel, and the sets and tables name them."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pilgram")

from benchmarks.accuracy import sets, tables
from benchmarks.accuracy.postprocess import TRANSFORMS, apply_transform


def digits() -> np.ndarray:
    from ronan_jax.zoo import data

    images = np.asarray(data.dataset("mnist-unseen").images[:3], np.float64)
    return np.clip(np.rint(images * 255 if images.max() <= 1 else images), 0, 255).astype(np.uint8)


def photos() -> np.ndarray:
    rng = np.random.default_rng(0)
    smooth = np.cumsum(np.cumsum(rng.normal(size=(2, 32, 32, 3)), axis=1), axis=2)
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    return np.rint(smooth * 255).astype(np.uint8)


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_every_transform_keeps_the_shape_and_changes_the_pixels(name):
    for images in (digits(), photos()):
        out = apply_transform(name, images)
        assert out.shape == images.shape and out.dtype == np.uint8
        changed = np.abs(out.astype(int) - images.astype(int)).mean()
        assert changed > 0.05, (name, changed)
        np.testing.assert_array_equal(out, apply_transform(name, images))  # deterministic


def test_jpeg_error_grows_as_quality_falls():
    images = digits()  # one channel: no chroma subsampling in the error
    err = [np.abs(apply_transform(f"jpeg{q}", images).astype(int) - images).mean() for q in (95, 90, 75, 50)]
    assert err == sorted(err) and err[-1] > 2 * err[0]


def test_unknown_transforms_are_refused_and_sets_name_transforms():
    with pytest.raises(ValueError, match="unknown transform"):
        apply_transform("jpeg100", digits())
    spec = "post:jpeg75:data:mnist-unseen"
    images = sets.load_set(spec, 3)
    np.testing.assert_array_equal(images, apply_transform("jpeg75", sets.load_set("data:mnist-unseen", 3)))
    np.testing.assert_array_equal(sets.load_classes(spec, 3), sets.load_classes("data:mnist-unseen", 3))
    labels = [r.label for r in tables.TABLES["post"][1]]
    assert labels[0] == "dcgan-mnist, no transform" and len(labels) == 2 * (1 + len(TRANSFORMS))
    assert all(dict(r.overrides)["robust"] == "tone" for r in tables.TABLES["post-tone"][1])
