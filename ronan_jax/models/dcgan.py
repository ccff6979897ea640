"""DCGAN generator and discriminator with the pytorch/examples topology.

Generator: ``ConvTranspose(nz -> ngf*2^(depth-2), 4, 1, 0)`` then ``depth - 2`` blocks of
``ConvTranspose(4, 2, 1) + BatchNorm + ReLU`` halving the channels, then
``ConvTranspose(ngf -> nc, 4, 2, 1) + tanh``. Output size is ``4 * 2^(depth-1)``
(depth 4: 32x32, depth 5: 64x64). Layers are named ``convt_{i}`` / ``bn_{i}`` so a converted
PyTorch ``main.N.*`` state dict maps onto them by position.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from ronan_jax.generator import Generator
from ronan_jax.models.layers import ConvTranspose


@dataclasses.dataclass(frozen=True)
class DCGANConfig:
    nz: int = 100
    ngf: int = 64
    ndf: int = 64
    nc: int = 1
    depth: int = 4
    batchnorm: bool = True
    num_classes: int = 0  # > 0: conditional, one-hot label concatenated to the noise
    convt_impl: str = "lax"

    @property
    def image_size(self) -> int:
        return 4 * 2 ** (self.depth - 1)


class DCGANGenerator(nn.Module):
    config: DCGANConfig

    @nn.compact
    def __call__(self, z: jax.Array, label: jax.Array | None = None, train: bool = False) -> jax.Array:
        """``z``: (N, nz) noise; ``label``: (N,) int class ids for conditional models.
        Returns (N, H, W, nc) in [-1, 1] (tanh), like the PyTorch model."""
        cfg = self.config
        x = z.reshape(z.shape[0], 1, 1, -1)
        if cfg.num_classes:
            if label is None:
                raise ValueError("conditional DCGAN needs a class label")
            onehot = jax.nn.one_hot(label, cfg.num_classes, dtype=x.dtype)
            x = jnp.concatenate([x, onehot.reshape(z.shape[0], 1, 1, -1)], axis=-1)
        feats = cfg.ngf * 2 ** (cfg.depth - 2)
        for i in range(cfg.depth):
            last = i == cfg.depth - 1
            first = i == 0
            x = ConvTranspose(
                cfg.nc if last else feats,
                stride=1 if first else 2,
                padding=0 if first else 1,
                impl=cfg.convt_impl,
                name=f"convt_{i}",
            )(x)
            if last:
                return jnp.tanh(x)
            if cfg.batchnorm:
                x = nn.BatchNorm(
                    use_running_average=not train, momentum=0.9, epsilon=1e-5, name=f"bn_{i}"
                )(x)
            x = nn.relu(x)
            feats //= 2
        raise AssertionError("unreachable")


class DCGANDiscriminator(nn.Module):
    """pytorch/examples discriminator: strided 4x4 convs + BatchNorm + LeakyReLU(0.2), logit."""

    config: DCGANConfig

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        cfg = self.config
        feats = cfg.ndf
        for i in range(cfg.depth - 1):
            x = nn.Conv(feats, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)), use_bias=False)(x)
            if i > 0 and cfg.batchnorm:
                x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x)
            x = nn.leaky_relu(x, 0.2)
            feats *= 2
        x = nn.Conv(1, (4, 4), padding="VALID", use_bias=False)(x)
        return x.reshape(x.shape[0])


@dataclasses.dataclass(frozen=True)
class DCGANApply:
    """Pure generator apply for the engine: variables + z (+ label) -> [0, 1] NHWC.
    A frozen dataclass, so equal configs share one compiled inversion program."""

    config: DCGANConfig

    def __call__(self, variables: Any, z: jax.Array, condition: Any) -> jax.Array:
        out = DCGANGenerator(self.config).apply(variables, z, condition, train=False)
        return jnp.clip((out.astype(jnp.float32) + 1.0) / 2.0, 0.0, 1.0)


def init_variables(config: DCGANConfig, key: jax.Array) -> dict[str, Any]:
    """Fresh generator variables (``params`` and ``batch_stats``)."""
    z = jnp.zeros((1, config.nz), jnp.float32)
    label = jnp.zeros((1,), jnp.int32) if config.num_classes else None
    return dict(DCGANGenerator(config).init(key, z, label, train=False))


def make_generator(
    config: DCGANConfig, variables: Any, name: str = "dcgan", label: int | None = None, **info: Any
) -> Generator:
    """Wrap DCGAN variables as a :class:`Generator` (conditional models need ``label``)."""
    if config.num_classes and label is None:
        raise ValueError("a conditional DCGAN generator needs a fixed class label")
    size = config.image_size
    return Generator(
        name=name,
        apply_fn=DCGANApply(config),
        params=variables,
        input_shape=(config.nz,),
        output_shape=(size, size, config.nc),
        condition=None if label is None else jnp.asarray(label, jnp.int32),
        info={"architecture": "dcgan", "config": dataclasses.asdict(config), **info},
    )
