"""The accuracy benchmark's pieces: AUC, the loss cache, the image sets, scoring a row."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.accuracy import cache, sets, tables
from ronan_jax.config import InversionConfig

TINY = InversionConfig(steps=6, restarts=2)


def test_auc_counts_pairs_and_ties_and_puts_nan_last():
    assert tables.auc(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == 1.0
    assert tables.auc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 0.0
    assert tables.auc(np.array([1.0, 3.0]), np.array([3.0, 0.0])) == pytest.approx(0.375)
    assert tables.auc(np.array([np.nan]), np.array([5.0])) == 0.0


def test_image_sha_depends_on_pixels_and_shape():
    a = np.zeros((4, 4, 1), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 1
    assert cache.image_sha(a) == cache.image_sha(a.copy())
    assert cache.image_sha(a) != cache.image_sha(b)
    assert cache.image_sha(a) != cache.image_sha(np.zeros((2, 8, 1), np.uint8))


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "CACHE_DIR", tmp_path / "cache")
    return tmp_path / "cache"


def test_cached_losses_are_reused_and_survive_a_cut_line(tmp_cache, monkeypatch):
    gen = sets.load_model("dcgan-mnist")
    images = sets.load_set("gen:dcgan-mnist:3", 3)
    loss, steps = cache.losses(gen, images, TINY, log=lambda m: None)
    assert loss.shape == (3,) and np.all(loss > 0)
    assert np.all(steps == TINY.steps * TINY.restarts)
    path = cache.cache_path(gen, TINY)
    path.write_text(path.read_text() + '{"sha": "cut')  # a write killed half-way

    def refuse(*a, **k):
        raise AssertionError("a cached image was inverted again")

    monkeypatch.setattr(cache, "invert", refuse)
    again, _ = cache.losses(gen, images[::-1], TINY, log=lambda m: None)
    np.testing.assert_array_equal(again, loss[::-1])


def test_cache_file_of_other_settings_is_refused(tmp_cache):
    gen = sets.load_model("dcgan-mnist")
    path = cache.cache_path(gen, TINY)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"identity": {"generator": "other"}}) + "\n")
    with pytest.raises(ValueError, match="another generator"):
        cache.losses(gen, sets.load_set("gen:dcgan-mnist:3", 1), TINY, log=lambda m: None)


def test_1977_filter_changes_pixels_and_keeps_greyscale():
    digits = sets.load_set("gen:dcgan-mnist:1", 4)
    out = sets.filter_1977(digits)
    assert out.shape == digits.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - digits.astype(int)).mean() > 5
    photos = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    assert sets.filter_1977(photos).shape == (2, 8, 8, 3)


def test_unknown_set_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown image set"):
        sets.load_set("pics:foo", 2)


def test_generated_set_is_deterministic_and_seed_dependent():
    a = sets.load_set("gen:dcgan-mnist:1", 2)
    np.testing.assert_array_equal(a, sets.load_set("gen:dcgan-mnist:1", 2))
    assert not np.array_equal(a, sets.load_set("gen:dcgan-mnist:2", 2))


def test_scoring_a_row_counts_every_image_once(tmp_cache):
    row = tables.Row("t", "dcgan-mnist", "gen:dcgan-mnist:1", "data:mnist-unseen", "-")
    res = tables.score(row, TINY, n=4, log=lambda m: None)
    assert res["TP"] + res["FN"] == 4 and res["FP"] + res["TN"] == 4
    assert res["accuracy"] == pytest.approx((res["TP"] + res["TN"]) / 8)
    assert 0.0 <= res["auc"] <= 1.0
    assert res["profile"]["threshold"] > res["profile"]["mu"]
    assert len(res["calibrated"]["negatives"]) == 4
    json.dumps(res)  # the results file is plain JSON
    uncal = tables.score(tables.Row("u", "dcgan-mnist", "gen:dcgan-mnist:1", "data:mnist-unseen",
                                    "-", calibrated=False), TINY, n=4, log=lambda m: None)
    # Without calibration the losses are the model's own: cached, not recomputed.
    assert uncal["calibrated"]["profile"] != res["calibrated"]["profile"]
