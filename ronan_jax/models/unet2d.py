"""Flax (linen) port of diffusers' ``UNet2DModel``: the denoiser of pixel-space diffusion and
consistency models (DDPM/DDIM CIFAR-10, CelebA-HQ, openai's consistency models).

NHWC throughout. Module and parameter names mirror the diffusers state dict, with ``.N``
list indices written ``_N`` (``down_blocks.0.resnets.1.norm1.weight`` lives at
``down_blocks_0/resnets_1/norm1/scale``), so the converter's key-map table
(``converters.diffusers_unet``) is a plain, checkable list.

Covered (the block types of ``UNet2DModel``'s default and common configs, and of openai's
consistency models):

- down blocks ``DownBlock2D``, ``AttnDownBlock2D``, ``ResnetDownsampleBlock2D``;
  up blocks ``UpBlock2D``, ``AttnUpBlock2D``, ``ResnetUpsampleBlock2D``; mid block
  ``UNetMidBlock2D`` (with or without attention) or none;
- ``ResnetBlock2D`` with ``resnet_time_scale_shift`` ``"default"`` or ``"scale_shift"``,
  1x1 conv shortcut when channels change, resampling (``downsample_type`` /
  ``upsample_type`` ``"conv"`` or ``"resnet"``);
- time embedding ``"positional"`` (sinusoidal, ``flip_sin_to_cos``, ``freq_shift``) or
  ``"fourier"`` (Gaussian Fourier projection, output divided by the timestep as diffusers does);
- class conditioning through ``num_class_embeds`` (``nn.Embed`` added to the time embedding).

Not covered (a clear ``ValueError`` from :class:`UNet2DConfig`): skip blocks (NCSN++),
``"learned"`` time embeddings, ``class_embed_type`` ``"timestep"``/``"identity"``,
``"spatial"`` time-scale shift.

Numerics follow diffusers: GroupNorm with two-pass variance, attention softmax in float32,
dropout absent (inference only).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

# Each in the order plain, attention, resampling resnet (``_block_spec`` reads that order).
DOWN_BLOCK_TYPES = ("DownBlock2D", "AttnDownBlock2D", "ResnetDownsampleBlock2D")
UP_BLOCK_TYPES = ("UpBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D")
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "silu": nn.silu,
    "swish": nn.silu,
    "mish": lambda x: x * jnp.tanh(jax.nn.softplus(x)),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "relu": nn.relu,
}
# UNet2DModel config keys that do not change the inference forward pass.
IGNORED_DIFFUSERS_KEYS = ("dropout", "num_train_timesteps")


def _tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


@dataclasses.dataclass(frozen=True)
class UNet2DConfig:
    """``UNet2DModel``'s config, same names and defaults (``dropout`` is inference-irrelevant
    and dropped). ``sample_size`` is ``int`` or ``(H, W)``."""

    sample_size: int | tuple[int, int] | None = None
    in_channels: int = 3
    out_channels: int = 3
    center_input_sample: bool = False
    time_embedding_type: str = "positional"
    time_embedding_dim: int | None = None
    freq_shift: float = 0
    flip_sin_to_cos: bool = True
    down_block_types: tuple[str, ...] = (
        "DownBlock2D",
        "AttnDownBlock2D",
        "AttnDownBlock2D",
        "AttnDownBlock2D",
    )
    mid_block_type: str | None = "UNetMidBlock2D"
    up_block_types: tuple[str, ...] = (
        "AttnUpBlock2D",
        "AttnUpBlock2D",
        "AttnUpBlock2D",
        "UpBlock2D",
    )
    block_out_channels: tuple[int, ...] = (224, 448, 672, 896)
    layers_per_block: int = 2
    mid_block_scale_factor: float = 1.0
    downsample_padding: int = 1
    downsample_type: str = "conv"
    upsample_type: str = "conv"
    act_fn: str = "silu"
    attention_head_dim: int | None = 8
    norm_num_groups: int = 32
    attn_norm_num_groups: int | None = None
    norm_eps: float = 1e-5
    resnet_time_scale_shift: str = "default"
    add_attention: bool = True
    class_embed_type: str | None = None
    num_class_embeds: int | None = None

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            object.__setattr__(self, field.name, _tuple(getattr(self, field.name)))
        self._validate()

    def _validate(self) -> None:
        def strip(name: str) -> str:
            return name[7:] if name.startswith("UNetRes") else name

        problems = []
        downs = [strip(b) for b in self.down_block_types]
        ups = [strip(b) for b in self.up_block_types]
        if bad := [b for b in downs if b not in DOWN_BLOCK_TYPES]:
            problems.append(f"down_block_types {bad} (supported: {', '.join(DOWN_BLOCK_TYPES)})")
        if bad := [b for b in ups if b not in UP_BLOCK_TYPES]:
            problems.append(f"up_block_types {bad} (supported: {', '.join(UP_BLOCK_TYPES)})")
        if not (len(downs) == len(ups) == len(self.block_out_channels)):
            problems.append("down_block_types, up_block_types and block_out_channels differ in length")
        if self.mid_block_type not in (None, "UNetMidBlock2D"):
            problems.append(f"mid_block_type {self.mid_block_type!r}")
        if self.time_embedding_type not in ("positional", "fourier"):
            problems.append(f"time_embedding_type {self.time_embedding_type!r}")
        if self.resnet_time_scale_shift not in ("default", "scale_shift"):
            problems.append(f"resnet_time_scale_shift {self.resnet_time_scale_shift!r}")
        if self.class_embed_type is not None:
            problems.append(f"class_embed_type {self.class_embed_type!r}")
        if self.act_fn not in ACTIVATIONS:
            problems.append(f"act_fn {self.act_fn!r}")
        if self.downsample_type not in ("conv", "resnet"):
            problems.append(f"downsample_type {self.downsample_type!r}")
        if self.upsample_type not in ("conv", "resnet"):
            problems.append(f"upsample_type {self.upsample_type!r}")
        if self.norm_num_groups is None:
            problems.append("norm_num_groups None")
        if problems:
            raise ValueError("unsupported UNet2DModel config: " + "; ".join(problems))
        object.__setattr__(self, "down_block_types", tuple(downs))
        object.__setattr__(self, "up_block_types", tuple(ups))

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> UNet2DConfig:
        """From a diffusers ``config.json`` dict (or :meth:`to_dict`): private ``_keys`` and
        inference-irrelevant keys are dropped, unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        cfg = {k: v for k, v in config.items() if not k.startswith("_")}
        if config.get("time_embedding_type") == "learned":
            raise ValueError("unsupported UNet2DModel config: time_embedding_type 'learned'")
        for key in IGNORED_DIFFUSERS_KEYS:
            cfg.pop(key, None)
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(f"unknown UNet2DModel config keys: {', '.join(unknown)}")
        return cls(**cfg)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (tuples as lists) that :meth:`from_dict` reads back."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @property
    def time_embed_dim(self) -> int:
        """Width of the time embedding (diffusers: 4x the first block's channels by default)."""
        return self.time_embedding_dim or self.block_out_channels[0] * 4

    @property
    def downsample_factor(self) -> int:
        """Image sides must be multiples of this (one 2x downsampling per non-final block)."""
        return 2 ** (len(self.block_out_channels) - 1)

    @property
    def image_hw(self) -> tuple[int, int]:
        """``sample_size`` as ``(H, W)``: the generator's default image size."""
        if self.sample_size is None:
            raise ValueError("the UNet config has no sample_size; give the image size")
        if isinstance(self.sample_size, int):
            return (self.sample_size, self.sample_size)
        return (int(self.sample_size[0]), int(self.sample_size[1]))

    @property
    def mid_attention_groups(self) -> int | None:
        """GroupNorm groups of the mid block's attention (``None``: no norm), as diffusers."""
        if self.attn_norm_num_groups is not None:
            return self.attn_norm_num_groups
        return self.norm_num_groups if self.resnet_time_scale_shift == "default" else None


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """Channel plan of one down or up block, as ``UNet2DModel.__init__`` computes it.

    Shared by the Flax module and the converter's key map (one source of truth).
    ``resnets`` holds ``(in_channels, out_channels)`` per resnet (up blocks: ``in`` includes
    the concatenated skip); ``sampler`` is ``"conv"``, ``"resnet"`` or ``None``."""

    block_type: str
    out_channels: int
    resnets: tuple[tuple[int, int], ...]
    attention: bool
    heads: int
    dim_head: int
    sampler: str | None


