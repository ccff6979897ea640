"""Stable-Diffusion-style VAE (diffusers ``AutoencoderKL``) in Flax linen: the decoder is the
generator of latent diffusion models, the encoder an optional initialiser of its input.

Topology (diffusers ``Encoder`` / ``Decoder`` with ``DownEncoderBlock2D`` /
``UpDecoderBlock2D``; ``C = block_out_channels``, ``L = layers_per_block``, GroupNorm with
``norm_num_groups`` groups and ``norm_eps`` (1e-6, as diffusers), SiLU)::

    decoder(latent (h, w, latent_channels)):
      post_quant_conv 1x1 (if use_post_quant_conv)
      conv_in 3x3 -> C[-1]
      mid_block: resnet, attention (1 head over h*w tokens, if mid_block_add_attention), resnet
      up_blocks[i], i = 0..n-1 over reversed(C): L + 1 resnets, then (all but the last)
        upsampler: nearest 2x + conv 3x3
      conv_norm_out (GroupNorm), SiLU, conv_out 3x3 -> out_channels          (h*f, w*f)

    encoder(image in [-1, 1]):
      conv_in 3x3 -> C[0]; down_blocks[i]: L resnets, then (all but the last) downsampler
      pad (0, 1, 0, 1) + conv 3x3 stride 2; mid_block; GroupNorm, SiLU, conv_out -> 2 * latent;
      quant_conv 1x1 (if use_quant_conv) -> (mean, logvar)

with ``f = 2 ** (len(block_out_channels) - 1)`` (8 for Stable Diffusion). A resnet is
``GroupNorm, SiLU, conv3x3, GroupNorm, SiLU, conv3x3`` plus a skip (1x1 ``conv_shortcut`` when
the channel count changes). Module names follow diffusers' keys (``up_blocks.0.resnets.1``
becomes ``up_blocks_0/resnets_1``) so the converter's key map is a plain table.

The Generator (:func:`make_generator`):

* input: the **scaled** latent ``z``, NHWC ``(H/f, W/f, latent_channels)``. Stable Diffusion's
  prior N(0, 1) is the distribution of the scaled latent (the diffusion model samples it), so
  the engine's standard-normal initialisation and restarts are right for ``z``. The decoder
  receives the unscaled latent as diffusers pipelines compute it: ``z / scaling_factor +
  shift_factor`` (shift 0 when absent), or ``z * latents_std / scaling_factor + latents_mean``
  when the config carries per-channel ``latents_mean``/``latents_std``.
* output: ``(decoded / 2 + 0.5).clip(0, 1)``, NHWC float32, as diffusers' image processor.
* any image size that is a multiple of ``f``: the network is fully convolutional (attention runs
  over however many tokens there are), so ``Generator.for_shape`` gives siblings over the same
  parameters.

:func:`encode_latents` encodes images to the posterior mean, scaled the same way: what the
checkpoint's encoder of a converted VAE computes (:mod:`ronan_jax.models.sd_vae_encoder`, its
weights stored apart from the decoder's). :func:`initial_latents` does it for variables that
hold the encoder's weights themselves (``include_encoder``).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from ronan_jax.engine.generator import Generator


@dataclasses.dataclass(frozen=True)
class SDVAEConfig:
    """Fields and defaults as diffusers' ``AutoencoderKL`` config.json, plus ``norm_eps``
    (fixed at 1e-6 in diffusers) and ``include_encoder`` (whether the encoder's weights are
    part of the variables). ``sample_size`` is the Generator's default image side.

    ``remat``: rematerialise the decoder's blocks (:func:`decoder_remat`): True, False, or
    None (the default, also of checkpoints written before it existed) for "when the image
    has at least :data:`REMAT_MIN_PIXELS` pixels". Memory only: not part of the parameter
    hash, and results differ by float rounding at most."""

    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (64,)
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 32
    norm_eps: float = 1e-6
    act_fn: str = "silu"
    mid_block_add_attention: bool = True
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    scaling_factor: float = 0.18215
    shift_factor: float | None = None
    latents_mean: tuple[float, ...] | None = None
    latents_std: tuple[float, ...] | None = None
    sample_size: int = 32
    include_encoder: bool = True
    remat: bool | None = None

    def __post_init__(self) -> None:
        # JSON round trips turn tuples into lists: restore them (the config must be hashable).
        for name in ("block_out_channels", "latents_mean", "latents_std"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        object.__setattr__(self, "block_out_channels", tuple(int(c) for c in self.block_out_channels))
        if not self.block_out_channels:
            raise ValueError("block_out_channels must not be empty")
        if self.remat is not None and not isinstance(self.remat, bool):
            raise ValueError(f"remat must be true, false or null (by size), got {self.remat!r}")
        if self.act_fn not in ("silu", "swish"):
            raise ValueError(f"act_fn {self.act_fn!r} is not supported (silu only)")
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(
                f"block_out_channels {bad} are not divisible by norm_num_groups={self.norm_num_groups}"
            )
        if (self.latents_mean is None) != (self.latents_std is None):
            raise ValueError("latents_mean and latents_std come together")
        for name in ("latents_mean", "latents_std"):
            value = getattr(self, name)
            if value is not None and len(value) != self.latent_channels:
                raise ValueError(f"{name} needs {self.latent_channels} values, got {len(value)}")
        if self.sample_size % self.downsample_factor:
            raise ValueError(
                f"sample_size {self.sample_size} is not a multiple of {self.downsample_factor}"
            )

    @property
    def downsample_factor(self) -> int:
        """Image pixels per latent pixel along each axis."""
        return 2 ** (len(self.block_out_channels) - 1)


def _conv(features: int, name: str, kernel: int = 3, stride: int = 1, padding: int = 1) -> nn.Conv:
    pad = ((padding, padding), (padding, padding))
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=pad, name=name)


def _norm(config: SDVAEConfig, name: str) -> nn.GroupNorm:
    return nn.GroupNorm(
        num_groups=config.norm_num_groups, epsilon=config.norm_eps, use_fast_variance=False, name=name
    )


def upsample_nearest(x: jax.Array) -> jax.Array:
    """Nearest-neighbour 2x upsampling of NHWC maps (``F.interpolate(scale_factor=2)``)."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class ResnetBlock(nn.Module):
    """diffusers ``ResnetBlock2D`` without time embedding (``temb_channels=None``)."""

    config: SDVAEConfig
    out_channels: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = nn.silu(_norm(self.config, "norm1")(x))
        h = _conv(self.out_channels, "conv1")(h)
        h = nn.silu(_norm(self.config, "norm2")(h))
        h = _conv(self.out_channels, "conv2")(h)
        if x.shape[-1] != self.out_channels:
            x = _conv(self.out_channels, "conv_shortcut", kernel=1, padding=0)(x)
        return x + h


