"""What the two VAE families (:mod:`~ronan_jax.models.vae`, :mod:`~ronan_jax.models.conv_decoder`)
share: the encoder + decoder module they train, the sigmoid apply of the decoder they ship,
and the helpers that split one's variables into the other's.

Each family subclasses :class:`EncoderDecoderVAE` and :class:`SigmoidDecoderApply`, naming its
own encoder and decoder modules. The training module's submodules are called ``encoder`` and
``decoder``, so its variables are ``{"params": {"encoder": ..., "decoder": ...}}`` and the
decoder's subtree is exactly the tree the shipped Generator (and its checkpoint) holds.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import linen as nn

from ronan_jax.models.layers import reparameterize


class EncoderDecoderVAE(nn.Module):
    """Encoder + decoder for training. ``__call__`` returns (logits, mu, logvar).

    Subclasses set ``encoder_cls`` (images -> ``(mu, logvar)``) and ``decoder_cls``
    (latents -> logits), both built from ``config``.
    """

    config: Any
    encoder_cls: ClassVar[type[nn.Module]]
    decoder_cls: ClassVar[type[nn.Module]]

    def setup(self) -> None:
        self.encoder = self.encoder_cls(self.config)
        self.decoder = self.decoder_cls(self.config)

    def __call__(self, x: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        mu, logvar = self.encoder(x)
        return self.decoder(reparameterize(mu, logvar, key)), mu, logvar

    def decode(self, z: jax.Array) -> jax.Array:
        """Decoder logits of latents ``z`` (for ``apply(..., method=decode)`` in training)."""
        return self.decoder(z)


@dataclasses.dataclass(frozen=True)
class SigmoidDecoderApply:
    """Pure generator apply: decoder variables + latent -> sigmoid images in [0, 1] NHWC.

    A frozen dataclass hashed by its config, so equal configs share one compiled inversion
    program. Subclasses set ``decoder_cls`` (latents -> logits, built from ``config``).
    """

    config: Any
    decoder_cls: ClassVar[type[nn.Module]]

    def __call__(self, variables: Any, z: jax.Array, condition: Any) -> jax.Array:
        logits = self.decoder_cls(self.config).apply(variables, z)
        return jax.nn.sigmoid(logits.astype(jnp.float32))


def init_training_variables(
    model: EncoderDecoderVAE, image_shape: tuple[int, ...], key: jax.Array
) -> dict[str, Any]:
    """Fresh encoder + decoder variables of ``model``, traced on one ``image_shape`` image."""
    x = jnp.zeros((1, *image_shape), jnp.float32)
    model_key, noise_key = jax.random.split(key)
    return dict(model.init(model_key, x, noise_key))


def decoder_variables(training_variables: Any) -> dict[str, Any]:
    """The decoder part of :class:`EncoderDecoderVAE` variables: the Generator's tree."""
    return {"params": training_variables["params"]["decoder"]}
