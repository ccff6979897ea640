"""Behaviour of the batched inversion engine."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ronan_jax.engine.config import InversionConfig
from ronan_jax.engine.generator import Generator
from ronan_jax.engine.invert import image_prng_key, invert
from ronan_jax.engine.program import compiled_program, resolve_loop
from ronan_jax.models import dcgan

CFG = InversionConfig(steps=40, restarts=4, lr=0.1, loop="chunked", unroll=10)


@pytest.fixture(scope="session")
def tiny_gen() -> Generator:
    cfg = dcgan.DCGANConfig(nz=16, ngf=8, nc=1, depth=3)
    variables = dcgan.init_variables(cfg, jax.random.key(0))
    return dcgan.make_generator(cfg, variables, name="tiny-dcgan")


@pytest.fixture(scope="session")
def mixed_images(tiny_gen: Generator) -> np.ndarray:
    own = np.round(np.asarray(tiny_gen.generate(jax.random.key(1), 3)) * 255) / 255
    noise = np.random.default_rng(0).random((3, *tiny_gen.output_shape)).astype(np.float32)
    return np.concatenate([own, noise]).astype(np.float32)


def test_generated_images_invert_to_far_lower_loss_than_noise(tiny_gen, mixed_images):
    res = invert(tiny_gen, mixed_images, CFG.replace(steps=150))
    own, other = res.loss[:3], res.loss[3:]
    assert np.all(own < 1e-3)
    assert own.max() * 10 < other.min()
    assert res.reconstruction.shape == mixed_images.shape
    assert res.best_input.shape == (6, 16)
    assert res.restart_losses.shape == (6, 4)
    assert not res.diverged.any()


def test_reported_loss_is_the_minimum_over_restarts_and_matches_reconstruction(tiny_gen, mixed_images):
    res = invert(tiny_gen, mixed_images, CFG)
    np.testing.assert_allclose(res.loss, res.restart_best.min(axis=1))
    assert np.all(res.restart_best <= res.restart_losses + 1e-12)
    recon_mse = np.mean((res.reconstruction - mixed_images) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(recon_mse, res.loss, rtol=1e-4)
    again = np.asarray(tiny_gen(jnp.asarray(res.best_input)))
    np.testing.assert_allclose(again, res.reconstruction, atol=1e-6)


def test_batch_result_equals_one_image_at_a_time(tiny_gen, mixed_images):
    batch = invert(tiny_gen, mixed_images, CFG)
    for i, img in enumerate(mixed_images):
        single = invert(tiny_gen, img[None], CFG)
        np.testing.assert_allclose(single.loss[0], batch.loss[i], rtol=1e-5)
        np.testing.assert_allclose(single.restart_best[0], batch.restart_best[i], rtol=1e-5)


def test_result_does_not_depend_on_order_or_chunking(tiny_gen, mixed_images):
    base = invert(tiny_gen, mixed_images, CFG)
    order = np.array([4, 0, 5, 2, 1, 3])
    shuffled = invert(tiny_gen, mixed_images[order], CFG.replace(max_batch=8))  # 2 images/call
    np.testing.assert_allclose(shuffled.loss, base.loss[order], rtol=1e-5)


def test_same_seed_is_deterministic_and_other_seed_differs(tiny_gen, mixed_images):
    a = invert(tiny_gen, mixed_images, CFG)
    b = invert(tiny_gen, mixed_images, CFG)
    c = invert(tiny_gen, mixed_images, CFG.replace(seed=1))
    np.testing.assert_array_equal(a.loss, b.loss)
    np.testing.assert_array_equal(a.best_input, b.best_input)
    assert not np.allclose(a.restart_best, c.restart_best)


def test_image_prng_key_depends_on_content_only():
    img = np.zeros((4, 4, 1), np.float32)
    k1 = jax.random.key_data(image_prng_key(0, img))
    k2 = jax.random.key_data(image_prng_key(0, img.copy()))
    k3 = jax.random.key_data(image_prng_key(0, img + 1 / 255))
    k4 = jax.random.key_data(image_prng_key(1, img))
    assert np.array_equal(k1, k2)
    assert not np.array_equal(k1, k3)
    assert not np.array_equal(k1, k4)


def test_scan_loop_matches_chunked_loop(tiny_gen, mixed_images):
    a = invert(tiny_gen, mixed_images, CFG.replace(loop="chunked"))
    b = invert(tiny_gen, mixed_images, CFG.replace(loop="scan"))
    np.testing.assert_allclose(a.loss, b.loss, rtol=1e-4)
    assert resolve_loop("auto", "cpu") == "chunked"
    assert resolve_loop("auto", "gpu") == "scan"


def test_second_batch_of_same_shape_does_not_recompile(tiny_gen, mixed_images):
    cfg = CFG.replace(steps=20, seed=7)
    invert(tiny_gen, mixed_images[:4], cfg)
    program = compiled_program(tiny_gen, cfg)
    sizes = [f._cache_size() for f in program.pieces()]
    invert(tiny_gen, mixed_images[2:6] * 0.5, cfg)
    assert compiled_program(tiny_gen, cfg) is program
    assert [f._cache_size() for f in program.pieces()] == sizes
    # A ragged final batch is padded to a power-of-two bucket: 3 images -> 4, no new shape.
    invert(tiny_gen, mixed_images[:3], cfg)
    assert [f._cache_size() for f in program.pieces()] == sizes


def test_bfloat16_compute_keeps_float32_losses_and_separates(tiny_gen, mixed_images):
    res = invert(tiny_gen, mixed_images, CFG.replace(steps=150, precision="bfloat16"))
    assert res.loss.dtype == np.float32
    assert res.best_input.dtype == np.float32
    assert res.loss[:3].max() * 5 < res.loss[3:].min()


def test_diverging_restarts_never_count_as_low_loss():
    def apply(params, z, condition):
        # A generator that produces NaN for any input with a negative first coordinate.
        img = jax.nn.sigmoid(z @ params["w"]).reshape(z.shape[0], 4, 4, 1)
        bad = (z[:, 0] < 0).reshape(-1, 1, 1, 1)
        return jnp.where(bad, jnp.nan, img)

    w = jax.random.normal(jax.random.key(0), (8, 16)) * 0.3
    gen = Generator("nan-gen", apply, {"w": w}, (8,), (4, 4, 1))
    imgs = np.full((3, 4, 4, 1), 0.5, np.float32)
    imgs[1] = 0.2
    res = invert(gen, imgs, InversionConfig(steps=10, restarts=6, loop="chunked"))
    finite = np.isfinite(res.restart_best)
    assert np.all(np.isfinite(res.loss[~res.diverged]))
    assert np.all(res.restart_best[finite] >= 0)
    # Every restart sees NaN when the whole input space is bad: the image is flagged.
    always_bad = Generator("all-nan", lambda p, z, c: jnp.full((z.shape[0], 4, 4, 1), jnp.nan), {}, (8,), (4, 4, 1))
    res2 = invert(always_bad, imgs, InversionConfig(steps=5, restarts=2, loop="chunked"))
    assert res2.diverged.all()
    assert np.all(np.isinf(res2.loss))


def test_rejects_images_of_the_wrong_shape(tiny_gen):
    with pytest.raises(ValueError, match="do not match"):
        invert(tiny_gen, np.zeros((2, 8, 8, 1), np.float32), CFG)
    with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
        invert(tiny_gen, np.zeros((16, 16, 1), np.float32), CFG)


def test_stop_below_stops_decided_images_early_and_never_flips_a_decision(tiny_gen, mixed_images):
    full = invert(tiny_gen, mixed_images, CFG.replace(steps=100))
    threshold = np.full(len(mixed_images), 1e-3)
    early = invert(tiny_gen, mixed_images, CFG.replace(steps=100), stop_below=threshold)
    np.testing.assert_array_equal(early.loss < threshold, full.loss < threshold)
    own, other = slice(0, 3), slice(3, 6)
    assert np.all(early.steps_run[own] < 100)  # generated images fall below 1e-3 quickly
    assert np.all(early.steps_run[other] == 100)
    np.testing.assert_allclose(early.loss[other], full.loss[other], rtol=1e-5)
    assert np.all(full.steps_run == 100)


def test_successive_halving_keeps_the_better_half_of_restarts(tiny_gen, mixed_images):
    cfg = CFG.replace(steps=100, check_every=10, halving_at=(0.5,))
    res = invert(tiny_gen, mixed_images, cfg)
    for row in res.steps_run:
        assert sorted(row.tolist()) == [50, 50, 100, 100]
    # The survivors were the two best at the halving point, so the winner ran all steps.
    winners = res.steps_run[np.arange(6), res.restart_best.argmin(axis=1)]
    assert np.all(winners == 100)
    assert cfg.result_settings()["halving_at"] == [0.5]


def test_plateau_stop_ends_stalled_restarts_and_is_recorded(tiny_gen, mixed_images):
    cfg = CFG.replace(steps=200, check_every=20, plateau_window=40, plateau_rtol=0.5)
    res = invert(tiny_gen, mixed_images, cfg)
    assert res.steps_run.min() < 200
    assert res.steps_run.sum() < 200 * res.steps_run.size
    assert "plateau_window" in cfg.result_settings()
    assert "plateau_window" not in CFG.result_settings()


def test_early_stopping_result_of_an_image_does_not_depend_on_neighbours(tiny_gen, mixed_images):
    cfg = CFG.replace(steps=60, check_every=20, halving_at=(0.34,), plateau_window=20, plateau_rtol=0.05)
    batch = invert(tiny_gen, mixed_images, cfg)
    single = invert(tiny_gen, mixed_images[4:5], cfg)
    np.testing.assert_array_equal(single.steps_run[0], batch.steps_run[4])
    np.testing.assert_allclose(single.loss[0], batch.loss[4], rtol=1e-5)
