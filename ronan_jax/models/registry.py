"""Architecture tables: from a model card's ``architecture`` + ``config`` to a Generator, and
from its ``encoder`` entry's to an Encoder.

One explicit entry per architecture family (no renaming guesses, no string dispatch spread
over files). Each entry knows how to build fresh variables (the shape template that restored
or converted weights are checked against) and how to wrap variables as a Generator (or an
Encoder: the trained convolutional family, or a converted VAE's own encoder).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax

from ronan_jax.engine.generator import Encoder, Generator
from ronan_jax.models import conv_decoder, dcgan, sd_vae, sd_vae_encoder, stylegan2, vae
from ronan_jax.models import diffusion as _diffusion
from ronan_jax.models import encoder as conv_encoder


@dataclasses.dataclass(frozen=True)
class Architecture:
    """How to instantiate one family from a JSON-able config dict."""

    name: str
    init: Callable[[dict[str, Any], jax.Array], Any]
    make: Callable[..., Generator]  # (config_dict, variables, name=..., **info) -> Generator


def _dcgan_config(cfg: dict[str, Any]) -> dcgan.DCGANConfig:
    return dcgan.DCGANConfig(**cfg)


ARCHITECTURES: dict[str, Architecture] = {
    "dcgan": Architecture(
        "dcgan",
        init=lambda cfg, key: dcgan.init_variables(_dcgan_config(cfg), key),
        make=lambda cfg, variables, name="dcgan", **info: dcgan.make_generator(
            _dcgan_config(cfg), variables, name=name, **info
        ),
    ),
    # Convolutional VAE decoder, flat latent (the zoo's vae-mnist).
    "vae": Architecture(
        "vae",
        init=lambda cfg, key: vae.init_variables(vae.VAEConfig(**cfg), key),
        make=lambda cfg, variables, name="vae", **info: vae.make_generator(
            vae.VAEConfig(**cfg), variables, name=name, **info
        ),
    ),
    # Fully convolutional VAE decoder, spatial latent (H/4, W/4, C), any size that is a
    # multiple of 4 via Generator.for_shape. The zoo's ref-photo, the default reference.
    "conv-decoder": Architecture(
        "conv-decoder",
        init=lambda cfg, key: conv_decoder.init_variables(
            conv_decoder.ConvDecoderConfig(**cfg), key
        ),
        make=lambda cfg, variables, name="conv-decoder", **info: conv_decoder.make_generator(
            conv_decoder.ConvDecoderConfig(**cfg), variables, name=name, **info
        ),
    ),
    # diffusers UNet2DModel + deterministic DDIM (eta = 0); input: x_T (H, W, C).
    "unet-ddim": Architecture(
        "unet-ddim",
        init=_diffusion.init_ddim_variables,
        make=_diffusion.make_ddim_generator,
    ),
    # diffusers UNet2DModel + CMStochasticIterativeScheduler; input: unit noise z (H, W, C).
    "consistency": Architecture(
        "consistency",
        init=_diffusion.init_consistency_variables,
        make=_diffusion.make_consistency_generator,
    ),
    # diffusers AutoencoderKL decoder (latent diffusion); input: the scaled latent
    # (H/f, W/f, latent_channels), any size that is a multiple of f via Generator.for_shape.
    "sd-vae": Architecture(
        "sd-vae",
        init=lambda cfg, key: sd_vae.init_variables(sd_vae.SDVAEConfig(**cfg), key),
        make=lambda cfg, variables, name="sd-vae", **info: sd_vae.make_generator(
            sd_vae.SDVAEConfig(**cfg), variables, name=name, **info
        ),
    ),
    # NVlabs StyleGAN2 (stylegan2-ada-pytorch, or rosinality's converted to it); input: z,
    # w or w+ as the card's config says (see models/stylegan2.py).
    "stylegan2": Architecture(
        "stylegan2",
        init=lambda cfg, key: stylegan2.init_variables(stylegan2.StyleGAN2Config(**cfg), key),
        make=lambda cfg, variables, name="stylegan2", **info: stylegan2.make_generator(
            stylegan2.StyleGAN2Config(**cfg), variables, name=name, **info
        ),
    ),
}


def get_architecture(name: str) -> Architecture:
    """The table entry of ``name`` (``ValueError`` listing the known names if unknown)."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ValueError(
            f"unknown architecture {name!r}; known: {', '.join(sorted(ARCHITECTURES))}"
        ) from None


@dataclasses.dataclass(frozen=True)
class EncoderArchitecture:
    """How to instantiate one encoder family from its JSON-able card config."""

    name: str
    template: Callable[[dict[str, Any]], Any]  # config -> variable shapes (nothing computed)
    make: Callable[..., Encoder]  # (config_dict, variables, **info) -> Encoder


def _conv_encoder_template(cfg: dict[str, Any]) -> Any:
    config = conv_encoder.EncoderConfig.from_dict(cfg)
    return jax.eval_shape(lambda: conv_encoder.init_variables(config, jax.random.key(0)))


ENCODER_ARCHITECTURES: dict[str, EncoderArchitecture] = {
    # Trained by `ronan encoder train` on the model's samples (models/encoder_training.py).
    conv_encoder.ARCHITECTURE: EncoderArchitecture(
        conv_encoder.ARCHITECTURE,
        template=_conv_encoder_template,
        make=lambda cfg, variables, **info: conv_encoder.make_encoder(
            conv_encoder.EncoderConfig.from_dict(cfg), variables, **info
        ),
    ),
    # A converted diffusers AutoencoderKL's own encoder: the scaled posterior mean.
    sd_vae_encoder.ARCHITECTURE: EncoderArchitecture(
        sd_vae_encoder.ARCHITECTURE,
        template=lambda cfg: sd_vae_encoder.variable_shapes(sd_vae_encoder.vae_config(cfg)),
        make=sd_vae_encoder.make_encoder,
    ),
}


def get_encoder_architecture(name: str) -> EncoderArchitecture:
    """The encoder table entry of ``name`` (``ValueError`` listing the known names)."""
    try:
        return ENCODER_ARCHITECTURES[name]
    except KeyError:
        raise ValueError(
            f"unknown encoder architecture {name!r}; known: {', '.join(sorted(ENCODER_ARCHITECTURES))}"
        ) from None