class Attention(nn.Module):
    """diffusers ``Attention`` as the VAE mid block builds it: GroupNorm, one head of width C
    over the h*w positions, output projection, residual. Softmax in float32 (upcast)."""

    config: SDVAEConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        n, h, w, c = x.shape
        y = _norm(self.config, "group_norm")(x).reshape(n, h * w, c)
        q = nn.Dense(c, name="to_q")(y)
        k = nn.Dense(c, name="to_k")(y)
        v = nn.Dense(c, name="to_v")(y)
        scores = jnp.einsum("nqc,nkc->nqk", q, k) * (c**-0.5)
        weights = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(v.dtype)
        out = nn.Dense(c, name="to_out_0")(jnp.einsum("nqk,nkc->nqc", weights, v))
        return x + out.reshape(n, h, w, c)


REMAT_MIN_PIXELS = 256 * 256
"""Images from this many pixels up get a rematerialised decoder when ``remat`` is None."""


def decoder_remat(config: SDVAEConfig, latent_hw: tuple[int, int]) -> bool:
    """Whether the decoder of a ``latent_hw`` latent is rematerialised: ``config.remat`` when
    set, else from :data:`REMAT_MIN_PIXELS` decoded pixels up. Its backward pass then keeps
    each resnet, attention and upsampler block's input only and recomputes the rest (at
    512x512, batch 1, the SD VAE's compiled step needs 4.99 GiB instead of 5.69 GiB on
    XLA:CPU)."""
    if config.remat is not None:
        return bool(config.remat)
    f = config.downsample_factor
    return latent_hw[0] * latent_hw[1] * f * f >= REMAT_MIN_PIXELS


