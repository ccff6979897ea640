"""The resampling a found image went through: separable zoom/shift, down-then-up resizing and
a small symmetric kernel, as linear operators along each image axis (robust mode's
``resample`` stage, :mod:`ronan_jax.engine.robust`).

Each operator is an ``[n, n]`` matrix applied along one axis; like an 8-bit editor (Pillow
resizes horizontally, then vertically, rounding to 8 bits after each pass), every pass is
clipped to [0, 1], which matters on images with black or white backgrounds, where
Lanczos' ringing is cut off.

- :func:`zoom_matrix`: bicubic sampling zoomed about the centre and shifted: a small crop
  resized back to full size;
- :func:`downup_matrices`: Pillow's Lanczos-3 (antialiased) downscale to ``m`` samples and
  its bicubic upscale back to ``n``. ``m`` is discrete: the loss has a sharp minimum at the
  true size and none between sizes, so gradient descent cannot find it. :func:`downup_sizes`
  lists the sizes the stage tries, all of them in every step;
- :func:`taps_matrix`: a normalised symmetric kernel of a few taps (a blur or a sharpen).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

__all__ = ["apply_along", "bicubic", "downup_matrices", "downup_sizes", "lanczos3", "taps_matrix",
           "zoom_matrix"]

BICUBIC_A = -0.5  # Pillow's bicubic
MIN_SCALE = 0.4  # the smallest downscale the stage tries
COMMON_SCALES = (0.4, 0.5, 0.6, 2 / 3, 0.7, 0.75, 0.8, 0.9)  # tried on long sides
EVERY_SIZE_UP_TO = 48  # sides up to this length are tried at every size


def lanczos3(t: jax.Array) -> jax.Array:
    """The Lanczos window of 3 lobes."""
    t = jnp.abs(t)
    return jnp.where(t < 3.0, jnp.sinc(t) * jnp.sinc(t / 3.0), 0.0)


def bicubic(t: jax.Array) -> jax.Array:
    """Keys' cubic convolution kernel with ``a = -0.5`` (Pillow's BICUBIC)."""
    a = BICUBIC_A
    t = jnp.abs(t)
    near = ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0
    far = ((t - 5.0) * t + 8.0) * t * a - 4.0 * a
    return jnp.where(t < 1.0, near, jnp.where(t < 2.0, far, 0.0))


def _rows_normalised(w: jax.Array) -> jax.Array:
    total = jnp.sum(w, axis=-1, keepdims=True)
    return w / jnp.where(jnp.abs(total) > 1e-12, total, 1.0)


def zoom_matrix(n: int, zoom: jax.Array, shift: jax.Array) -> jax.Array:
    """``[n, n]``: output pixel ``i`` samples the input at ``n/2 + (i + 0.5 - n/2) / zoom -
    shift`` with the bicubic kernel (weights renormalised at the edges). The identity at
    ``zoom = 1, shift = 0``."""
    x = jnp.arange(n, dtype=jnp.float32) + 0.5
    src = n / 2.0 + (x - n / 2.0) / zoom - shift
    return _rows_normalised(bicubic(x[None, :] - src[:, None]))


def downup_matrices(n: int, m: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(down [n, n], up [n, n])`` of Pillow's LANCZOS resize from ``n`` to ``m`` samples and
    BICUBIC resize back to ``n``; ``m`` may be traced. Rows ``>= m`` of ``down`` are unused
    (``up`` gives them weight 0), so one static shape serves every ``m``. ``m = n`` is the
    identity."""
    m = jnp.asarray(m, jnp.float32)
    s = m / n
    x = jnp.arange(n, dtype=jnp.float32) + 0.5  # pixel centres at n
    j = jnp.arange(n, dtype=jnp.float32)  # sample index at m
    down = _rows_normalised(lanczos3((x[None, :] - (j[:, None] + 0.5) / s) * s))
    keep = (j < m).astype(jnp.float32)
    up = _rows_normalised(bicubic(j[None, :] + 0.5 - (x * s)[:, None]) * keep[None, :])
    return down, up


def taps_matrix(n: int, taps: jax.Array) -> jax.Array:
    """``[n, n]``: the symmetric kernel ``[t_K .. t_1, 1 - 2 sum(t), t_1 .. t_K]`` with edges
    replicated (rows sum to 1). The identity at ``taps = 0``."""
    k = taps.shape[0]
    kernel = jnp.concatenate([taps[::-1], (1.0 - 2.0 * jnp.sum(taps))[None], taps])
    src = jnp.clip(jnp.arange(n)[:, None] + jnp.arange(-k, k + 1)[None, :], 0, n - 1)
    out = jnp.zeros((n, n), kernel.dtype)
    return out.at[jnp.arange(n)[:, None], src].add(jnp.broadcast_to(kernel, src.shape))


def apply_along(images: jax.Array, matrices: jax.Array, axis: int) -> jax.Array:
    """Images ``[N, H, W, C]`` with each one's matrix ``[N, out, in]`` applied along ``axis``
    (1: height, 2: width), clipped to [0, 1] like an 8-bit pass."""
    spec = "noh,nhwc->nowc" if axis == 1 else "now,nhwc->nhoc"
    return jnp.clip(jnp.einsum(spec, matrices.astype(images.dtype), images), 0.0, 1.0)


def downup_sizes(height: int, width: int) -> tuple[tuple[int, int], ...]:
    """The (height, width) sizes a ``height x width`` image may have been downscaled to and
    back: aspect kept (Pillow rounds each side), scales from :data:`MIN_SCALE` to just under
    1; every size for short sides, the common scale factors for long ones."""
    side = max(height, width)
    lo = math.ceil(MIN_SCALE * side)
    if side <= EVERY_SIZE_UP_TO:
        scales = [m / side for m in range(lo, side)]
    else:
        scales = sorted(set(COMMON_SCALES))
    out = []
    for s in scales:
        size = (max(1, round(height * s)), max(1, round(width * s)))
        if size != (height, width) and size not in out:
            out.append(size)
    return tuple(out)