def _heads(cfg: UNet2DConfig, channels: int) -> tuple[int, int]:
    dim_head = cfg.attention_head_dim if cfg.attention_head_dim is not None else channels
    return channels // dim_head, dim_head


def _block_spec(
    cfg: UNet2DConfig,
    kinds: tuple[str, str, str],
    btype: str,
    out_channels: int,
    resnets: tuple[tuple[int, int], ...],
    last: bool,
    attention_sampler: str,
) -> BlockSpec:
    """The :class:`BlockSpec` of one block of type ``btype``, whose kind is its place in
    ``kinds`` (:data:`DOWN_BLOCK_TYPES` or :data:`UP_BLOCK_TYPES`: plain, attention, resnet).

    Its sampler, as diffusers builds it: none for the last block; otherwise a convolution
    for a plain block, ``attention_sampler`` (``downsample_type`` / ``upsample_type``) for an
    attention block and a resampling resnet for a resnet block."""
    plain, attention, _ = kinds
    if last:
        sampler = None
    elif btype == plain:
        sampler = "conv"
    elif btype == attention:
        sampler = attention_sampler
    else:
        sampler = "resnet"
    heads, dim_head = _heads(cfg, out_channels)
    return BlockSpec(btype, out_channels, resnets, btype == attention, heads, dim_head, sampler)


