"""Robust mode (issue 20): the post-processing stages are the identity at phi = 0,
differentiable and bounded; a filtered belonging image of the zoo's dcgan-mnist is judged
the model's in robust mode and not in the default mode; the filter family alone cannot fit a
real image; the mode is a result setting profiles record and audits must match."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from robust_helpers import adam_fit

from ronan_jax.attribution import grubbs
from ronan_jax.attribution.profile import ProfileMismatchError, check_compatible, quantize_8bit
from ronan_jax.engine.config import InversionConfig
from ronan_jax.engine.invert import invert
from ronan_jax.engine.robust import (
    BIAS_BOUND,
    ROBUST_MODES,
    apply_blur,
    phi_size,
    postprocess,
    robust_generator,
    split_inputs,
)
from ronan_jax.models.resolver import default_reference_spec, load_model, load_reference

STEPS, RESTARTS = 200, 2


def tone_filter(images: np.ndarray) -> np.ndarray:
    """A brightness/contrast/gamma filter (as pilgram's tonal filters), saved as 8 bits."""
    return np.round(np.clip(0.8 * images + 0.15, 0, 1) ** 0.9 * 255) / 255


@pytest.fixture(scope="module")
def zoo():
    model = load_model("builtin:dcgan-mnist")
    reference = load_reference(default_reference_spec("builtin:dcgan-mnist"))
    belonging = np.asarray(quantize_8bit(np.asarray(model.generate(jax.random.key(11), 4))))
    return model, reference.for_shape(model.output_shape), belonging


def calibrated(model, reference, images, mode):
    cfg = InversionConfig(steps=STEPS, restarts=RESTARTS, robust=mode)
    return np.asarray(invert(model, images, cfg).loss) / np.asarray(invert(reference, images, cfg).loss)


@pytest.mark.parametrize("mode", [m for m in ROBUST_MODES if phi_size(m, 1) > 0])  # jpeg: test_jpeg.py
@pytest.mark.parametrize("channels", [1, 3])
def test_each_stage_is_the_identity_at_phi_zero_and_differentiable(mode, channels):
    images = jax.random.uniform(jax.random.key(0), (2, 8, 8, channels), minval=0.05, maxval=0.95)
    phi = jnp.zeros((2, phi_size(mode, channels)))
    np.testing.assert_allclose(np.asarray(postprocess(mode, images, phi)), np.asarray(images), atol=1e-6)
    target = images[::-1]
    grad = jax.grad(lambda p: jnp.sum((postprocess(mode, images, p) - target) ** 2))(phi)
    assert np.all(np.isfinite(grad)) and np.all(np.abs(np.asarray(grad)).max(axis=1) > 0)
    # bounded: even extreme parameters keep the images in [0, 1], as an 8-bit image is
    wild = postprocess(mode, images, jnp.full_like(phi, 50.0))
    assert float(wild.min()) >= 0.0 and float(wild.max()) <= 1.0


def test_the_blur_kernel_keeps_flat_images_and_blurs_or_sharpens_by_its_sign():
    flat = jnp.full((1, 6, 6, 1), 0.3)
    for s in (-3.0, 0.5, 3.0):
        np.testing.assert_allclose(np.asarray(apply_blur(flat, jnp.array([[s]]))), 0.3, atol=1e-6)
    spike = jnp.zeros((1, 5, 5, 1)).at[0, 2, 2, 0].set(1.0)
    blurred, sharpened = (float(apply_blur(spike, jnp.array([[s]]))[0, 2, 2, 0]) for s in (5.0, -5.0))
    assert blurred < 1.0 < sharpened


def test_robust_inputs_start_at_the_prior_draws_and_the_identity(zoo):
    model, _, _ = zoo
    wrapped = robust_generator(model, "tone")
    assert wrapped.input_shape == (int(np.prod(model.input_shape)) + phi_size("tone", 1),)
    assert wrapped.param_hash == model.param_hash and wrapped.info["robust"] == "tone"
    key = jax.random.key(5)
    z, phi = split_inputs(model, "tone", np.asarray(wrapped.sample_inputs(key, 3)))
    np.testing.assert_array_equal(z, np.asarray(model.sample_inputs(key, 3)))
    assert np.all(phi == 0)
    np.testing.assert_allclose(np.asarray(wrapped.generate(key, 3)), np.asarray(model.generate(key, 3)), atol=1e-6)
    assert robust_generator(model, "off") is model
    # a warm start estimates z with the model's encoder and starts phi at the identity
    assert model.encoder is not None and wrapped.encoder.param_hash == model.encoder.param_hash
    images = np.asarray(model.generate(key, 3))
    z_enc, phi_enc = split_inputs(model, "tone", np.asarray(wrapped.encoder(images)))
    np.testing.assert_allclose(z_enc, np.asarray(model.encoder(images)), atol=1e-6)
    assert np.all(phi_enc == 0)


def test_a_filtered_belonging_image_is_the_models_in_robust_mode_only(zoo):
    model, reference, belonging = zoo
    filtered = tone_filter(belonging)
    off_clean, off_filtered = (calibrated(model, reference, x, "off") for x in (belonging, filtered))
    tone_clean, tone_filtered = (calibrated(model, reference, x, "tone") for x in (belonging, filtered))
    # default mode: the filter lifts every calibrated loss far above the clean images'
    assert off_filtered.min() > 5 * off_clean.max(), (off_clean, off_filtered)
    # robust mode: filtered images calibrate like clean ones, and Grubbs' test against the
    # clean images' statistics accepts them where the default mode's rejects them
    assert np.median(tone_filtered) < 2 * np.median(tone_clean), (tone_clean, tone_filtered)
    for clean, test, expected in ((off_clean, off_filtered, False), (tone_clean, tone_filtered, True)):
        mu, sigma = float(np.mean(clean)), float(np.std(clean, ddof=1))
        verdicts = grubbs.grubbs_test(test, mu, sigma, len(clean), 0.05).belonging
        assert np.mean(verdicts) >= 0.75 if expected else not np.any(verdicts), (mode_of(expected), test)


def mode_of(robust: bool) -> str:
    return "tone" if robust else "off"


def test_the_filter_family_alone_cannot_fit_a_real_image(zoo):
    from ronan_jax.zoo import data

    model, _, belonging = zoo
    real = np.asarray(data.dataset("mnist-unseen").images[:2], np.float32)
    real = real / 255.0 if real.max() > 1 else real
    z = model.sample_inputs(jax.random.key(9), 2)  # fixed random inputs: only phi moves
    drawn = model(z)
    phi = jnp.zeros((2, phi_size("tone+blur", 1)))

    def loss(p):
        return jnp.mean((postprocess("tone+blur", drawn, p) - real) ** 2, axis=(1, 2, 3))

    phi = adam_fit(loss, phi)
    fitted = np.asarray(loss(phi))
    inverted = np.asarray(invert(model, belonging[:2], InversionConfig(steps=STEPS, restarts=RESTARTS, robust="tone+blur")).loss)
    assert fitted.min() > 20 * inverted.max(), (fitted, inverted)  # far from belonging level
    assert fitted.min() > 0.01  # a real digit stays visibly unmatched
    assert BIAS_BOUND < 0.5


def test_the_mode_is_a_result_setting_and_a_mismatched_audit_is_refused(zoo):
    from ronan_jax.attribution.build import build_profile

    model, reference, _ = zoo
    assert "robust" not in InversionConfig().result_settings()
    assert InversionConfig(robust="tone").result_settings()["robust"] == "tone"
    with pytest.raises(ValueError, match="robust must be one of"):
        InversionConfig(robust="webp")
    cfg = InversionConfig(steps=2, restarts=1, robust="tone")
    profile = build_profile(model, reference, n=3, config=cfg)
    assert profile.config["robust"] == "tone"
    check_compatible(profile, model, reference, cfg)
    with pytest.raises(ProfileMismatchError, match="robust"):
        check_compatible(profile, model, reference, cfg.replace(robust="off"))


@pytest.mark.parametrize("mode", ["tone", "tone+resample"])
def test_ronan_profile_robust_is_recorded_and_the_audit_runs_in_it(world, tmp_path, mode):
    import json

    from e2e_helpers import db_rows, invoke, write_mixed_folder

    from ronan_jax.engine.resample import downup_sizes

    out = tmp_path / "robust.json"
    built = invoke(["profile", "--model", world.model, "--reference", world.reference,
                    "--samples", 3, "--steps", 2, "--restarts", 1, "--robust", mode,
                    "-o", out])
    assert built.exit_code == 0, built.output
    assert f"robust {mode}" in " ".join(built.output.split())
    assert json.loads(out.read_text())["config"]["robust"] == mode
    folder = write_mixed_folder(world, tmp_path / "imgs", n=2)
    db = tmp_path / "r.sqlite"
    audited = invoke(["audit", str(folder), "--model", world.model, "--reference", world.reference,
                      "--profile", out, "--db", db, "--quiet", "--keep-evidence"])
    assert audited.exit_code == 0, audited.output
    rows = db_rows(db)
    assert len(rows) == 4 and all(r["verdict"] in ("belonging", "non-belonging") for r in rows)
    # the evidence says which resize each inversion found (a size the stage tries, or none)
    for row in rows:
        with np.load(row["evidence_path"]) as npz:
            if mode == "tone":
                assert "resized_to" not in npz.files
                continue
            h, w = npz["image"].shape[:2]
            for key in ("resized_to", "ref_resized_to"):
                assert tuple(npz[key]) in {(h, w), *downup_sizes(h, w)}
    if mode != "tone":
        return
    bad = invoke(["profile", "--model", world.model, "--robust", "webp", "-o", tmp_path / "x.json"])
    assert bad.exit_code == 2 and "webp" in bad.output
