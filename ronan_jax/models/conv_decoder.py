"""A tiny fully convolutional VAE decoder with a spatial latent (Stable Diffusion's VAE, shrunk).

The latent of an ``H x W`` image is an ``(H/4, W/4, latent_channels)`` map. The decoder is
convolutions only (3x3, zero "SAME" padding, SiLU), so its parameters do not depend on the
image size and one set of weights generates any ``H, W`` that are multiples of 4. With
``widths = (w0, w1, w2)`` (channels at latent, half and full resolution)::

    latent (h, w, 4)
      conv_in 3x3 -> w0, SiLU                                                   (h, w)
      n_res x residual block: x = SiLU(x + conv(SiLU(conv(x))))                (h, w)
      nearest 2x upsample, conv 3x3 -> w1, SiLU                                (2h, 2w)
      nearest 2x upsample, conv 3x3 -> w2, SiLU                                (4h, 4w)
      conv_out 3x3 -> nc, sigmoid                                              (H, W, nc)

No normalisation layers: nothing couples the images of a batch and nothing depends on the
image size. The encoder (training only) mirrors it with two stride-2 convolutions and emits
``(mu, logvar)`` maps of the latent's shape.

This is the zoo's reference model family (``ref-photo``): it is fully convolutional, so
:meth:`Generator.for_shape` serves every examined image size with the same weights::

    gen = make_generator(ConvDecoderConfig(), variables, name="ref-photo")
    gen64 = gen.for_shape((64, 64, 3))      # input (16, 16, 4), output (64, 64, 3)
    grey = gen.for_shape((32, 32, 1))       # BT.601 luma of the colour output
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from ronan_jax.engine.generator import Generator
from ronan_jax.models import encoder_decoder
from ronan_jax.models.encoder_decoder import EncoderDecoderVAE, SigmoidDecoderApply
from ronan_jax.models.encoder_decoder import decoder_variables as decoder_variables

DOWNSAMPLE = 4  # image pixels per latent pixel along each axis (two 2x stages)
DEFAULT_IMAGE_SHAPE = (32, 32)


@dataclasses.dataclass(frozen=True)
class ConvDecoderConfig:
    """Sizes of a :class:`ConvVAE` (what a model card's ``config`` holds for
    ``"conv-decoder"``); none depends on the image size."""

    latent_channels: int = 4
    nc: int = 3
    widths: tuple[int, int, int] = (64, 32, 16)  # channels at latent, half, full resolution
    n_res: int = 1  # residual blocks at latent resolution

    def __post_init__(self) -> None:
        # JSON model cards give lists; keep a tuple so the config stays hashable.
        widths = tuple(int(w) for w in self.widths)
        if len(widths) != 3:
            raise ValueError(f"widths must be 3 channel counts, got {self.widths!r}")
        object.__setattr__(self, "widths", widths)


def _conv(features: int, name: str, stride: int = 1) -> nn.Conv:
    return nn.Conv(features, (3, 3), strides=(stride, stride), padding=((1, 1), (1, 1)), name=name)


def _upsample(x: jax.Array) -> jax.Array:
    """Nearest-neighbour 2x upsampling of NHWC maps."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class ConvDecoder(nn.Module):
    """Latent ``(N, h, w, latent_channels)`` -> logits ``(N, 4h, 4w, nc)``."""

    config: ConvDecoderConfig

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        cfg = self.config
        w0, w1, w2 = cfg.widths
        x = nn.silu(_conv(w0, "conv_in")(z))
        for i in range(cfg.n_res):
            y = nn.silu(_conv(w0, f"res_{i}_a")(x))
            x = nn.silu(x + _conv(w0, f"res_{i}_b")(y))
        x = nn.silu(_conv(w1, "up_0")(_upsample(x)))
        x = nn.silu(_conv(w2, "up_1")(_upsample(x)))
        return _conv(cfg.nc, "conv_out")(x)