def down_block_specs(cfg: UNet2DConfig) -> list[BlockSpec]:
    """The channel plan of every down block, first (full resolution) to last."""
    specs = []
    out_ch = cfg.block_out_channels[0]
    n = len(cfg.block_out_channels)
    for i, btype in enumerate(cfg.down_block_types):
        in_ch, out_ch = out_ch, cfg.block_out_channels[i]
        resnets = tuple((in_ch if j == 0 else out_ch, out_ch) for j in range(cfg.layers_per_block))
        specs.append(
            _block_spec(cfg, DOWN_BLOCK_TYPES, btype, out_ch, resnets, i == n - 1, cfg.downsample_type)
        )
    return specs


def up_block_specs(cfg: UNet2DConfig) -> list[BlockSpec]:
    """The channel plan of every up block, first (coarsest) to last; each resnet's input
    includes the skip connection it concatenates."""
    specs = []
    rev = list(reversed(cfg.block_out_channels))
    n = len(rev)
    out_ch = rev[0]
    layers = cfg.layers_per_block + 1
    for i, btype in enumerate(cfg.up_block_types):
        prev_ch, out_ch = out_ch, rev[i]
        in_ch = rev[min(i + 1, n - 1)]
        resnets = tuple(
            ((prev_ch if j == 0 else out_ch) + (in_ch if j == layers - 1 else out_ch), out_ch)
            for j in range(layers)
        )
        specs.append(
            _block_spec(cfg, UP_BLOCK_TYPES, btype, out_ch, resnets, i == n - 1, cfg.upsample_type)
        )
    return specs


def timestep_embedding(
    timesteps: jax.Array,
    dim: int,
    flip_sin_to_cos: bool,
    freq_shift: float,
    max_period: float = 10000.0,
) -> jax.Array:
    """diffusers ``get_timestep_embedding``: ``(N,)`` (fractional) timesteps -> ``(N, dim)``."""
    half = dim // 2
    exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift)
    args = timesteps.astype(jnp.float32)[:, None] * jnp.exp(exponent)[None, :]
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
    if flip_sin_to_cos:
        emb = jnp.concatenate([emb[:, half:], emb[:, :half]], axis=-1)
    if dim % 2 == 1:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


def _group_norm(groups: int, eps: float, name: str) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=groups, epsilon=eps, use_fast_variance=False, name=name)


def _conv3(features: int, name: str) -> nn.Conv:
    return nn.Conv(features, (3, 3), padding=((1, 1), (1, 1)), name=name)