def rematerialised(module: type[nn.Module], remat: bool) -> type[nn.Module]:
    """``module`` wrapped in ``nn.remat`` when ``remat``: its backward pass keeps only the
    block's input and recomputes the activations inside it (same names, same parameters)."""
    return nn.remat(module) if remat else module


class MidBlock(nn.Module):
    """diffusers ``UNetMidBlock2D`` (one layer): resnet, attention, resnet."""

    config: SDVAEConfig
    remat: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        resnet = rematerialised(ResnetBlock, self.remat)
        x = resnet(self.config, c, name="resnets_0")(x)
        if self.config.mid_block_add_attention:
            x = rematerialised(Attention, self.remat)(self.config, name="attentions_0")(x)
        return resnet(self.config, c, name="resnets_1")(x)


class Upsampler(nn.Module):
    """diffusers ``Upsample2D``: nearest 2x upsampling, then a 3x3 conv."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return _conv(self.features, "conv")(upsample_nearest(x))


class Downsampler(nn.Module):
    """diffusers ``Downsample2D(padding=0)``: pad right/bottom by one, 3x3 conv, stride 2."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        return _conv(self.features, "conv", stride=2, padding=0)(x)


class UpBlock(nn.Module):
    """diffusers ``UpDecoderBlock2D``: ``layers_per_block + 1`` resnets, then maybe an upsampler."""

    config: SDVAEConfig
    out_channels: int
    add_upsample: bool
    remat: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        resnet = rematerialised(ResnetBlock, self.remat)
        for j in range(self.config.layers_per_block + 1):
            x = resnet(self.config, self.out_channels, name=f"resnets_{j}")(x)
        if self.add_upsample:
            x = rematerialised(Upsampler, self.remat)(self.out_channels, name="upsamplers_0")(x)
        return x


class DownBlock(nn.Module):
    """diffusers ``DownEncoderBlock2D``: ``layers_per_block`` resnets, then maybe a downsampler."""

    config: SDVAEConfig
    out_channels: int
    add_downsample: bool

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for j in range(self.config.layers_per_block):
            x = ResnetBlock(self.config, self.out_channels, name=f"resnets_{j}")(x)
        if self.add_downsample:
            x = Downsampler(self.out_channels, name="downsamplers_0")(x)
        return x


class Decoder(nn.Module):
    """Unscaled latent (N, h, w, latent_channels) -> image (N, h*f, w*f, out_channels) in
    roughly [-1, 1] (before ``post_quant_conv``: see :class:`SDVAE`)."""

    config: SDVAEConfig

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        cfg = self.config
        chans = cfg.block_out_channels
        remat = decoder_remat(cfg, (z.shape[1], z.shape[2]))
        x = _conv(chans[-1], "conv_in")(z)
        x = MidBlock(cfg, remat=remat, name="mid_block")(x)
        for i, ch in enumerate(reversed(chans)):
            x = UpBlock(cfg, ch, add_upsample=i < len(chans) - 1, remat=remat,
                        name=f"up_blocks_{i}")(x)
        x = nn.silu(_norm(cfg, "conv_norm_out")(x))
        return _conv(cfg.out_channels, "conv_out")(x)