class ConvEncoder(nn.Module):
    """Images ``(N, H, W, nc)`` in [0, 1] -> ``(mu, logvar)`` maps ``(N, H/4, W/4, lc)``."""

    config: ConvDecoderConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        cfg = self.config
        w0, w1, w2 = cfg.widths
        x = nn.silu(_conv(w2, "conv_in")(x))
        x = nn.silu(_conv(w1, "down_0", stride=2)(x))
        x = nn.silu(_conv(w0, "down_1", stride=2)(x))
        x = nn.silu(_conv(w0, "mid")(x))
        stats = _conv(2 * cfg.latent_channels, "conv_out")(x)
        mu, logvar = jnp.split(stats, 2, axis=-1)
        return mu, logvar


class ConvVAE(EncoderDecoderVAE):
    """Encoder + decoder for training. ``__call__`` returns (logits, mu, logvar)."""

    config: ConvDecoderConfig
    encoder_cls = ConvEncoder
    decoder_cls = ConvDecoder


@dataclasses.dataclass(frozen=True)
class ConvDecoderApply(SigmoidDecoderApply):
    """Pure generator apply: decoder variables + latent map -> sigmoid images in [0, 1].
    Shape-agnostic and hashable by value: every size and every equal config share it."""

    config: ConvDecoderConfig
    decoder_cls = ConvDecoder


def latent_shape(config: ConvDecoderConfig, image_shape: tuple[int, int]) -> tuple[int, int, int]:
    """The latent map shape of an ``(H, W)`` image; H and W must be positive multiples of 4."""
    h, w = (int(s) for s in image_shape[:2])
    if h <= 0 or w <= 0 or h % DOWNSAMPLE or w % DOWNSAMPLE:
        raise ValueError(
            f"the conv decoder emits sizes that are positive multiples of {DOWNSAMPLE}; got {h}x{w}"
        )
    return (h // DOWNSAMPLE, w // DOWNSAMPLE, config.latent_channels)


def init_variables(config: ConvDecoderConfig, key: jax.Array) -> dict[str, Any]:
    """Fresh decoder variables (the same tree for every image size)."""
    z = jnp.zeros((1, *latent_shape(config, DEFAULT_IMAGE_SHAPE)), jnp.float32)
    return dict(ConvDecoder(config).init(key, z))


def init_training_variables(config: ConvDecoderConfig, key: jax.Array) -> dict[str, Any]:
    """Fresh encoder + decoder variables of :class:`ConvVAE`."""
    shape = (*DEFAULT_IMAGE_SHAPE, config.nc)
    return encoder_decoder.init_training_variables(ConvVAE(config), shape, key)


def make_generator(
    config: ConvDecoderConfig,
    variables: Any,
    name: str = "conv-decoder",
    image_shape: tuple[int, int] = DEFAULT_IMAGE_SHAPE,
    **info: Any,
) -> Generator:
    """Wrap decoder variables as a :class:`Generator` emitting ``image_shape`` (H, W) images.

    The Generator's ``for_shape_fn`` builds siblings of other sizes over the very same
    parameter tree (same ``param_hash``); channel conversion is left to
    :meth:`Generator.for_shape` (``to_channels``: BT.601 luma / replicate).
    """
    lat = latent_shape(config, image_shape)
    h, w = lat[0] * DOWNSAMPLE, lat[1] * DOWNSAMPLE
    return Generator(
        name=name,
        apply_fn=ConvDecoderApply(config),
        params=variables,
        input_shape=lat,
        output_shape=(h, w, config.nc),
        for_shape_fn=functools.partial(_resized, config, variables, name, info),
        info={"architecture": "conv-decoder", "config": dataclasses.asdict(config), **info},
    )


def _resized(
    config: ConvDecoderConfig,
    variables: Any,
    name: str,
    info: dict[str, Any],
    shape: tuple[int, int, int],
) -> Generator:
    return make_generator(config, variables, name=name, image_shape=tuple(shape[:2]), **info)
