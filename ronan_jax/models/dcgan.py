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

from ronan_jax.engine.generator import Generator
from ronan_jax.models.layers import ConvTranspose

RESIZE_METHODS = ("linear", "cubic")


@dataclasses.dataclass(frozen=True)
class DCGANConfig:
    """Sizes and options of a DCGAN (pytorch/examples names: ``nz``, ``ngf``, ``ndf``, ``nc``);
    what a model card's ``config`` holds for ``"dcgan"``."""

    nz: int = 100
    ngf: int = 64
    ndf: int = 64
    nc: int = 1
    depth: int = 4
    batchnorm: bool = True
    num_classes: int = 0  # > 0: conditional, one-hot label concatenated to the noise
    convt_impl: str = "lax"
    # > 0: the generator's [0, 1] output is resized to resize_to x resize_to (antialiased
    # jax.image.resize, see DCGANApply), e.g. 64x64 DCGANs audited on 32x32 CIFAR-10.
    resize_to: int = 0
    resize_method: str = "linear"  # "linear" or "cubic" (see DCGANApply)

    def __post_init__(self) -> None:
        if self.resize_method not in RESIZE_METHODS:
            raise ValueError(
                f"resize_method must be one of {RESIZE_METHODS}, got {self.resize_method!r}"
            )
        if self.resize_to < 0:
            raise ValueError(f"resize_to must be >= 0, got {self.resize_to}")

    @property
    def image_size(self) -> int:
        """Side of the network's native output."""
        return 4 * 2 ** (self.depth - 1)

    @property
    def output_size(self) -> int:
        """Side of the Generator's images: ``resize_to`` if set, else :attr:`image_size`."""
        return self.resize_to or self.image_size


class DCGANGenerator(nn.Module):
    """The pytorch/examples DCGAN generator (see the module docstring for its layers)."""

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
    """pytorch/examples discriminator: strided 4x4 convs + BatchNorm + LeakyReLU(0.2), logit.

    A conditional one (``num_classes > 0``) sees the class as one-hot planes concatenated to
    the image channels (the classic conditional-GAN discriminator), so the generator must
    draw the class it is given."""

    config: DCGANConfig

    @nn.compact
    def __call__(self, x: jax.Array, label: jax.Array | None = None, train: bool = True) -> jax.Array:
        cfg = self.config
        if cfg.num_classes:
            if label is None:
                raise ValueError("conditional DCGAN discriminator needs a class label")
            onehot = jax.nn.one_hot(label, cfg.num_classes, dtype=x.dtype)
            planes = jnp.broadcast_to(onehot[:, None, None, :], (*x.shape[:3], cfg.num_classes))
            x = jnp.concatenate([x, planes], axis=-1)
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
    A frozen dataclass, so equal configs share one compiled inversion program.

    With ``config.resize_to`` the [0, 1] image is resized before the final clip with
    ``jax.image.resize(..., method=config.resize_method, antialias=True)``: "linear" is a
    triangle filter widened by the scale factor when shrinking, "cubic" Keys' cubic with
    a = -0.5. Both equal PyTorch's ``F.interpolate(mode="bilinear"/"bicubic",
    antialias=True, align_corners=False)`` (torchvision's antialiased ``Resize``) and PIL's
    BILINEAR/BICUBIC to ~1e-6 (tested); PyTorch without antialias differs (no widening when
    shrinking, and a = -0.75 for bicubic)."""

    config: DCGANConfig

    def __call__(self, variables: Any, z: jax.Array, condition: Any) -> jax.Array:
        cfg = self.config
        out = DCGANGenerator(cfg).apply(variables, z, condition, train=False)
        img = (out.astype(jnp.float32) + 1.0) / 2.0
        if cfg.resize_to and cfg.resize_to != cfg.image_size:
            n, _, _, c = img.shape
            img = jax.image.resize(
                img, (n, cfg.resize_to, cfg.resize_to, c), method=cfg.resize_method, antialias=True
            )
        return jnp.clip(img, 0.0, 1.0)


def init_variables(config: DCGANConfig, key: jax.Array) -> dict[str, Any]:
    """Fresh generator variables (``params`` and ``batch_stats``)."""
    z = jnp.zeros((1, config.nz), jnp.float32)
    label = jnp.zeros((1,), jnp.int32) if config.num_classes else None
    return dict(DCGANGenerator(config).init(key, z, label, train=False))


def make_generator(
    config: DCGANConfig, variables: Any, name: str = "dcgan", label: int | None = None, **info: Any
) -> Generator:
    """Wrap DCGAN variables as a :class:`Generator`.

    A conditional model (``num_classes > 0``) made without ``label`` has no fixed condition:
    give per-image labels to the engine, or fix one with :func:`class_conditioned`. Calling it
    without either raises ("conditional DCGAN needs a class label").
    """
    size = config.output_size
    return Generator(
        name=name,
        apply_fn=DCGANApply(config),
        params=variables,
        input_shape=(config.nz,),
        output_shape=(size, size, config.nc),
        condition=None if label is None else jnp.asarray(label, jnp.int32),
        info={"architecture": "dcgan", "config": dataclasses.asdict(config), **info},
        num_classes=config.num_classes if label is None else 0,
    )


def class_conditioned(generator: Generator, label: int) -> Generator:
    """The conditional DCGAN ``generator`` with its class fixed to ``label``.

    When an audited image's class is unknown, RONAN's rule for conditional generators is the
    minimum over classes: invert the image once per class ``k`` (on
    ``class_conditioned(gen, k)``, or with per-image conditions ``k``) and take
    ``A(M, x) = min_k A(M_k, x)``; the engine computes that minimum.
    """
    cfg = generator.info.get("config", {})
    num_classes = int(cfg.get("num_classes", 0)) if isinstance(cfg, dict) else 0
    if generator.info.get("architecture") != "dcgan" or not num_classes:
        raise ValueError(f"generator {generator.name!r} is not a conditional DCGAN")
    label = int(label)
    if not 0 <= label < num_classes:
        raise ValueError(f"label {label} is outside [0, {num_classes}) for {generator.name!r}")
    base = generator.info.get("base_name", generator.name)
    return generator.replace(
        name=f"{base}[class={label}]",
        condition=jnp.asarray(label, jnp.int32),
        info={**generator.info, "base_name": base, "label": label},
        num_classes=0,
    )


def random_variables(config: DCGANConfig, key: jax.Array, gain: float = 3.0, batch: int = 512) -> dict[str, Any]:
    """Untrained variables that still draw varied images: BatchNorm running statistics are set
    from a batch of prior samples (as training would), and the output layer is scaled by
    ``gain`` so tanh spans a useful range. For tests and speed benchmarks."""
    k_init, k_z = jax.random.split(key)
    variables = init_variables(config, k_init)
    z = jax.random.normal(k_z, (batch, config.nz), jnp.float32)
    label = jnp.zeros((batch,), jnp.int32) if config.num_classes else None
    if config.batchnorm:

        @jax.jit
        def update(v: dict[str, Any]) -> dict[str, Any]:
            _, upd = DCGANGenerator(config).apply(v, z, label, train=True, mutable=["batch_stats"])
            return {"params": v["params"], "batch_stats": upd["batch_stats"]}

        # momentum 0.9: 60 updates bring the running averages within 0.2 % of batch statistics.
        for _ in range(60):
            variables = update(variables)
    params = dict(variables["params"])
    last = f"convt_{config.depth - 1}"
    params[last] = {"kernel": params[last]["kernel"] * gain}
    return {**variables, "params": params}