class Encoder(nn.Module):
    """Image in [-1, 1] (N, H, W, in_channels) -> (N, H/f, W/f, 2 * latent_channels)."""

    config: SDVAEConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        chans = cfg.block_out_channels
        x = _conv(chans[0], "conv_in")(x)
        for i, ch in enumerate(chans):
            x = DownBlock(cfg, ch, add_downsample=i < len(chans) - 1, name=f"down_blocks_{i}")(x)
        x = MidBlock(cfg, name="mid_block")(x)
        x = nn.silu(_norm(cfg, "conv_norm_out")(x))
        return _conv(2 * cfg.latent_channels, "conv_out")(x)


class SDVAE(nn.Module):
    """``AutoencoderKL``: :meth:`decode` (unscaled latent -> image in [-1, 1]) and
    :meth:`encode` (image in [-1, 1] -> posterior ``(mean, logvar)``)."""

    config: SDVAEConfig

    def setup(self) -> None:
        cfg = self.config
        self.decoder = Decoder(cfg)
        if cfg.use_post_quant_conv:
            self.post_quant_conv = nn.Conv(cfg.latent_channels, (1, 1), padding="VALID")
        if cfg.include_encoder:
            self.encoder = Encoder(cfg)
            if cfg.use_quant_conv:
                self.quant_conv = nn.Conv(2 * cfg.latent_channels, (1, 1), padding="VALID")

    def decode(self, z: jax.Array) -> jax.Array:
        """Unscaled latent -> image in roughly [-1, 1]."""
        if self.config.use_post_quant_conv:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Image in [-1, 1] -> posterior ``(mean, logvar)``, logvar clipped to [-30, 20] as
        diffusers' ``DiagonalGaussianDistribution`` does."""
        if not self.config.include_encoder:
            raise ValueError("this SD VAE was converted without its encoder")
        h = self.encoder(x)
        if self.config.use_quant_conv:
            h = self.quant_conv(h)
        mean, logvar = jnp.split(h, 2, axis=-1)
        return mean, jnp.clip(logvar, -30.0, 20.0)

    def __call__(self, z: jax.Array, x: jax.Array | None = None) -> Any:
        """Decode ``z`` (and encode ``x`` when given): builds every parameter at init."""
        out = self.decode(z)
        return out if x is None else (out, self.encode(x))


def _latent_affine(config: SDVAEConfig, dtype: Any) -> tuple[jax.Array, jax.Array]:
    """``(a, b)`` with unscaled latent = ``a * z + b`` for the optimised (scaled) ``z``."""
    if config.latents_mean is not None and config.latents_std is not None:
        std = jnp.asarray(config.latents_std, dtype)
        return std / config.scaling_factor, jnp.asarray(config.latents_mean, dtype)
    shift = config.shift_factor or 0.0
    return (
        jnp.full((config.latent_channels,), 1.0 / config.scaling_factor, dtype),
        jnp.full((config.latent_channels,), shift, dtype),
    )


@dataclasses.dataclass(frozen=True)
class SDVAEApply:
    """Pure generator apply: variables + scaled latent (N, h, w, latent_channels) -> NHWC
    [0, 1] images. Shape-agnostic and hashable by value (one compiled program per size)."""

    config: SDVAEConfig

    def __call__(self, variables: Any, z: jax.Array, condition: Any) -> jax.Array:
        a, b = _latent_affine(self.config, z.dtype)
        x = SDVAE(self.config).apply(variables, z * a + b, method=SDVAE.decode)
        return jnp.clip(x.astype(jnp.float32) / 2.0 + 0.5, 0.0, 1.0)


def encode_latents(config: SDVAEConfig, variables: Any, images: jax.Array) -> jax.Array:
    """Scaled posterior-mean latents of NHWC ``images`` in [0, 1] (the decoder's input space)."""
    mean, _ = SDVAE(config).apply(variables, images * 2.0 - 1.0, method=SDVAE.encode)
    a, b = _latent_affine(config, mean.dtype)
    return (mean - b) / a