def upsample_nearest(x: jax.Array) -> jax.Array:
    """``F.interpolate(scale_factor=2, mode="nearest")`` on NHWC."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def avg_pool2(x: jax.Array) -> jax.Array:
    """``nn.AvgPool2d(2, 2)`` on NHWC."""
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


class ResnetBlock2D(nn.Module):
    """diffusers ``ResnetBlock2D`` (pre-norm; ``resample`` ``"up"``/``"down"`` for the
    resnet-type samplers, which resample without convolution before ``conv1``)."""

    out_channels: int
    groups: int
    eps: float
    act_fn: str = "silu"
    time_embedding_norm: str = "default"
    output_scale_factor: float = 1.0
    resample: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, temb: jax.Array) -> jax.Array:
        act = ACTIVATIONS[self.act_fn]
        h = act(_group_norm(self.groups, self.eps, "norm1")(x))
        if self.resample == "up":
            x, h = upsample_nearest(x), upsample_nearest(h)
        elif self.resample == "down":
            x, h = avg_pool2(x), avg_pool2(h)
        h = _conv3(self.out_channels, "conv1")(h)
        scale_shift = self.time_embedding_norm == "scale_shift"
        t = nn.Dense(self.out_channels * (2 if scale_shift else 1), name="time_emb_proj")(act(temb))
        t = t[:, None, None, :]
        norm2 = _group_norm(self.groups, self.eps, "norm2")
        if scale_shift:
            scale, shift = jnp.split(t, 2, axis=-1)
            h = norm2(h) * (1.0 + scale) + shift
        else:
            h = norm2(h + t)
        h = _conv3(self.out_channels, "conv2")(act(h))
        if x.shape[-1] != self.out_channels:
            x = nn.Conv(self.out_channels, (1, 1), name="conv_shortcut")(x)
        return (x + h) / self.output_scale_factor


class AttentionBlock(nn.Module):
    """diffusers ``Attention`` as built by the UNet blocks (``_from_deprecated_attn_block``):
    optional GroupNorm, q/k/v/out linear layers, scaled dot-product attention over the
    ``H*W`` positions, residual connection, ``rescale_output_factor``."""

    heads: int
    dim_head: int
    norm_groups: int | None
    eps: float
    rescale_output_factor: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        n, h, w, c = x.shape
        hs = x.reshape(n, h * w, c)
        if self.norm_groups is not None:
            hs = _group_norm(self.norm_groups, self.eps, "group_norm")(hs)
        inner = self.heads * self.dim_head
        q, k, v = (
            nn.Dense(inner, name=name)(hs).reshape(n, h * w, self.heads, self.dim_head)
            for name in ("to_q", "to_k", "to_v")
        )
        scale = self.dim_head**-0.5
        logits = jnp.einsum("nqhd,nkhd->nhqk", q, k) * scale
        probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
        out = jnp.einsum("nhqk,nkhd->nqhd", probs, v).reshape(n, h * w, inner)
        out = nn.Dense(c, name="to_out_0")(out).reshape(n, h, w, c)
        return (out + x) / self.rescale_output_factor


class Downsample2D(nn.Module):
    """Stride-2 3x3 conv; ``padding`` 0 pads right/bottom by one first, as diffusers."""

    out_channels: int
    padding: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        p = self.padding
        pad = ((0, 1), (0, 1)) if p == 0 else ((p, p), (p, p))
        return nn.Conv(self.out_channels, (3, 3), strides=(2, 2), padding=pad, name="conv")(x)


class Upsample2D(nn.Module):
    """Nearest 2x upsampling then a 3x3 conv."""

    out_channels: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return _conv3(self.out_channels, "conv")(upsample_nearest(x))


def _resnet(cfg: UNet2DConfig, out_channels: int, name: str, **kw: Any) -> ResnetBlock2D:
    return ResnetBlock2D(
        out_channels,
        groups=cfg.norm_num_groups,
        eps=cfg.norm_eps,
        act_fn=cfg.act_fn,
        time_embedding_norm=cfg.resnet_time_scale_shift,
        name=name,
        **kw,
    )


def _attention(cfg: UNet2DConfig, spec: BlockSpec, name: str) -> AttentionBlock:
    return AttentionBlock(spec.heads, spec.dim_head, cfg.norm_num_groups, cfg.norm_eps, name=name)


class DownBlock(nn.Module):
    """``DownBlock2D`` / ``AttnDownBlock2D`` / ``ResnetDownsampleBlock2D``; returns the new
    hidden state and the skip states it contributes."""

    config: UNet2DConfig
    index: int

    @nn.compact
    def __call__(self, x: jax.Array, temb: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
        cfg = self.config
        spec = down_block_specs(cfg)[self.index]
        skips = []
        for j in range(len(spec.resnets)):
            x = _resnet(cfg, spec.out_channels, f"resnets_{j}")(x, temb)
            if spec.attention:
                x = _attention(cfg, spec, f"attentions_{j}")(x)
            skips.append(x)
        if spec.sampler == "conv":
            x = Downsample2D(spec.out_channels, cfg.downsample_padding, name="downsamplers_0")(x)
            skips.append(x)
        elif spec.sampler == "resnet":
            x = _resnet(cfg, spec.out_channels, "downsamplers_0", resample="down")(x, temb)
            skips.append(x)
        return x, skips


class UpBlock(nn.Module):
    """``UpBlock2D`` / ``AttnUpBlock2D`` / ``ResnetUpsampleBlock2D``: each resnet consumes
    the last remaining skip state (concatenated on channels)."""

    config: UNet2DConfig
    index: int

    @nn.compact
    def __call__(self, x: jax.Array, skips: list[jax.Array], temb: jax.Array) -> jax.Array:
        cfg = self.config
        spec = up_block_specs(cfg)[self.index]
        for j in range(len(spec.resnets)):
            x = jnp.concatenate([x, skips.pop()], axis=-1)
            x = _resnet(cfg, spec.out_channels, f"resnets_{j}")(x, temb)
            if spec.attention:
                x = _attention(cfg, spec, f"attentions_{j}")(x)
        if spec.sampler == "conv":
            x = Upsample2D(spec.out_channels, name="upsamplers_0")(x)
        elif spec.sampler == "resnet":
            x = _resnet(cfg, spec.out_channels, "upsamplers_0", resample="up")(x, temb)
        return x


class MidBlock(nn.Module):
    """``UNetMidBlock2D`` with one attention layer (``num_layers`` 1, as UNet2DModel builds)."""

    config: UNet2DConfig

    @nn.compact
    def __call__(self, x: jax.Array, temb: jax.Array) -> jax.Array:
        cfg = self.config
        ch = cfg.block_out_channels[-1]
        osf = cfg.mid_block_scale_factor
        x = _resnet(cfg, ch, "resnets_0", output_scale_factor=osf)(x, temb)
        if cfg.add_attention:
            heads, dim_head = _heads(cfg, ch)
            x = AttentionBlock(
                heads, dim_head, cfg.mid_attention_groups, cfg.norm_eps, osf, name="attentions_0"
            )(x)
        return _resnet(cfg, ch, "resnets_1", output_scale_factor=osf)(x, temb)


class GaussianFourierProjection(nn.Module):
    """diffusers ``GaussianFourierProjection(embedding_size, scale=16)`` with ``log=True``,
    ``flip_sin_to_cos=False`` (how UNet2DModel builds it). ``weight`` is a fixed buffer."""

    embedding_size: int
    scale: float = 16.0

    @nn.compact
    def __call__(self, t: jax.Array) -> jax.Array:
        w = self.param(
            "weight", nn.initializers.normal(self.scale), (self.embedding_size,), jnp.float32
        )
        proj = jnp.log(t.astype(jnp.float32))[:, None] * w[None, :] * 2.0 * math.pi
        return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)


class TimestepEmbedding(nn.Module):
    """``linear_1 -> SiLU -> linear_2``."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Dense(self.features, name="linear_1")(x)
        return nn.Dense(self.features, name="linear_2")(nn.silu(x))


