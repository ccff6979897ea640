"""Convolutional encoders ``E: image -> generator input``: the warm starts of inversions.

One family serves every generator, chosen by the shape of the input it predicts:

- a flat input (DCGAN ``z``, VAE latent, StyleGAN ``z``/``w``): ``Conv(4, 2, 1) +
  LeakyReLU(0.2)`` blocks at ``widths``, flatten, ``Dense(hidden) + LeakyReLU``,
  ``Dense(prod(input_shape))``. It reads images of one size only.
- a spatial input ``(h, w, c)`` (a convolutional decoder's latent, an SD-VAE latent, diffusion
  noise): ``log2(H / h)`` strided blocks, a ``3x3`` block per remaining width, then a
  ``3x3`` convolution to ``c`` channels. Fully convolutional, so it serves every size its
  generator does, with the same weights.

Encoders ignore the class of conditional models (they are trained over all classes). They
are trained by :mod:`ronan_jax.models.encoder_training` and stored inside the model's
checkpoint (:mod:`ronan_jax.models.checkpoint`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from ronan_jax.engine.generator import Encoder

ARCHITECTURE = "conv-encoder"


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """Sizes of a :class:`ConvEncoder` (what a model card's ``encoder.config`` holds).

    ``image_shape`` is ``(H, W, C)`` of the images it reads at training; ``input_shape`` the
    generator input it predicts.
    """

    image_shape: tuple[int, int, int]
    input_shape: tuple[int, ...]
    widths: tuple[int, ...] = (32, 64, 128)
    hidden: int = 256

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_shape", tuple(int(s) for s in self.image_shape))
        object.__setattr__(self, "input_shape", tuple(int(s) for s in self.input_shape))
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if len(self.image_shape) != 3:
            raise ValueError(f"image_shape must be (H, W, C), got {self.image_shape}")
        if not self.widths:
            raise ValueError("widths must name at least one block")
        if self.spatial:
            factor = self.downsample
            if factor < 1 or 2 ** round(math.log2(factor)) != factor:
                raise ValueError(
                    f"a spatial input {self.input_shape} must divide the image "
                    f"{self.image_shape[:2]} by a power of two"
                )
            if self.image_shape[0] // factor != self.input_shape[0] or self.image_shape[1] // factor != self.input_shape[1]:
                raise ValueError(f"input {self.input_shape} is not image {self.image_shape} / {factor}")
            if len(self.widths) < round(math.log2(factor)):
                raise ValueError(f"a {factor}x smaller input needs at least {round(math.log2(factor))} widths")
        elif self.image_shape[0] % 2 ** len(self.widths) or self.image_shape[1] % 2 ** len(self.widths):
            raise ValueError(f"image {self.image_shape[:2]} must be divisible by 2^{len(self.widths)}")

    @property
    def spatial(self) -> bool:
        """Whether the predicted input is a ``(h, w, c)`` map (a fully convolutional encoder)."""
        return len(self.input_shape) == 3

    @property
    def downsample(self) -> int:
        """The image-to-input size factor of a spatial encoder."""
        return self.image_shape[0] // self.input_shape[0]

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderConfig:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


class ConvEncoder(nn.Module):
    """Images ``(N, H, W, C)`` in [0, 1] -> generator inputs ``(N, *input_shape)``."""

    config: EncoderConfig

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        cfg = self.config
        x = images * 2.0 - 1.0
        if cfg.spatial:
            n_down = round(math.log2(cfg.downsample))
            for i, width in enumerate(cfg.widths):
                if i < n_down:
                    x = nn.Conv(width, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)), name=f"down_{i}")(x)
                else:
                    x = nn.Conv(width, (3, 3), padding=((1, 1), (1, 1)), name=f"conv_{i}")(x)
                x = nn.leaky_relu(x, 0.2)
            return nn.Conv(cfg.input_shape[-1], (3, 3), padding=((1, 1), (1, 1)), name="out")(x)
        for i, width in enumerate(cfg.widths):
            x = nn.Conv(width, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)), name=f"down_{i}")(x)
            x = nn.leaky_relu(x, 0.2)
        x = x.reshape(x.shape[0], -1)
        x = nn.leaky_relu(nn.Dense(cfg.hidden, name="hidden")(x), 0.2)
        x = nn.Dense(math.prod(cfg.input_shape), name="out")(x)
        return x.reshape((x.shape[0], *cfg.input_shape))


def init_variables(config: EncoderConfig, key: jax.Array) -> Any:
    """Fresh encoder variables (what training starts from)."""
    return ConvEncoder(config).init(key, jnp.zeros((1, *config.image_shape), jnp.float32))


@dataclasses.dataclass(frozen=True)
class EncoderApply:
    """The encoder's pure apply function, hashable by value (compiled programs stay cached)."""

    config: EncoderConfig

    def __call__(self, params: Any, images: jax.Array, condition: Any = None) -> jax.Array:
        del condition  # encoders are trained over all classes
        return ConvEncoder(self.config).apply(params, images.astype(jnp.float32))


def make_encoder(config: EncoderConfig, variables: Any, **info: Any) -> Encoder:
    """Wrap encoder variables as the engine's :class:`Encoder`."""
    return Encoder(
        apply_fn=EncoderApply(config),
        params=variables,
        info={"architecture": ARCHITECTURE, "config": config.to_dict(), **info},
    )


def default_config(image_shape: tuple[int, int, int], input_shape: tuple[int, ...]) -> EncoderConfig:
    """An encoder sized for a generator: three halvings for a flat input, the input's own
    factor (and at least two blocks) for a spatial one."""
    if len(input_shape) == 3:
        n_down = round(math.log2(max(1, image_shape[0] // input_shape[0])))
        widths = tuple(32 * 2 ** min(i, 2) for i in range(max(2, n_down + 1)))
        return EncoderConfig(image_shape, input_shape, widths=widths)
    return EncoderConfig(image_shape, input_shape)