def initial_latents(generator: Generator, images: jax.Array) -> jax.Array:
    """Encoder initialisation for inverting ``generator`` (an SD VAE Generator) on ``images``:
    the scaled posterior means, shaped like ``generator``'s inputs."""
    if generator.info.get("architecture") != "sd-vae":
        raise ValueError(f"generator {generator.name!r} is not an SD VAE")
    config = SDVAEConfig(**generator.info["config"])
    return encode_latents(config, generator.params, jnp.asarray(images, jnp.float32))


def latent_shape(config: SDVAEConfig, image_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """The latent of an ``(H, W)`` image; both must be positive multiples of the factor."""
    f = config.downsample_factor
    h, w = (int(s) for s in image_shape[:2])
    if h <= 0 or w <= 0 or h % f or w % f:
        raise ValueError(f"the SD VAE decodes sizes that are positive multiples of {f}; got {h}x{w}")
    return (h // f, w // f, config.latent_channels)


def variable_shapes(config: SDVAEConfig) -> dict[str, Any]:
    """The variable tree as ``jax.ShapeDtypeStruct`` leaves (traced, nothing computed)."""
    f = config.downsample_factor
    z = jnp.zeros((1, 1, 1, config.latent_channels), jnp.float32)
    x = jnp.zeros((1, f, f, config.in_channels), jnp.float32) if config.include_encoder else None
    return dict(jax.eval_shape(SDVAE(config).init, jax.random.key(0), z, x))


def init_variables(config: SDVAEConfig, key: jax.Array) -> dict[str, Any]:
    """Fresh variables (``{"params": ...}``, NumPy float32 leaves), encoder included if
    configured; the same tree for every image size.

    Shapes come from tracing the module (``jax.eval_shape``, no compilation); values are drawn
    with NumPy from ``key`` like Flax's defaults (kernels N(0, 1/fan_in), biases 0, norm scales
    1). Flax's own ``init`` would compile every initializer (a minute on a busy CPU for even
    a tiny VAE), and this tree is the shape template every save and load is checked against.
    """
    shapes = variable_shapes(config)
    seed = np.asarray(jax.random.key_data(key)).astype(np.uint64).tolist()
    rng = np.random.default_rng(seed)

    def draw(path: Any, leaf: jax.ShapeDtypeStruct) -> np.ndarray:
        name = path[-1].key
        if name == "kernel":
            value = rng.standard_normal(leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
        elif name == "scale":
            value = np.ones(leaf.shape)
        else:
            value = np.zeros(leaf.shape)
        return value.astype(leaf.dtype)

    return dict(jax.tree_util.tree_map_with_path(draw, shapes))


def make_generator(
    config: SDVAEConfig,
    variables: Any,
    name: str = "sd-vae",
    image_shape: tuple[int, int] | None = None,
    **info: Any,
) -> Generator:
    """Wrap VAE variables as a Generator emitting ``image_shape`` (default ``sample_size``
    square) images; ``for_shape_fn`` gives other sizes over the same parameters."""
    hw = image_shape or (config.sample_size, config.sample_size)
    lat = latent_shape(config, hw)
    f = config.downsample_factor
    return Generator(
        name=name,
        apply_fn=SDVAEApply(config),
        params=variables,
        input_shape=lat,
        output_shape=(lat[0] * f, lat[1] * f, config.out_channels),
        for_shape_fn=functools.partial(_resized, config, variables, name, info),
        info={
            "architecture": "sd-vae",
            "config": dataclasses.asdict(config),
            "input": "scaled latent z (NHWC); decoder gets the unscaled latent, see sd_vae",
            **info,
        },
    )


def _resized(
    config: SDVAEConfig, variables: Any, name: str, info: dict[str, Any], shape: tuple[int, ...]
) -> Generator:
    return make_generator(config, variables, name=name, image_shape=tuple(shape[:2]), **info)
