"""A differentiable model of a baseline JPEG round trip at known quantisation tables.

A belonging image re-saved as JPEG differs from the model's output by the codec's
quantisation error, far more than a belonging image's inversion loss. Robust mode's JPEG
stage renders what the codec would have made of ``G(z)``: the 8-bit image, level shift,
colour transform (JFIF YCbCr) and chroma subsampling, the 8x8 orthonormal DCT, quantisation
by the image's own tables, and the decoder's inverse: dequantisation, inverse DCT, fancy
(triangular) chroma upsampling, RGB and 8-bit output. The tables are not guessed: a JPEG file
carries them, and :func:`jpeg_spec` packs them with the chroma subsampling into one
per-image vector (a file that is not a JPEG gets the identity spec, :func:`identity_spec`).

Every rounding is a straight-through estimator: the forward pass is the codec's integer
arithmetic (up to the integer DCT's approximation error, a level here and there), the
gradient is that of the unrounded map. The stage has no free parameters.

The spec vector of one image (:data:`SPEC_SIZE` floats): ``[enabled, sampling, luma table
(64, row-major), chroma table (64)]``, ``sampling`` 0 for 4:4:4, 1 for 4:2:2, 2 for 4:2:0.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["SPEC_SIZE", "SUBSAMPLINGS", "identity_spec", "jpeg_roundtrip", "jpeg_spec"]

SPEC_SIZE = 2 + 2 * 64
SUBSAMPLINGS = ("4:4:4", "4:2:2", "4:2:0")

_DCT = np.array([[math.sqrt((1 if k == 0 else 2) / 8) * math.cos((2 * n + 1) * k * math.pi / 16)
                  for n in range(8)] for k in range(8)])
_RGB_TO_YCC = np.array([[0.299, 0.587, 0.114],
                        [-0.168735892, -0.331264108, 0.5],
                        [0.5, -0.418687589, -0.081312411]])
_YCC_TO_RGB = np.array([[1.0, 0.0, 1.402],
                        [1.0, -0.344136286, -0.714136286],
                        [1.0, 1.772, 0.0]])


def identity_spec() -> np.ndarray:
    """The spec of an image that was not JPEG-coded: the stage passes it through."""
    return np.zeros(SPEC_SIZE, np.float32)


def jpeg_spec(luma: np.ndarray, chroma: np.ndarray | None = None, sampling: int = 2) -> np.ndarray:
    """The spec of a JPEG coded with quantisation tables ``luma`` and ``chroma`` (64 values
    each in row-major order, as Pillow's ``Image.quantization`` gives them) and chroma
    ``sampling`` (an index of :data:`SUBSAMPLINGS`; ignored for greyscale)."""
    luma = np.asarray(luma, np.float32).reshape(64)
    chroma = luma if chroma is None else np.asarray(chroma, np.float32).reshape(64)
    if np.any(luma < 1) or np.any(chroma < 1):
        raise ValueError("quantisation table entries must be >= 1")
    if sampling not in range(len(SUBSAMPLINGS)):
        raise ValueError(f"chroma sampling must be an index of {SUBSAMPLINGS}, got {sampling!r}")
    return np.concatenate([[1.0, float(sampling)], luma, chroma]).astype(np.float32)


def _ste(x: jax.Array, rounded: jax.Array) -> jax.Array:
    """``rounded`` forward, the gradient of ``x`` backward."""
    return x + jax.lax.stop_gradient(rounded - x)


def _round(x: jax.Array) -> jax.Array:
    """Round half away from zero (libjpeg's quantiser), straight through."""
    return _ste(x, jnp.sign(x) * jnp.floor(jnp.abs(x) + 0.5))


def _floor(x: jax.Array) -> jax.Array:
    return _ste(x, jnp.floor(x))


def _pad_to(plane: jax.Array, h: int, w: int) -> jax.Array:
    """A ``[H, W]`` plane padded to ``[h, w]`` by repeating its last row and column."""
    return jnp.pad(plane, ((0, h - plane.shape[0]), (0, w - plane.shape[1])), mode="edge")


def _code_plane(plane: jax.Array, table: jax.Array) -> jax.Array:
    """One component's samples (level-shifted, ``[H, W]``, multiples of 8) through DCT,
    quantisation at ``table`` ``[8, 8]`` and back."""
    h, w = plane.shape
    blocks = plane.reshape(h // 8, 8, w // 8, 8).transpose(0, 2, 1, 3)
    d = jnp.asarray(_DCT, plane.dtype)
    coef = jnp.einsum("ki,abij,lj->abkl", d, blocks, d)
    coef = _round(coef / table) * table
    back = jnp.einsum("ki,abkl,lj->abij", d, coef, d)
    return back.transpose(0, 2, 1, 3).reshape(h, w)


def _code_component(plane: jax.Array, table: jax.Array) -> jax.Array:
    """Samples ``[H, W]`` (0..255) coded and decoded, before the decoder's range limit."""
    h, w = plane.shape
    padded = _pad_to(plane - 128.0, -(-h // 8) * 8, -(-w // 8) * 8)
    return _code_plane(padded, table)[:h, :w] + 128.0


def _downsample(plane: jax.Array, fy: int, fx: int) -> jax.Array:
    """libjpeg's box downsampling by ``fy`` x ``fx`` (edges replicated, its alternating
    rounding bias), integer output."""
    h, w = plane.shape
    ch, cw = -(-h // fy), -(-w // fx)
    p = _pad_to(plane, ch * fy, cw * fx).reshape(ch, fy, cw, fx).sum(axis=(1, 3))
    n = fy * fx
    if n == 1:
        return plane
    bias = (jnp.arange(cw) % 2 + 1) if n == 4 else (jnp.arange(cw) % 2)
    return _floor((p + bias[None, :].astype(p.dtype)) / n)


def _fancy_up_h(plane: jax.Array, weight: int) -> jax.Array:
    """Horizontal triangular 2x upsampling (libjpeg's fancy upsampler with its rounding):
    of samples when ``weight`` is 1, of h2v2's vertical column sums when it is 4. Edge
    samples are repeated, which gives libjpeg's edge columns exactly."""
    left = jnp.concatenate([plane[:, :1], plane[:, :-1]], axis=1)
    right = jnp.concatenate([plane[:, 1:], plane[:, -1:]], axis=1)
    if weight == 1:
        even, odd = _floor((3 * plane + left + 1) / 4), _floor((3 * plane + right + 2) / 4)
    else:
        even, odd = _floor((3 * plane + left + 8) / 16), _floor((3 * plane + right + 7) / 16)
    return jnp.stack([even, odd], axis=-1).reshape(plane.shape[0], -1)


def _upsample(plane: jax.Array, fy: int, fx: int, h: int, w: int) -> jax.Array:
    """The decoder's fancy upsampling of a subsampled component back to ``[h, w]``."""
    if fy == 1 and fx == 1:
        return plane[:h, :w]
    if fy == 1:
        return _fancy_up_h(plane, 1)[:h, :w]
    above = jnp.concatenate([plane[:1], plane[:-1]], axis=0)
    below = jnp.concatenate([plane[1:], plane[-1:]], axis=0)
    upper = 3 * plane + above  # column sums for the even output rows
    lower = 3 * plane + below
    rows = jnp.stack([_fancy_up_h(upper, 4), _fancy_up_h(lower, 4)], axis=1)
    return rows.reshape(-1, rows.shape[-1])[:h, :w]


def _limit(x: jax.Array) -> jax.Array:
    """The decoder's 8-bit output: rounded and clipped to 0..255."""
    return jnp.clip(_round(x), 0.0, 255.0)


def _roundtrip_one(image: jax.Array, spec: jax.Array) -> jax.Array:
    """One ``[H, W, C]`` image in [0, 1] through the codec of ``spec`` (``C`` 1 or 3)."""
    h, w, c = image.shape
    enabled = spec[0] > 0.5
    # a disabled spec's zero tables would put NaN in the unused branch's gradient
    luma_q = jnp.where(enabled, spec[2:66], 1.0).reshape(8, 8)
    chroma_q = jnp.where(enabled, spec[66:130], 1.0).reshape(8, 8)
    samples = jnp.clip(_round(image * 255.0), 0.0, 255.0)
    if c == 1:
        out = _limit(_code_component(samples[..., 0], luma_q))[..., None]
    else:
        ycc = jnp.einsum("hwc,dc->hwd", samples, jnp.asarray(_RGB_TO_YCC, image.dtype))
        ycc = _round(ycc + jnp.asarray([0.0, 128.0, 128.0], image.dtype))
        y = _limit(_code_component(ycc[..., 0], luma_q))
        chroma = []
        for k in (1, 2):
            variants = []
            for fy, fx in ((1, 1), (1, 2), (2, 2)):
                # the encoder pads the full plane so the subsampled one fills whole blocks
                full = _pad_to(ycc[..., k], -(-h // (8 * fy)) * 8 * fy, -(-w // (8 * fx)) * 8 * fx)
                small = _downsample(full, fy, fx)[: -(-h // fy), : -(-w // fx)]
                coded = _limit(_code_component(small, chroma_q))
                variants.append(_upsample(coded, fy, fx, h, w))
            chroma.append(jnp.stack(variants)[spec[1].astype(jnp.int32)])
        ycc_out = jnp.stack([y, chroma[0] - 128.0, chroma[1] - 128.0], axis=-1)
        out = _limit(jnp.einsum("hwc,dc->hwd", ycc_out, jnp.asarray(_YCC_TO_RGB, image.dtype)))
    return jnp.where(enabled, out / 255.0, image)


def jpeg_roundtrip(images: jax.Array, specs: jax.Array) -> jax.Array:
    """Images ``[N, H, W, C]`` in [0, 1], each through the JPEG codec of its spec ``[N,
    SPEC_SIZE]`` (an image whose spec is not enabled passes unchanged)."""
    if images.shape[-1] not in (1, 3):
        raise ValueError(f"the JPEG stage codes 1 or 3 channels, got {images.shape[-1]}")
    return jax.vmap(_roundtrip_one)(images, specs.astype(images.dtype))
