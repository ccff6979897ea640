"""Reconstruction losses L(M(i), x) for input reverse-engineering: how far the generator's
output M(i) for input i is from the image x, the quantity the engine minimises over i.

Every metric is a pure function ``(x, y) -> scalar`` over ONE unbatched image pair of shape
``(H, W, C)`` with values in [0, 1]; callers ``jax.vmap`` it over images and restarts. Inputs
are cast to float32 inside, so bfloat16 generator outputs still give float32 losses (the
losses are summed over many images and compared across runs, where bf16 rounding would show).
All metrics are jit-, vmap- and grad-able and obey strict dtype promotion.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Metric = Callable[[jax.Array, jax.Array], jax.Array]
"""A reconstruction loss over one image pair ``(H, W, C)`` returning a float32 scalar."""

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
SSIM_DATA_RANGE = 1.0


def _as_f32_pair(x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Cast both images to float32 and check that their shapes agree (at trace time)."""
    x = jnp.asarray(x).astype(jnp.float32)
    y = jnp.asarray(y).astype(jnp.float32)
    if x.shape != y.shape:
        raise ValueError(f"image shapes differ: {x.shape} vs {y.shape}")
    return x, y


@jax.jit
def mse(x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean squared error over all pixels and channels (the paper's default, Table 5)."""
    x, y = _as_f32_pair(x, y)
    return jnp.mean(jnp.square(x - y))


@jax.jit
def mae(x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean absolute error over all pixels and channels."""
    x, y = _as_f32_pair(x, y)
    return jnp.mean(jnp.abs(x - y))


def _window_size(size: int) -> int:
    """Taps of the SSIM window along an axis of ``size`` pixels: min(11, size), made odd."""
    w = min(SSIM_WINDOW, size)
    return w if w % 2 == 1 else w - 1


def _gaussian_taps(width: int) -> np.ndarray:
    """Normalised 1-D Gaussian (sigma 1.5) with ``width`` taps centred on the middle one.

    For width 11 these are exactly scipy.ndimage.gaussian_filter's taps (truncate 3.5).
    """
    r = np.arange(width, dtype=np.float64) - (width - 1) / 2.0
    taps = np.exp(-0.5 * (r / SSIM_SIGMA) ** 2)
    return (taps / taps.sum()).astype(np.float32)


def _depthwise_valid(img: jax.Array, taps_h: np.ndarray, taps_w: np.ndarray) -> jax.Array:
    """Separable depthwise Gaussian filter with 'VALID' padding of an ``(H, W, K)`` stack."""
    k = img.shape[-1]
    kh = jnp.asarray(np.tile(taps_h.reshape(-1, 1, 1, 1), (1, 1, 1, k)), jnp.float32)
    kw = jnp.asarray(np.tile(taps_w.reshape(1, -1, 1, 1), (1, 1, 1, k)), jnp.float32)
    out = img[None]
    for kernel in (kh, kw):
        out = lax.conv_general_dilated(
            out,
            kernel,
            window_strides=(1, 1),
            padding="VALID",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=k,
            precision=lax.Precision.HIGHEST,
        )
    return out[0]


@jax.jit
def ssim(x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean structural similarity index (Wang et al. 2004) of two ``(H, W, C)`` images.

    Gaussian window of 11x11 taps, sigma 1.5, K1 = 0.01, K2 = 0.03, data range 1.0, population
    covariance; the SSIM map is taken over the 'VALID' region only, averaged per channel and
    then over channels. This equals ``skimage.metrics.structural_similarity(x, y,
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0,
    channel_axis=-1)``.

    Small images: along each spatial axis the window has min(11, size) taps, rounded down to
    an odd number (10 px -> 9 taps, 2 px -> 1 tap); the Gaussian keeps sigma 1.5 and is
    renormalised over the shorter window. skimage refuses such images instead.
    """
    x, y = _as_f32_pair(x, y)
    if x.ndim != 3:
        raise ValueError(f"ssim expects one (H, W, C) image, got shape {x.shape}")
    h, w, c = x.shape
    if min(h, w, c) < 1:
        raise ValueError(f"ssim got an empty image of shape {x.shape}")
    taps_h = _gaussian_taps(_window_size(h))
    taps_w = _gaussian_taps(_window_size(w))

    stack = jnp.concatenate([x, y, x * x, y * y, x * y], axis=-1)
    mu_x, mu_y, e_xx, e_yy, e_xy = jnp.split(_depthwise_valid(stack, taps_h, taps_w), 5, -1)
    var_x = e_xx - mu_x * mu_x
    var_y = e_yy - mu_y * mu_y
    cov_xy = e_xy - mu_x * mu_y

    c1 = (SSIM_K1 * SSIM_DATA_RANGE) ** 2
    c2 = (SSIM_K2 * SSIM_DATA_RANGE) ** 2
    num = (2.0 * mu_x * mu_y + c1) * (2.0 * cov_xy + c2)
    den = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    # Every channel has the same number of valid pixels, so the global mean equals the mean
    # of the per-channel means.
    return jnp.mean(num / den)


@jax.jit
def ssim_loss(x: jax.Array, y: jax.Array) -> jax.Array:
    """1 - SSIM (see :func:`ssim`): 0 for identical images, up to 2 for anti-correlated ones."""
    return 1.0 - ssim(x, y)


def perceptual(apply_fn: Callable[[Any, jax.Array, jax.Array], jax.Array], params: Any) -> Metric:
    """Wrap a learned perceptual distance (e.g. an LPIPS port) into a :data:`Metric`.

    ``apply_fn(params, x, y) -> scalar`` is called on one float32 ``(H, W, C)`` pair in [0, 1]
    (rescale or cast down inside it if the network wants something else); its result is
    returned as a float32 scalar. ``params`` is closed over, so the metric stays jit- and
    vmap-able and gradients flow to the images, not to the weights.
    """
    if not callable(apply_fn):
        raise TypeError(f"apply_fn must be callable, got {type(apply_fn).__name__}")

    def metric(x: jax.Array, y: jax.Array) -> jax.Array:
        x, y = _as_f32_pair(x, y)
        out = jnp.asarray(apply_fn(params, x, y))
        if out.shape not in ((), (1,)):
            raise ValueError(f"perceptual apply_fn must return a scalar, got shape {out.shape}")
        return out.reshape(()).astype(jnp.float32)

    metric.__name__ = f"perceptual[{getattr(apply_fn, '__name__', 'apply_fn')}]"
    return metric


METRICS: dict[str, Metric] = {
    "mse": mse,
    "mae": mae,
    "ssim": ssim_loss,
}
"""Built-in metrics by name; learned ones come from :func:`perceptual`."""


def get_metric(name_or_callable: str | Metric) -> Metric:
    """Resolve a metric name (case-insensitive) from :data:`METRICS`, or pass a callable through."""
    if isinstance(name_or_callable, str):
        key = name_or_callable.strip().lower()
        if key not in METRICS:
            valid = ", ".join(sorted(METRICS))
            raise ValueError(
                f"unknown metric {name_or_callable!r}; valid names: {valid} "
                "(wrap learned metrics such as LPIPS with ronan_jax.engine.metrics.perceptual)"
            )
        return METRICS[key]
    if callable(name_or_callable):
        return name_or_callable
    raise TypeError(f"metric must be a name or a callable, got {type(name_or_callable).__name__}")
