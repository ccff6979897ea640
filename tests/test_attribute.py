"""Algorithm 1 end to end on small random generators, and profile bookkeeping."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from ronan_jax.attribution.attribute import attribute
from ronan_jax.attribution.build import build_profile
from ronan_jax.attribution.profile import (
    Profile,
    ProfileMismatchError,
    config_from_profile,
    quantize_8bit,
)
from ronan_jax.engine.config import InversionConfig
from ronan_jax.engine.invert import invert
from ronan_jax.models import dcgan

CFG = InversionConfig(steps=120, restarts=4, lr=0.1, loop="chunked", unroll=20, max_batch=512, check_every=20)


def _random_dcgan(seed: int, nz: int, ngf: int, name: str):
    cfg = dcgan.DCGANConfig(nz=nz, ngf=ngf, nc=1, depth=3)
    return dcgan.make_generator(cfg, dcgan.random_variables(cfg, jax.random.key(seed)), name=name)


@pytest.fixture(scope="module")
def models():
    return _random_dcgan(0, 16, 8, "model"), _random_dcgan(1, 24, 12, "reference")


@pytest.fixture(scope="module")
def natural_crops() -> np.ndarray:
    """100 greyscale 16x16 crops of photos shipped inside scikit-image."""
    from skimage import data

    rng = np.random.default_rng(0)
    photos = [data.camera(), data.moon(), data.coins(), data.page(), data.text()]
    crops = []
    for i in range(100):
        img = photos[i % len(photos)].astype(np.float32) / 255.0
        y, x = rng.integers(0, img.shape[0] - 16), rng.integers(0, img.shape[1] - 16)
        crops.append(img[y : y + 16, x : x + 16, None])
    return quantize_8bit(np.stack(crops))


@pytest.fixture(scope="module")
def profile(models) -> Profile:
    model, reference = models
    return build_profile(model, reference, n=100, seed=0, config=CFG)


def test_belonging_images_invert_10x_lower_than_natural_crops(models, natural_crops):
    model, _ = models
    own = quantize_8bit(np.asarray(model.generate(jax.random.key(42), 100)))
    own_loss = invert(model, own, CFG).loss
    crop_loss = invert(model, natural_crops, CFG).loss
    print(f"median loss: belonging {np.median(own_loss):.2e}, natural crops {np.median(crop_loss):.2e}")
    assert np.median(own_loss) * 10 < np.median(crop_loss)
    assert np.mean(own_loss * 10 < np.median(crop_loss)) >= 0.95


def test_attribute_separates_belonging_from_natural_images(models, natural_crops, profile):
    model, reference = models
    own = quantize_8bit(np.asarray(model.generate(jax.random.key(7), 50)))
    out_own = attribute(own, model, reference, profile)
    out_nat = attribute(natural_crops[:50], model, reference, profile)
    tp = int(np.sum(out_own.verdict == "belonging"))
    tn = int(np.sum(out_nat.verdict == "non-belonging"))
    print(f"belonging judged belonging: {tp}/50, natural judged non-belonging: {tn}/50")
    assert tp >= 47
    assert tn >= 47
    assert np.all(out_nat.p_value[out_nat.verdict == "non-belonging"] < profile.alpha)
    np.testing.assert_allclose(out_own.calibrated_loss, out_own.loss / out_own.ref_loss, rtol=1e-6)


def test_profile_records_its_provenance_and_roundtrips(models, profile, tmp_path):
    model, reference = models
    assert profile.n == 100
    assert profile.model == {"name": "model", "param_hash": model.param_hash}
    assert profile.reference["param_hash"] == reference.param_hash
    assert profile.config == CFG.result_settings()
    np.testing.assert_allclose(profile.mu, np.mean(profile.calibrated_losses))
    np.testing.assert_allclose(profile.sigma, np.std(profile.calibrated_losses, ddof=1))
    assert {"jax", "optax", "flax"} <= set(profile.versions)
    loaded = Profile.load(profile.save(tmp_path / "p.json"))
    assert loaded == profile
    assert loaded.critical_value == pytest.approx(3.2095, abs=1e-4)
    assert config_from_profile(loaded).result_settings() == CFG.result_settings()


def test_profile_is_reproducible_from_its_seed(models):
    model, reference = models
    cfg = CFG.replace(steps=20)
    a = build_profile(model, reference, n=5, seed=3, config=cfg)
    b = build_profile(model, reference, n=5, seed=3, config=cfg)
    assert a.calibrated_losses == b.calibrated_losses


def test_trimmed_profile_leaves_failed_inversions_out_of_mu_and_sigma(models, profile):
    from ronan_jax.attribution.profile import belonging_stats

    cal = np.array(profile.calibrated_losses)
    plain = belonging_stats(cal)
    assert plain[:3] == (profile.mu, profile.sigma, profile.n) and plain[3] == []
    failed = np.r_[cal, 40.0 * cal.max(), np.nan]  # one failed and one diverged inversion
    mu, sigma, n, trimmed = belonging_stats(failed, trim_outliers=True)
    assert len(cal) in trimmed and n <= len(cal)
    assert sigma <= profile.sigma and mu <= profile.mu
    assert belonging_stats(failed)[1] > 5 * profile.sigma  # what the plain statistics do
    model, reference = models
    built = build_profile(model, reference, n=5, seed=3, config=CFG.replace(steps=20),
                          trim_outliers=True)
    assert built.n == 5 - len(built.trimmed)
    older = {k: v for k, v in profile.to_dict().items() if k not in ("trimmed", "digest")}
    again = Profile.from_dict({**older, "format": 1})
    assert again.trimmed == []  # profiles written before the option (format 1) still load


def test_audit_with_other_settings_or_weights_is_refused(models, profile, natural_crops):
    model, reference = models
    with pytest.raises(ProfileMismatchError, match="steps: profile 120, audit 50"):
        attribute(natural_crops[:2], model, reference, profile, CFG.replace(steps=50))
    with pytest.raises(ProfileMismatchError, match="model weights differ"):
        attribute(natural_crops[:2], reference, reference, profile)
    with pytest.raises(ProfileMismatchError, match="no reference"):
        attribute(natural_crops[:2], model, None, profile)


def test_uncalibrated_profile_uses_raw_losses(models):
    model, _ = models
    cfg = CFG.replace(steps=20)
    prof = build_profile(model, None, n=5, seed=1, config=cfg)
    assert not prof.calibrated and prof.ref_losses is None
    assert prof.calibrated_losses == prof.losses


def test_decision_stop_gives_the_same_verdicts_with_fewer_steps(models, natural_crops, profile):
    model, reference = models
    own = quantize_8bit(np.asarray(model.generate(jax.random.key(9), 20)))
    mixed = np.concatenate([own, natural_crops[:20]])
    full = attribute(mixed, model, reference, profile)
    fast = attribute(mixed, model, reference, profile, decision_stop=True)
    np.testing.assert_array_equal(fast.verdict, full.verdict)
    steps_full = full.model_result.steps_run.sum()
    steps_fast = fast.model_result.steps_run.sum()
    print(f"model steps: full {steps_full}, decision stop {steps_fast}")
    assert steps_fast < steps_full
    assert np.all(fast.model_result.steps_run[:20][fast.verdict[:20] == "belonging"] < CFG.steps)
    assert np.all(fast.model_result.steps_run[20:] == CFG.steps)


def test_interrupted_profile_build_resumes_from_its_progress_file(models, tmp_path):
    model, reference = models
    cfg = CFG.replace(steps=20, max_batch=8)  # 2 images per chunk
    progress = tmp_path / "progress.jsonl"
    calls = []
    full = build_profile(model, reference, n=6, seed=5, config=cfg, resume_path=progress)
    lines = progress.read_text().splitlines()
    assert len(lines) == 3
    # Drop the last chunk, as if the process had been killed before writing it.
    progress.write_text("\n".join(lines[:2]) + "\n{\"truncat")
    resumed = build_profile(
        model, reference, n=6, seed=5, config=cfg, resume_path=progress,
        progress=lambda d, t: calls.append(d),
    )
    assert resumed.calibrated_losses == pytest.approx(full.calibrated_losses, rel=1e-5)
    assert calls == [2, 4, 6]
    assert len(progress.read_text().splitlines()) == 4  # only the missing chunk was redone


def test_losses_measured_elsewhere_seed_a_build_that_inverts_nothing(models, tmp_path, monkeypatch):
    from ronan_jax.attribution import build as build_module
    from ronan_jax.attribution.build import record_measured_losses

    model, reference = models
    cfg = CFG.replace(steps=20, max_batch=8)
    full = build_profile(model, reference, n=6, seed=5, config=cfg)
    seeded = tmp_path / "seeded.jsonl"
    record_measured_losses(seeded, model, reference, 6, 5, cfg, np.array(full.losses),
                           np.array(full.ref_losses))

    def no_inversion(*args, **kwargs):
        raise AssertionError("a seeded build must not invert")

    monkeypatch.setattr(build_module, "calibrated_losses", no_inversion)
    again = build_profile(model, reference, n=6, seed=5, config=cfg, resume_path=seeded)
    assert again.calibrated_losses == pytest.approx(full.calibrated_losses, rel=1e-12)
    assert (again.mu, again.sigma) == pytest.approx((full.mu, full.sigma), rel=1e-12)
    # losses of other settings are not taken: that build inverts
    with pytest.raises(AssertionError, match="must not invert"):
        build_profile(model, reference, n=6, seed=5, config=cfg.replace(steps=21), resume_path=seeded)
    with pytest.raises(ValueError, match="expected 6 losses"):
        record_measured_losses(seeded, model, reference, 6, 5, cfg, np.ones(5), np.ones(5))


def test_failed_inversions_are_isolated_high_losses_not_a_heavy_tail(profile):
    from ronan_jax.attribution.profile import (
        belonging_stats,
        failed_inversion_warning,
        failed_inversions,
    )

    tail = np.random.default_rng(0).lognormal(0.0, 0.8, 100)  # right-skewed, no failure
    assert failed_inversions(tail) == []
    spiked = np.r_[tail, 11.0 * tail.max(), np.nan]
    assert failed_inversions(spiked) == [100]
    assert failed_inversions(np.r_[tail, 30 * tail.max(), 12 * tail.max()]) == [100, 101]
    assert failed_inversions([1.0, 50.0, np.nan]) == []  # too few to tell
    assert failed_inversion_warning(profile) is None
    cal = np.r_[profile.calibrated_losses, 40.0 * max(profile.calibrated_losses)]
    mu, sigma, n, _ = belonging_stats(cal)
    failed = dataclasses.replace(profile, calibrated_losses=list(cal), mu=mu, sigma=sigma, n=n)
    text = failed_inversion_warning(failed)
    assert text is not None and text.startswith(f"1 of this profile's {cal.size} calibrated")
    assert f"to {failed.threshold:.3g}" in text and f"from {profile.threshold:.3g}" in text
    trimmed = dataclasses.replace(failed, trimmed=[cal.size - 1])
    assert failed_inversion_warning(trimmed) is None  # already left out
