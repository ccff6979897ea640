"""A small convolutional VAE; its decoder is the generator the engine inverts.

Decoder (the generator): ``Dense(latent -> s*s*nf*2^(n_up-1))`` reshaped to an ``s x s`` map
(``s = image_size / 2^n_up``), then ``n_up - 1`` blocks of PyTorch-semantics
``ConvTranspose(4, 2, 1) + ReLU`` halving the channels, then ``ConvTranspose(-> nc, 4, 2, 1)``
and a sigmoid. No BatchNorm anywhere, so inference and training modes are the same function
and a batch of inversions never couples its members.

Encoder (training only): ``n_up`` strided ``Conv(4, 2, 1) + LeakyReLU(0.2)`` doubling the
channels, flatten, ``Dense -> (mu, logvar)``.

Example::

    cfg = VAEConfig(latent_dim=32, image_size=32, nc=1)
    variables = init_variables(cfg, jax.random.key(0))   # decoder only: what ships
    gen = make_generator(cfg, variables, name="vae-mnist")
    images = gen.generate(jax.random.key(1), 8)          # (8, 32, 32, 1) in [0, 1]
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from ronan_jax.engine.generator import Generator
from ronan_jax.models import encoder_decoder
from ronan_jax.models.encoder_decoder import EncoderDecoderVAE, SigmoidDecoderApply
from ronan_jax.models.encoder_decoder import decoder_variables as decoder_variables
from ronan_jax.models.layers import ConvTranspose


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """Sizes of a :class:`VAE` (what a model card's ``config`` holds for ``"vae"``)."""

    latent_dim: int = 32
    image_size: int = 32
    nc: int = 1
    nf: int = 32  # channels next to the image; doubled at each coarser level
    n_up: int = 3  # number of 2x upsamplings (image_size must be divisible by 2^n_up)
    convt_impl: str = "lax"  # ConvTranspose formulation (numerically equivalent; see layers)

    def __post_init__(self) -> None:
        if self.image_size % 2**self.n_up:
            raise ValueError(
                f"image_size {self.image_size} is not divisible by 2^n_up = {2**self.n_up}"
            )

    @property
    def base_size(self) -> int:
        """Side of the map the latent is reshaped to, before the first upsampling."""
        return self.image_size // 2**self.n_up

    @property
    def base_features(self) -> int:
        """Channels of that first map (``nf`` doubled once per upsampling but the last)."""
        return self.nf * 2 ** (self.n_up - 1)


class VAEDecoder(nn.Module):
    """Latent ``(N, latent_dim)`` -> logits ``(N, H, W, nc)`` (apply a sigmoid for images)."""

    config: VAEConfig

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        cfg = self.config
        s, feats = cfg.base_size, cfg.base_features
        x = nn.Dense(s * s * feats, name="fc")(z)
        x = nn.relu(x.reshape(z.shape[0], s, s, feats))
        for i in range(cfg.n_up - 1):
            feats //= 2
            x = nn.relu(
                ConvTranspose(feats, use_bias=True, impl=cfg.convt_impl, name=f"convt_{i}")(x)
            )
        last = ConvTranspose(
            cfg.nc, use_bias=True, impl=cfg.convt_impl, name=f"convt_{cfg.n_up - 1}"
        )
        return last(x)


class VAEEncoder(nn.Module):
    """Images ``(N, H, W, nc)`` in [0, 1] -> ``(mu, logvar)``, each ``(N, latent_dim)``."""

    config: VAEConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        cfg = self.config
        feats = cfg.nf
        for i in range(cfg.n_up):
            x = nn.Conv(feats, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)), name=f"conv_{i}")(
                x
            )
            x = nn.leaky_relu(x, 0.2)
            feats *= 2
        x = x.reshape(x.shape[0], -1)
        stats = nn.Dense(2 * cfg.latent_dim, name="fc")(x)
        mu, logvar = jnp.split(stats, 2, axis=-1)
        return mu, logvar


class VAE(EncoderDecoderVAE):
    """Encoder + decoder for training. ``__call__`` returns (logits, mu, logvar)."""

    config: VAEConfig
    encoder_cls = VAEEncoder
    decoder_cls = VAEDecoder


@dataclasses.dataclass(frozen=True)
class VAEApply(SigmoidDecoderApply):
    """Pure generator apply: decoder variables + z -> sigmoid images in [0, 1] NHWC.
    A frozen dataclass, so equal configs share one compiled inversion program."""

    config: VAEConfig
    decoder_cls = VAEDecoder


def init_variables(config: VAEConfig, key: jax.Array) -> dict[str, Any]:
    """Fresh decoder variables (the generator's parameter tree)."""
    z = jnp.zeros((1, config.latent_dim), jnp.float32)
    return dict(VAEDecoder(config).init(key, z))


def init_training_variables(config: VAEConfig, key: jax.Array) -> dict[str, Any]:
    """Fresh encoder + decoder variables of :class:`VAE`."""
    shape = (config.image_size, config.image_size, config.nc)
    return encoder_decoder.init_training_variables(VAE(config), shape, key)


def make_generator(config: VAEConfig, variables: Any, name: str = "vae", **info: Any) -> Generator:
    """Wrap decoder variables as a :class:`Generator` with a standard normal prior."""
    size = config.image_size
    return Generator(
        name=name,
        apply_fn=VAEApply(config),
        params=variables,
        input_shape=(config.latent_dim,),
        output_shape=(size, size, config.nc),
        info={"architecture": "vae", "config": dataclasses.asdict(config), **info},
    )
