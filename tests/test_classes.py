"""Class-conditional models: the class rules (known, min over classes, zero) in inversion,
calibration, attribution and profile building, on tiny random conditional DCGANs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ronan_jax.attribution import grubbs
from ronan_jax.attribution.attribute import attribute
from ronan_jax.attribution.build import build_profile, profile_classes
from ronan_jax.attribution.calibrate import calibrate, calibrated_losses
from ronan_jax.attribution.classes import invert_by_class_rule, min_over_classes, num_classes
from ronan_jax.attribution.profile import ProfileMismatchError, check_compatible, quantize_8bit
from ronan_jax.engine.config import InversionConfig
from ronan_jax.engine.invert import invert
from ronan_jax.models import dcgan

C = 3
CFG = InversionConfig(steps=20, restarts=2, lr=0.1, loop="chunked", unroll=10, max_batch=256, check_every=10)


def _dcgan(seed: int, name: str, classes: int = 0):
    cfg = dcgan.DCGANConfig(nz=8, ngf=4, nc=1, depth=3, batchnorm=False, num_classes=classes)
    return dcgan.make_generator(cfg, dcgan.random_variables(cfg, jax.random.key(seed), batch=64), name=name)


@pytest.fixture(scope="module")
def cgan():
    return _dcgan(0, "cgan", C)


@pytest.fixture(scope="module")
def reference():
    return _dcgan(1, "ref")


def _images(gen, classes: np.ndarray, seed: int = 7) -> np.ndarray:
    z = gen.sample_inputs(jax.random.key(seed), len(classes))
    return quantize_8bit(np.asarray(gen.apply_fn(gen.params, z, jnp.asarray(classes, jnp.int32))))


def test_num_classes(cgan, reference):
    assert num_classes(cgan) == C
    assert num_classes(reference) == 0
    assert num_classes(dcgan.class_conditioned(cgan, 1)) == 0  # class fixed: part of the model


def test_default_result_settings_unchanged():
    assert InversionConfig().result_settings() == {
        "steps": 1500, "restarts": 8, "lr": 0.1, "metric": "mse", "seed": 0, "precision": "float32",
    }
    assert "class_rule" not in InversionConfig(plateau_window=50).result_settings()
    assert InversionConfig(class_rule="min").result_settings()["class_rule"] == "min"
    assert InversionConfig.from_dict(InversionConfig(class_rule="zero").result_settings()).class_rule == "zero"
    with pytest.raises(ValueError, match="class_rule"):
        InversionConfig(class_rule="max")


def test_min_over_classes_equals_per_class_inversions(cgan):
    classes = np.array([0, 1, 2, 1])
    images = _images(cgan, classes)
    out = min_over_classes(cgan, images, CFG)
    per_class = np.stack(
        [invert(cgan, images, CFG, conditions=jnp.full((len(images),), k, jnp.int32)).loss for k in range(C)],
        axis=1,
    )
    np.testing.assert_allclose(out.class_losses, per_class, rtol=0, atol=1e-6)
    np.testing.assert_allclose(out.result.loss, per_class.min(axis=1), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(out.winning_class, per_class.argmin(axis=1))
    assert out.result.best_input.shape == (4, 8) and out.result.reconstruction.shape == (4, 16, 16, 1)
    assert out.result.restart_losses.shape == (4, 2) and out.result.steps_run.shape == (4, 2)
    assert not out.result.diverged.any()


def test_an_image_of_class_k_wins_with_class_k(cgan):
    cfg = CFG.replace(steps=60)
    classes = np.repeat(np.arange(C), 3)
    out = invert_by_class_rule(cgan, _images(cgan, classes, seed=3), cfg.replace(class_rule="min"))
    # Chance is 1/3. Measured over 3 random models x 2 image draws: 6 to 9 of 9 right (this
    # one 8); at least 6 leaves room for float differences between machines.
    assert (out.winning_class == classes).sum() >= 6, (out.winning_class, out.class_losses)
    np.testing.assert_array_equal(out.result.loss, out.class_losses.min(axis=1))


def test_missing_or_out_of_range_classes_are_refused(cgan, reference):
    images = _images(cgan, np.array([0, 1]))
    with pytest.raises(ValueError, match="'cgan' is conditional with 3 classes"):
        calibrated_losses(cgan, reference, images, CFG)
    with pytest.raises(ValueError, match=r"class 3 is outside \[0, 3\)"):
        calibrated_losses(cgan, reference, images, CFG, classes=np.array([0, 3]))
    with pytest.raises(ValueError, match="class -1 is outside"):
        calibrated_losses(cgan, None, images, CFG, classes=np.array([-1, 0]))
    with pytest.raises(ValueError, match="2 images need 2 classes"):
        calibrated_losses(cgan, None, images, CFG, classes=np.array([0]))
    with pytest.raises(ValueError, match="not conditional"):
        calibrated_losses(reference, None, images, CFG, classes=np.array([0, 1]))
    with pytest.raises(ValueError, match="not conditional"):
        profile_classes(reference, 5, 0, classes=[0])
    with pytest.raises(ValueError, match="subset of"):
        profile_classes(cgan, 5, 0, classes=[1, 3])


def test_known_rule_uses_the_given_classes(cgan, reference):
    classes = np.array([2, 0, 1])
    images = _images(cgan, classes)
    loss, ref_loss, cal, *_ = calibrated_losses(cgan, reference, images, CFG, classes=classes)
    want = invert(cgan, images, CFG, conditions=jnp.asarray(classes, jnp.int32)).loss
    np.testing.assert_array_equal(loss, want)
    np.testing.assert_array_equal(ref_loss, invert(reference, images, CFG).loss)
    np.testing.assert_array_equal(cal, calibrate(want, ref_loss))
    # "min" ignores classes; its loss is never above the known class's
    mloss = calibrated_losses(cgan, None, images, CFG.replace(class_rule="min"), classes=classes)[0]
    assert np.all(mloss <= want + 1e-6)


def test_zero_rule_is_the_all_zero_class_vector(cgan):
    images = _images(cgan, np.array([0, 1]))
    out = invert_by_class_rule(cgan, images, CFG.replace(class_rule="zero"))
    want = invert(cgan, images, CFG, conditions=jnp.full((2,), -1, jnp.int32)).loss
    np.testing.assert_array_equal(out.result.loss, want)
    assert out.winning_class is None
    other = cgan.replace(info={**cgan.info, "architecture": "other"})
    with pytest.raises(ValueError, match="'zero' is not supported"):
        invert_by_class_rule(other, images, CFG.replace(class_rule="zero"))


def test_unconditional_attribution_is_unchanged(reference):
    model, ref = reference, _dcgan(5, "ref2")
    prof = build_profile(model, ref, n=4, seed=0, config=CFG)
    images = quantize_8bit(np.asarray(model.generate(jax.random.key(9), 3)))
    att = attribute(images, model, ref, prof)
    loss, ref_loss = invert(model, images, CFG).loss, invert(ref, images, CFG).loss
    np.testing.assert_array_equal(att.loss, loss)
    np.testing.assert_array_equal(att.ref_loss, ref_loss)
    cal = calibrate(loss, ref_loss)
    np.testing.assert_array_equal(att.calibrated_loss, cal)
    test = grubbs.grubbs_test(cal, prof.mu, prof.sigma, prof.n, prof.alpha)
    np.testing.assert_array_equal(att.z, test.z)
    assert att.winning_class is None
    own = quantize_8bit(np.asarray(model.generate(jax.random.key(0), 4)))
    np.testing.assert_allclose(prof.losses, invert(model, own, CFG).loss, rtol=0, atol=0)


def test_profile_classes_are_deterministic_and_drawn_from_the_pool(cgan, reference):
    a = profile_classes(cgan, 50, 3)
    np.testing.assert_array_equal(a, profile_classes(cgan, 50, 3))
    assert set(a.tolist()) == {0, 1, 2} and a.dtype == np.int32
    assert set(profile_classes(cgan, 50, 3, classes=[2, 0]).tolist()) == {0, 2}
    assert profile_classes(reference, 50, 3) is None


def test_conditional_profiles_and_their_class_rule(cgan, reference):
    known = build_profile(cgan, reference, n=3, seed=1, config=CFG)
    drawn = profile_classes(cgan, 3, 1)
    z = cgan.sample_inputs(jax.random.key(1), 3)
    images = quantize_8bit(np.asarray(cgan.apply_fn(cgan.params, z, jnp.asarray(drawn))))
    want = invert(cgan, images, CFG, conditions=jnp.asarray(drawn)).loss
    np.testing.assert_array_equal(np.array(known.losses, np.float32), want)
    mincfg = CFG.replace(class_rule="min")
    by_min = build_profile(cgan, reference, n=3, seed=1, config=mincfg)
    np.testing.assert_allclose(by_min.losses, min_over_classes(cgan, images, CFG).result.loss, atol=1e-6)
    assert by_min.config["class_rule"] == "min" and "class_rule" not in known.config
    with pytest.raises(ProfileMismatchError, match="class_rule"):
        check_compatible(by_min, cgan, reference, CFG)
    with pytest.raises(ProfileMismatchError, match="class_rule"):
        check_compatible(known, cgan, reference, mincfg)
    check_compatible(by_min, cgan, reference, mincfg)
    att = attribute(images, cgan, reference, by_min)  # settings from the profile: "min"
    assert att.winning_class.shape == (3,)
    att_known = attribute(images, cgan, reference, known, classes=drawn)
    np.testing.assert_array_equal(att_known.winning_class, drawn)
    with pytest.raises(ValueError, match="conditional with 3 classes"):
        attribute(images, cgan, reference, known)


SCREEN = CFG.replace(class_rule="min", steps=30, class_screen_steps=5)


def test_screening_keeps_the_best_classes_with_their_full_minimum_losses(cgan):
    """Each kept class's loss equals its loss under the full minimum (same starts, same
    steps); the image's loss is the best kept one, and the benchmark's offline rule
    (screening losses + the full minimum's per-class losses) gives the same result."""
    from benchmarks.accuracy.tables import screened

    images = _images(cgan, np.array([0, 1, 2, 1, 0, 2]))
    full = min_over_classes(cgan, images, SCREEN.replace(class_screen_steps=0))
    short = min_over_classes(cgan, images, SCREEN.replace(steps=5, class_screen_steps=0))
    for keep in (1, 2):
        cut = min_over_classes(cgan, images, SCREEN.replace(class_screen_keep=keep))
        order = np.argsort(short.class_losses, axis=1, kind="stable")[:, :keep]
        np.testing.assert_array_equal(np.take_along_axis(cut.class_losses, order, 1),
                                      np.take_along_axis(full.class_losses, order, 1))
        loss, winner = screened(full.class_losses, short.class_losses, keep)
        np.testing.assert_array_equal(cut.result.loss, loss.astype(np.float32))
        np.testing.assert_array_equal(cut.winning_class, winner)
        # work: every class for 5 steps, the kept ones for 30, both restarts
        np.testing.assert_array_equal(cut.result.steps_run.sum(axis=1), 2 * (C * 5 + keep * 30))
    assert not np.array_equal(cut.result.loss, short.result.loss)  # the kept ones ran on


def test_screening_that_keeps_every_class_is_the_full_minimum(cgan):
    images = _images(cgan, np.array([2, 0, 1]))
    full = min_over_classes(cgan, images, SCREEN.replace(class_screen_steps=0))
    every = min_over_classes(cgan, images, SCREEN.replace(class_screen_keep=C))
    np.testing.assert_array_equal(every.result.loss, full.result.loss)
    np.testing.assert_array_equal(every.class_losses, full.class_losses)


@pytest.mark.parametrize(("changes", "message"), [
    ({"class_screen_steps": 5}, "class_rule 'min'"),
    ({"class_rule": "min", "class_screen_steps": 20}, "must lie in"),
    ({"class_rule": "min", "class_screen_steps": 5, "class_screen_keep": 0}, "keep must be >= 1"),
])
def test_impossible_screening_settings_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        CFG.replace(**changes)


def test_screening_is_a_result_setting_only_when_on():
    assert "class_screen_steps" not in CFG.replace(class_rule="min").result_settings()
    on = SCREEN.result_settings()
    assert (on["class_screen_steps"], on["class_screen_keep"]) == (5, 2)
    assert InversionConfig.from_dict(on).result_settings() == on