class UNet2D(nn.Module):
    """``UNet2DModel.forward``: ``(N, H, W, in_channels)`` sample, ``(N,)`` or scalar
    timesteps (floats allowed), ``(N,)`` int class labels -> ``(N, H, W, out_channels)``."""

    config: UNet2DConfig

    @nn.compact
    def __call__(
        self, sample: jax.Array, timesteps: jax.Array, class_labels: jax.Array | None = None
    ) -> jax.Array:
        cfg = self.config
        n = sample.shape[0]
        if cfg.center_input_sample:
            sample = 2.0 * sample - 1.0
        t = jnp.broadcast_to(jnp.asarray(timesteps).astype(jnp.float32).reshape(-1), (n,))
        if cfg.time_embedding_type == "fourier":
            t_emb = GaussianFourierProjection(cfg.block_out_channels[0], name="time_proj")(t)
        else:
            t_emb = timestep_embedding(
                t, cfg.block_out_channels[0], cfg.flip_sin_to_cos, cfg.freq_shift
            )
        emb = TimestepEmbedding(cfg.time_embed_dim, name="time_embedding")(t_emb.astype(sample.dtype))
        if cfg.num_class_embeds is not None:
            if class_labels is None:
                raise ValueError("this UNet is class-conditional: class_labels are required")
            labels = jnp.broadcast_to(jnp.asarray(class_labels).reshape(-1), (n,))
            emb = emb + nn.Embed(cfg.num_class_embeds, cfg.time_embed_dim, name="class_embedding")(
                labels
            )
        elif class_labels is not None:
            raise ValueError("this UNet has no class embedding; class_labels must be None")

        x = _conv3(cfg.block_out_channels[0], "conv_in")(sample)
        skips = [x]
        for i in range(len(cfg.down_block_types)):
            x, res = DownBlock(cfg, i, name=f"down_blocks_{i}")(x, emb)
            skips.extend(res)
        if cfg.mid_block_type is not None:
            x = MidBlock(cfg, name="mid_block")(x, emb)
        for i in range(len(cfg.up_block_types)):
            x = UpBlock(cfg, i, name=f"up_blocks_{i}")(x, skips, emb)
        x = _group_norm(cfg.norm_num_groups, cfg.norm_eps, "conv_norm_out")(x)
        x = _conv3(cfg.out_channels, "conv_out")(nn.silu(x))  # SiLU whatever act_fn, as diffusers
        if cfg.time_embedding_type == "fourier":
            x = x / t.astype(x.dtype)[:, None, None, None]
        return x


