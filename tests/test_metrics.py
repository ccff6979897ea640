"""Reconstruction metrics: values against NumPy / skimage, transforms, dtypes, registry."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage import data
from skimage.metrics import structural_similarity
from skimage.transform import resize

from ronan_jax.engine import metrics
from ronan_jax.engine.metrics import METRICS, get_metric, mae, mse, perceptual, ssim, ssim_loss


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _skimage_ssim(x: np.ndarray, y: np.ndarray) -> float:
    return structural_similarity(
        x.astype(np.float64),
        y.astype(np.float64),
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1.0,
        channel_axis=-1,
    )


def _natural(size: int, rgb: bool) -> np.ndarray:
    """A downscaled crop of a skimage sample photo, (size, size, C) float32 in [0, 1]."""
    img = data.astronaut()[100:356, 150:406] if rgb else data.camera()[50:306, 150:406, None]
    img = resize(img.astype(np.float64) / 255.0, (size, size), anti_aliasing=True)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def _smooth(size: int, channels: int, seed: int) -> np.ndarray:
    """Gradients plus low-amplitude noise: a smooth 'natural-ish' synthetic image."""
    rng = _rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = np.stack([np.sin(3 * xx + c) * np.cos(2 * yy - c) for c in range(channels)], -1)
    img = 0.5 + 0.35 * base + 0.05 * rng.standard_normal((size, size, channels))
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def _perturbed(x: np.ndarray, seed: int, scale: float = 0.1) -> np.ndarray:
    noisy = x + scale * _rng(seed).standard_normal(x.shape)
    return np.clip(noisy, 0.0, 1.0).astype(np.float32)


def _reference_ssim(x: np.ndarray, y: np.ndarray, wh: int, ww: int) -> float:
    """Direct NumPy SSIM with an explicit (wh, ww) Gaussian window (sigma 1.5), 'VALID' region."""

    def taps(w: int) -> np.ndarray:
        r = np.arange(w) - (w - 1) / 2
        g = np.exp(-(r**2) / (2 * 1.5**2))
        return g / g.sum()

    win = np.outer(taps(wh), taps(ww))
    x = x.astype(np.float64)
    y = y.astype(np.float64)
    c1, c2 = 0.01**2, 0.03**2
    per_channel = []
    for c in range(x.shape[-1]):

        def filt(a: np.ndarray) -> np.ndarray:
            views = np.lib.stride_tricks.sliding_window_view(a, (wh, ww))
            return np.einsum("ijkl,kl->ij", views, win)

        xc, yc = x[..., c], y[..., c]
        mx, my = filt(xc), filt(yc)
        vx = filt(xc * xc) - mx * mx
        vy = filt(yc * yc) - my * my
        cxy = filt(xc * yc) - mx * my
        s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
        per_channel.append(s.mean())
    return float(np.mean(per_channel))


# --------------------------------------------------------------------------- mse / mae


def test_mse_and_mae_match_numpy_on_random_images() -> None:
    rng = _rng(1)
    x = rng.random((16, 12, 3), dtype=np.float32)
    y = rng.random((16, 12, 3), dtype=np.float32)
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    np.testing.assert_allclose(float(mse(x, y)), np.mean((x64 - y64) ** 2), rtol=1e-6)
    np.testing.assert_allclose(float(mae(x, y)), np.mean(np.abs(x64 - y64)), rtol=1e-6)


def test_losses_of_identical_images_are_zero() -> None:
    x = _natural(32, rgb=True)
    assert float(mse(x, x)) == 0.0
    assert float(mae(x, x)) == 0.0
    assert float(ssim_loss(x, x)) == pytest.approx(0.0, abs=1e-6)


def test_mismatched_shapes_raise() -> None:
    x = np.zeros((8, 8, 3), np.float32)
    y = np.zeros((8, 8, 1), np.float32)
    for fn in (mse, mae, ssim_loss):
        with pytest.raises(ValueError, match="shapes differ"):
            fn(x, y)


# --------------------------------------------------------------------------- ssim


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("rgb", [False, True])
def test_ssim_loss_matches_skimage_on_natural_images(size: int, rgb: bool) -> None:
    x = _natural(size, rgb)
    y = _perturbed(x, seed=size + rgb)
    expected = 1.0 - _skimage_ssim(x, y)
    assert float(ssim_loss(x, y)) == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize(
    ("shape", "seed"), [((32, 32, 1), 0), ((32, 32, 3), 1), ((64, 64, 3), 2), ((64, 48, 1), 3)]
)
def test_ssim_loss_matches_skimage_on_random_and_smooth_images(
    shape: tuple[int, int, int], seed: int
) -> None:
    rng = _rng(seed)
    a = rng.random(shape, dtype=np.float32)
    b = rng.random(shape, dtype=np.float32)
    assert float(ssim_loss(a, b)) == pytest.approx(1.0 - _skimage_ssim(a, b), abs=1e-4)

    s = _smooth(shape[0], shape[2], seed)[:, : shape[1]]
    t = _perturbed(s, seed + 10, scale=0.05)
    assert float(ssim_loss(s, t)) == pytest.approx(1.0 - _skimage_ssim(s, t), abs=1e-4)


def test_ssim_equals_one_minus_ssim_loss_and_stays_in_range() -> None:
    rng = _rng(4)
    x = rng.random((24, 24, 3), dtype=np.float32)
    assert float(ssim(x, x)) == pytest.approx(1.0, abs=1e-6)
    s = float(ssim(x, 1.0 - x))
    assert -1.0 <= s < 0.0  # anti-correlated images
    assert float(ssim_loss(x, 1.0 - x)) == pytest.approx(1.0 - s, abs=1e-7)


@pytest.mark.parametrize(
    ("shape", "window"),
    [((8, 8, 1), (7, 7)), ((10, 10, 3), (9, 9)), ((5, 20, 2), (5, 11)), ((1, 1, 3), (1, 1))],
)
def test_ssim_window_shrinks_to_odd_size_below_eleven_pixels(
    shape: tuple[int, int, int], window: tuple[int, int]
) -> None:
    rng = _rng(5)
    x = rng.random(shape, dtype=np.float32)
    y = _perturbed(x, 6, scale=0.2)
    expected = _reference_ssim(x, y, *window)
    assert float(ssim(x, y)) == pytest.approx(expected, abs=1e-5)
    assert float(ssim_loss(x, x)) == pytest.approx(0.0, abs=1e-6)


def test_reference_implementation_agrees_with_skimage_at_full_window() -> None:
    x = _natural(32, rgb=True)
    y = _perturbed(x, 7)
    assert _reference_ssim(x, y, 11, 11) == pytest.approx(_skimage_ssim(x, y), abs=1e-10)


def test_ssim_rejects_unbatched_shapes_other_than_hwc() -> None:
    with pytest.raises(ValueError, match=r"\(H, W, C\)"):
        ssim_loss(np.zeros((16, 16), np.float32), np.zeros((16, 16), np.float32))


def test_ssim_loss_gradient_is_finite_including_at_identical_images() -> None:
    rng = _rng(8)
    x = jnp.asarray(rng.random((16, 16, 3), dtype=np.float32))
    y = jnp.asarray(rng.random((16, 16, 3), dtype=np.float32))
    grad = jax.jit(jax.grad(ssim_loss))
    g_diff = np.asarray(grad(x, y))
    g_same = np.asarray(grad(x, x))
    assert np.all(np.isfinite(g_diff)) and np.any(g_diff != 0.0)
    assert np.all(np.isfinite(g_same))
    # x == y is the minimum of the loss, so the gradient vanishes there.
    np.testing.assert_allclose(g_same, 0.0, atol=1e-5)
    # Flat images (zero variance everywhere) are the classic 0/0 trap.
    flat = jnp.full((16, 16, 1), 0.5, jnp.float32)
    assert np.all(np.isfinite(np.asarray(grad(flat, flat))))


# --------------------------------------------------------------------------- transforms / dtypes


@pytest.mark.parametrize("name", sorted(METRICS))
def test_metrics_are_jit_and_vmap_able_and_match_per_image_calls(name: str) -> None:
    fn = METRICS[name]
    rng = _rng(9)
    xs = rng.random((3, 16, 16, 3), dtype=np.float32)
    ys = rng.random((3, 16, 16, 3), dtype=np.float32)
    batched = np.asarray(jax.jit(jax.vmap(fn))(xs, ys))
    assert batched.shape == (3,)
    assert batched.dtype == np.float32
    singles = np.array([float(fn(x, y)) for x, y in zip(xs, ys, strict=True)])
    np.testing.assert_allclose(batched, singles, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", sorted(METRICS))
def test_bfloat16_inputs_give_float32_losses(name: str) -> None:
    fn = METRICS[name]
    rng = _rng(10)
    x32 = jnp.asarray(rng.random((16, 16, 3), dtype=np.float32))
    y32 = jnp.asarray(rng.random((16, 16, 3), dtype=np.float32))
    x16, y16 = x32.astype(jnp.bfloat16), y32.astype(jnp.bfloat16)
    out = jax.jit(fn)(x16, y16)
    assert out.dtype == jnp.float32
    # Same value as the float32 metric on the bf16-rounded pixels: the cast happens first.
    ref = fn(x16.astype(jnp.float32), y16.astype(jnp.float32))
    assert float(out) == pytest.approx(float(ref), rel=1e-6, abs=1e-7)
    # Mixed input dtypes are fine too (no strict-promotion error).
    assert fn(x16, y32).dtype == jnp.float32


# --------------------------------------------------------------------------- perceptual hook


class _TinyFeatures(nn.Module):
    """A toy LPIPS-like distance: squared difference of conv features."""

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
        conv = nn.Conv(4, (3, 3))
        fx, fy = nn.relu(conv(x[None])), nn.relu(conv(y[None]))
        return jnp.mean(jnp.square(fx - fy))


def test_perceptual_hook_wraps_flax_module_under_jit_and_vmap() -> None:
    module = _TinyFeatures()
    rng = _rng(11)
    xs = jnp.asarray(rng.random((4, 12, 12, 3), dtype=np.float32))
    ys = jnp.asarray(rng.random((4, 12, 12, 3), dtype=np.float32))
    # Hand-made weights in Flax's layout (module.init would spend seconds on eager RNG ops).
    params = {
        "params": {
            "Conv_0": {
                "kernel": jnp.asarray(rng.standard_normal((3, 3, 3, 4), dtype=np.float32)),
                "bias": jnp.zeros((4,), jnp.float32),
            }
        }
    }
    metric = perceptual(module.apply, params)

    batched = np.asarray(jax.jit(jax.vmap(metric))(xs.astype(jnp.bfloat16), ys))
    assert batched.shape == (4,) and batched.dtype == np.float32
    expected = np.array(
        [
            float(module.apply(params, x.astype(jnp.bfloat16).astype(jnp.float32), y))
            for x, y in zip(xs, ys, strict=True)
        ]
    )
    np.testing.assert_allclose(batched, expected, rtol=1e-5)
    assert float(metric(xs[0], xs[0])) == 0.0
    g = jax.grad(metric)(xs[0], ys[0])
    assert np.all(np.isfinite(np.asarray(g)))


def test_perceptual_hook_rejects_non_scalar_outputs_and_non_callables() -> None:
    metric = perceptual(lambda p, x, y: p * (x - y), 2.0)
    with pytest.raises(ValueError, match="scalar"):
        metric(np.zeros((4, 4, 1), np.float32), np.ones((4, 4, 1), np.float32))
    with pytest.raises(TypeError):
        perceptual("lpips", None)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- registry


def test_registry_names_resolve_to_the_metric_functions() -> None:
    assert METRICS == {"mse": mse, "mae": mae, "ssim": ssim_loss}
    assert get_metric("mse") is mse
    assert get_metric(" SSIM ") is ssim_loss
    assert get_metric(mae) is mae


def test_get_metric_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="mae, mse, ssim") as info:
        get_metric("lpips")
    assert "'lpips'" in str(info.value)
    with pytest.raises(TypeError):
        get_metric(3)  # type: ignore[arg-type]


def test_module_constants_follow_wang_et_al() -> None:
    assert (metrics.SSIM_WINDOW, metrics.SSIM_SIGMA) == (11, 1.5)
    assert (metrics.SSIM_K1, metrics.SSIM_K2, metrics.SSIM_DATA_RANGE) == (0.01, 0.03, 1.0)
