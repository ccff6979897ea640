"""The encoder of a converted diffusers ``AutoencoderKL``, as the warm start of its decoder.

A Stable-Diffusion-style VAE comes with its own amortised inverse: diffusers' ``Encoder``
(conv_in, down blocks, mid block with attention, GroupNorm, SiLU, conv_out) and
``quant_conv``, whose output's first half is the posterior mean. :class:`SDVAEEncoderApply`
returns that mean in the decoder Generator's input space (the scaled latent of
:mod:`ronan_jax.models.sd_vae`, the exact inverse of its unscaling:
``(mean - shift_factor) * scaling_factor``, or ``(mean - latents_mean) * scaling_factor /
latents_std``), so ``G(E(x))`` is the VAE's reconstruction of ``x``.

Its variables are the ``encoder`` and ``quant_conv`` subtrees of :class:`sd_vae.SDVAE`'s, so a
converter fills the whole VAE from one key map and splits it (:func:`split_variables`): the
decoder's subtree is the model's parameters, the encoder's is stored as the checkpoint's
encoder (:func:`ronan_jax.models.checkpoint.write_encoder`). Fully convolutional: it reads
every size the decoder emits, with the same weights.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from ronan_jax.engine.generator import Encoder, to_channels
from ronan_jax.models import sd_vae

ARCHITECTURE = "sd-vae-encoder"
# The SDVAEConfig fields the encoder and the latent scaling depend on: its card config.
ENCODER_FIELDS = (
    "in_channels",
    "block_out_channels",
    "layers_per_block",
    "latent_channels",
    "norm_num_groups",
    "norm_eps",
    "act_fn",
    "mid_block_add_attention",
    "use_quant_conv",
    "scaling_factor",
    "shift_factor",
    "latents_mean",
    "latents_std",
)
# Top-level parameter subtrees of SDVAE that belong to the encoder.
ENCODER_MODULES = ("encoder", "quant_conv")


def encoder_config(config: sd_vae.SDVAEConfig) -> dict[str, Any]:
    """The JSON-able encoder config (a model card's ``encoder.config``) of a VAE config."""
    return {
        k: list(v) if isinstance(v, tuple) else v
        for k, v in dataclasses.asdict(config).items()
        if k in ENCODER_FIELDS
    }


def vae_config(config: dict[str, Any]) -> sd_vae.SDVAEConfig:
    """The :class:`sd_vae.SDVAEConfig` an encoder config describes (``ValueError`` or
    ``TypeError`` for a malformed one); fields the encoder ignores take their defaults."""
    unknown = sorted(set(config) - set(ENCODER_FIELDS))
    if unknown:
        raise ValueError(f"unknown SD-VAE encoder config fields {unknown}")
    blocks = tuple(config.get("block_out_channels", (64,)))
    return sd_vae.SDVAEConfig(
        **config, sample_size=2 ** max(0, len(blocks) - 1), include_encoder=True
    )


def variable_shapes(config: sd_vae.SDVAEConfig) -> dict[str, Any]:
    """The encoder's variable tree as ``jax.ShapeDtypeStruct`` leaves (nothing computed)."""
    config = dataclasses.replace(config, include_encoder=True)
    f = config.downsample_factor
    x = jnp.zeros((1, f, f, config.in_channels), jnp.float32)
    module = sd_vae.SDVAE(config)
    return dict(jax.eval_shape(lambda k: module.init(k, x, method=sd_vae.SDVAE.encode), jax.random.key(0)))


def split_variables(variables: Any) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``(decoder variables, encoder variables)`` of a whole :class:`sd_vae.SDVAE` tree; the
    encoder's is ``None`` when the tree holds no encoder."""
    params = variables["params"]
    decoder = {k: v for k, v in params.items() if k not in ENCODER_MODULES}
    encoder = {k: v for k, v in params.items() if k in ENCODER_MODULES}
    return {"params": decoder}, ({"params": encoder} if encoder else None)


@dataclasses.dataclass(frozen=True)
class SDVAEEncoderApply:
    """Pure encoder apply: encoder variables + NHWC images in [0, 1] -> scaled posterior-mean
    latents (the decoder Generator's inputs). Hashable by value (one compile per size)."""

    config: sd_vae.SDVAEConfig

    def __call__(self, params: Any, images: jax.Array, condition: Any = None) -> jax.Array:
        del condition  # an unconditional VAE
        x = to_channels(images.astype(jnp.float32), self.config.in_channels)
        return sd_vae.encode_latents(self.config, params, x)


def make_encoder(config: dict[str, Any], variables: Any, **info: Any) -> Encoder:
    """Wrap encoder variables as the engine's :class:`Encoder` (``info``: its provenance)."""
    vae = vae_config(config)
    return Encoder(
        apply_fn=SDVAEEncoderApply(vae),
        params=variables,
        info={"architecture": ARCHITECTURE, "config": encoder_config(vae), **info},
    )