def init_variables(config: UNet2DConfig, key: jax.Array) -> dict[str, Any]:
    """Fresh UNet variables (``{"params": ...}``, float32), drawn from ``key``.

    Distributions like Flax's defaults (kernels N(0, 1/fan_in), biases 0, norm scales 1,
    embeddings N(0, 1), Fourier weights N(0, 16^2)), but drawn as one normal vector that is
    cut into the leaves: Flax's own ``init`` compiles one RNG per parameter, tens of seconds
    on CPU for even a tiny UNet, and this tree is also the template every load is checked
    against. Pure JAX, so ``jax.eval_shape`` of it costs nothing.
    """
    return _init_fn(config)(key)


@functools.lru_cache(maxsize=16)
def _init_fn(config: UNet2DConfig) -> Callable[[jax.Array], dict[str, Any]]:
    side = config.downsample_factor
    sample = jax.ShapeDtypeStruct((1, side, side, config.in_channels), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.float32)
    labels = None if config.num_class_embeds is None else jax.ShapeDtypeStruct((1,), jnp.int32)
    shapes = jax.eval_shape(UNet2D(config).init, jax.random.key(0), sample, t, labels)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes)
    sizes = [math.prod(leaf.shape) for _, leaf in leaves]
    offsets = np.cumsum([0, *sizes])

    def draw(key: jax.Array) -> dict[str, Any]:
        flat = jax.random.normal(key, (int(offsets[-1]),), jnp.float32)
        out = []
        for (path, leaf), start, size in zip(leaves, offsets, sizes, strict=False):
            name = path[-1].key
            noise = flat[int(start) : int(start) + size].reshape(leaf.shape)
            if name == "kernel":
                value = noise / math.sqrt(math.prod(leaf.shape[:-1]))
            elif name == "embedding":
                value = noise
            elif name == "weight":  # Gaussian Fourier projection
                value = noise * 16.0
            elif name == "scale":
                value = jnp.ones(leaf.shape, leaf.dtype)
            else:
                value = jnp.zeros(leaf.shape, leaf.dtype)
            out.append(value.astype(leaf.dtype))
        return dict(jax.tree_util.tree_unflatten(treedef, out))

    return jax.jit(draw)
