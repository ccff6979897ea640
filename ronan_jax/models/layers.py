"""Layers shared by the architectures, with parameter layouts chosen for conversion."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn


def conv_transpose(
    x: jax.Array, kernel: jax.Array, stride: int, padding: int, impl: str = "lax"
) -> jax.Array:
    """PyTorch-semantics ``ConvTranspose2d`` on NHWC input (no bias).

    ``kernel`` has shape ``(kh, kw, Cin, Cout)`` in the *scatter* layout: input pixel ``i``
    adds ``x[i] * kernel[a]`` to output pixel ``stride * i + a - padding``. That is PyTorch's
    ``weight[Cin, Cout, kh, kw]`` transposed to ``(2, 3, 0, 1)``, no flip.

    ``impl`` picks an equivalent formulation: ``"lax"`` (input-dilated convolution) or
    ``"subpixel"`` (stride-2, kernel-4, padding-1 only: one dense 3x3 convolution producing
    the four output phases, then depth-to-space; avoids multiplying by the dilation zeros).
    """
    k = kernel.shape[0]
    if impl == "subpixel" and stride == 2 and k == 4 and padding == 1:
        return _conv_transpose_subpixel(x, kernel)
    flipped = kernel[::-1, ::-1]
    pad = k - 1 - padding
    return jax.lax.conv_general_dilated(
        x,
        flipped.astype(x.dtype),
        window_strides=(1, 1),
        padding=((pad, pad), (pad, pad)),
        lhs_dilation=(stride, stride),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )


def _subpixel_kernel(kernel: jax.Array) -> jax.Array:
    """Rearrange a (4, 4, Cin, Cout) stride-2 scatter kernel into a (3, 3, Cin, 4*Cout)
    gather kernel whose output channels are the phases (r_y, r_x, Cout)."""
    cin, cout = kernel.shape[2], kernel.shape[3]
    # For output row o = 2m + r, input row m + d (d in -1, 0, 1) uses kernel row a:
    # r = 0: d = 0 -> a = 1, d = -1 -> a = 3;  r = 1: d = 0 -> a = 2, d = +1 -> a = 0.
    taps = {0: {-1: 3, 0: 1}, 1: {0: 2, 1: 0}}
    out = jnp.zeros((3, 3, cin, 2, 2, cout), kernel.dtype)
    for ry in (0, 1):
        for dy, ay in taps[ry].items():
            for rx in (0, 1):
                for dx, ax in taps[rx].items():
                    out = out.at[dy + 1, dx + 1, :, ry, rx, :].set(kernel[ay, ax])
    return out.reshape(3, 3, cin, 4 * cout)


def _conv_transpose_subpixel(x: jax.Array, kernel: jax.Array) -> jax.Array:
    n, h, w, _ = x.shape
    cout = kernel.shape[3]
    y = jax.lax.conv_general_dilated(
        x,
        _subpixel_kernel(kernel).astype(x.dtype),
        window_strides=(1, 1),
        padding=((1, 1), (1, 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    y = y.reshape(n, h, w, 2, 2, cout).transpose(0, 1, 3, 2, 4, 5)
    return y.reshape(n, 2 * h, 2 * w, cout)


class ConvTranspose(nn.Module):
    """``nn.ConvTranspose2d`` with PyTorch semantics; kernel stored (kh, kw, Cin, Cout)."""

    features: int
    kernel_size: int = 4
    stride: int = 2
    padding: int = 1
    use_bias: bool = False
    impl: str = "lax"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        kernel = self.param(
            "kernel", nn.initializers.normal(0.02), (k, k, x.shape[-1], self.features)
        )
        y = conv_transpose(x, kernel.astype(x.dtype), self.stride, self.padding, self.impl)
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (self.features,))
            y = y + bias.astype(y.dtype)
        return y



def reparameterize(mu: jax.Array, logvar: jax.Array, key: jax.Array) -> jax.Array:
    """A VAE posterior sample ``mu + sigma * eps`` (the reparameterisation trick)."""
    eps = jax.random.normal(key, mu.shape, mu.dtype)
    return mu + jnp.exp(0.5 * logvar) * eps
