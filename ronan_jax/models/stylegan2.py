"""StyleGAN2 generator (NVlabs stylegan2-ada-pytorch ``training/networks.py``), in Flax.

Mapping network: ``z`` normalised to unit second moment, for class-conditional models
(``num_classes`` = NVlabs ``c_dim`` > 0) an embedded, normalised one-hot class concatenated to
it, then ``mapping_layers`` equalised-learning-rate dense layers (weight gain
``lr_multiplier / sqrt(fan_in)``, bias gain ``lr_multiplier``, leaky ReLU with gain sqrt(2)),
giving ``w``; broadcast to ``num_ws`` layers and truncated towards the tracked ``w_avg``
(``psi``, optionally only the first ``cutoff`` layers).

Synthesis network ("skip" architecture): a learned 4x4 constant, then one block per
resolution 4, 8, ..., ``img_resolution`` with ``min(channel_base // res, channel_max)``
channels. A block is (an upsampling conv) + a conv, each a modulated and demodulated 3x3
convolution (styles from an affine layer of ``w``), plus noise (``noise_const * strength``
in noise mode "const", nothing in "none"), bias, leaky ReLU with gain sqrt(2) and the optional
``conv_clamp``; a 1x1 modulated toRGB conv (no demodulation) is added to the previous
block's image upsampled by 2. Upsampling is upfirdn2d's: zero insertion (or a stride-2
transposed conv) followed by the separable [1, 3, 3, 1] FIR filter with gain 4.

Modulation and demodulation are computed as "scale the activations, convolve with the shared
weight, scale again" (NVlabs' ``fused_modconv=False`` path), the same maths as the fused
grouped convolution without a per-image weight tensor. Everything runs in float32, which is
NVlabs' ``force_fp32=True``; ``num_fp16_res`` is recorded only.

Variables: ``params`` (weights, NVlabs names: ``mapping/fc0/kernel``,
``synthesis/b8/conv0/kernel``, ...) and ``buffers`` (``mapping/w_avg`` and every layer's
``noise_const``). The Generator's parameter hash covers its input space, truncation and noise
mode (the variables sit under a key naming them), so a profile built with one setting refuses
an audit with another.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from ronan_jax.engine.generator import Generator, param_hash

INPUT_SPACES = ("z", "w", "w+")
NOISE_MODES = ("none", "const")
ACTIVATIONS = {"linear": 1.0, "relu": math.sqrt(2.0), "lrelu": math.sqrt(2.0)}
# The [1, 3, 3, 1] FIR filter, normalised, with the upsampling gain 2 per axis folded in.
_FIR = (0.25, 0.75, 0.75, 0.25)


@dataclasses.dataclass(frozen=True)
class StyleGAN2Config:
    """Sizes and options of a StyleGAN2 generator (NVlabs ``Generator`` init kwargs) and the
    settings of the Generator made from it; what a model card's ``config`` holds for
    ``"stylegan2"``.

    ``num_classes`` is NVlabs' ``c_dim`` (0: unconditional). ``embed_features`` and
    ``layer_features`` of 0 mean ``w_dim``, as NVlabs' None. ``input_space``: ``"z"`` (the
    latent the mapping network takes), ``"w"`` (one ``w`` for every layer) or ``"w+"``
    (one ``w`` per layer, ``(num_ws, w_dim)``)."""

    z_dim: int = 512
    w_dim: int = 512
    num_classes: int = 0
    img_resolution: int = 256
    img_channels: int = 3
    mapping_layers: int = 8
    embed_features: int = 0
    layer_features: int = 0
    mapping_activation: str = "lrelu"
    mapping_lr_multiplier: float = 0.01
    channel_base: int = 32768
    channel_max: int = 512
    conv_clamp: float | None = None
    use_noise: bool = True
    num_fp16_res: int = 0
    input_space: str = "z"
    truncation_psi: float = 1.0
    truncation_cutoff: int | None = None
    noise_mode: str = "none"

    def __post_init__(self) -> None:
        res = self.img_resolution
        if res < 4 or res & (res - 1):
            raise ValueError(f"img_resolution must be a power of 2 >= 4, got {res}")
        if self.input_space not in INPUT_SPACES:
            raise ValueError(f"input_space must be one of {INPUT_SPACES}, got {self.input_space!r}")
        if self.noise_mode not in NOISE_MODES:
            raise ValueError(
                f"noise_mode must be one of {NOISE_MODES} (random noise would make the "
                f"generator non-deterministic), got {self.noise_mode!r}"
            )
        if self.mapping_activation not in ACTIVATIONS:
            raise ValueError(f"mapping_activation must be one of {sorted(ACTIVATIONS)}")
        if self.z_dim < 1 or self.w_dim < 1 or self.mapping_layers < 1 or self.num_classes < 0:
            raise ValueError("z_dim, w_dim and mapping_layers must be >= 1, num_classes >= 0")
        if self.truncation_cutoff is not None and self.truncation_cutoff < 0:
            raise ValueError(f"truncation_cutoff must be >= 0, got {self.truncation_cutoff}")
        if self.input_space == "w" and self.truncation_cutoff is not None and self.truncation_psi != 1:
            raise ValueError(
                "truncation_cutoff truncates some layers only; input space 'w' has one w for "
                "all layers: use 'w+'"
            )

    @property
    def resolutions(self) -> tuple[int, ...]:
        """Block resolutions 4, 8, ..., img_resolution."""
        return tuple(2**i for i in range(2, int(math.log2(self.img_resolution)) + 1))

    def channels(self, res: int) -> int:
        """Feature maps of the block at ``res`` (NVlabs' channel_base / channel_max rule)."""
        return min(self.channel_base // res, self.channel_max)

    @property
    def num_ws(self) -> int:
        """Number of per-layer ``w`` the synthesis network takes (2 log2(res) - 2)."""
        return 2 * len(self.resolutions)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input in :attr:`input_space`."""
        return {"z": (self.z_dim,), "w": (self.w_dim,), "w+": (self.num_ws, self.w_dim)}[
            self.input_space
        ]


# ----------------------------------------------------------------------------- layers


def _bias_act(x: jax.Array, bias: jax.Array, act: str, clamp: float | None) -> jax.Array:
    """NVlabs ``bias_act``: add bias, activation, its default gain, then clamp to +-clamp."""
    x = x + bias
    if act == "lrelu":
        x = jnp.where(x >= 0, x, 0.2 * x)
    elif act == "relu":
        x = jnp.maximum(x, 0)
    x = x * ACTIVATIONS[act] if act != "linear" else x
    if clamp is not None:
        x = jnp.clip(x, -clamp, clamp)
    return x


def _fir(x: jax.Array, pad: tuple[int, int], dilation: int) -> jax.Array:
    """Separable [1, 3, 3, 1] FIR filter (gain 4) on NHWC ``x``, after inserting
    ``dilation - 1`` zeros between pixels and padding ``pad`` (before, after) on H and W."""
    c = x.shape[-1]
    f = jnp.asarray(_FIR, x.dtype)
    dn = ("NHWC", "HWIO", "NHWC")
    x = jax.lax.conv_general_dilated(
        x, jnp.tile(f.reshape(4, 1, 1, 1), (1, 1, 1, c)), (1, 1), (pad, (0, 0)),
        lhs_dilation=(dilation, 1), dimension_numbers=dn, feature_group_count=c,
    )
    return jax.lax.conv_general_dilated(
        x, jnp.tile(f.reshape(1, 4, 1, 1), (1, 1, 1, c)), (1, 1), ((0, 0), pad),
        lhs_dilation=(1, dilation), dimension_numbers=dn, feature_group_count=c,
    )


def upsample2d(x: jax.Array) -> jax.Array:
    """NVlabs ``upfirdn2d.upsample2d(x, setup_filter([1, 3, 3, 1]))`` on NHWC: 2x larger."""
    # Zero insertion leaves 2H - 1 samples; padding (2, 2) is upsample2d's (2, 1) plus the
    # trailing zero that upfirdn2d's insertion keeps.
    return _fir(x, (2, 2), 2)


class FullyConnected(nn.Module):
    """NVlabs ``FullyConnectedLayer``: equalised learning rate, ``kernel`` is (in, out)."""

    features: int
    activation: str = "linear"
    lr_multiplier: float = 1.0
    bias_init: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        fan_in = x.shape[-1]
        kernel = self.param(
            "kernel",
            lambda k, s: jax.random.normal(k, s) / self.lr_multiplier,
            (fan_in, self.features),
        )
        bias = self.param("bias", nn.initializers.constant(self.bias_init), (self.features,))
        x = x @ (kernel * (self.lr_multiplier / math.sqrt(fan_in)))  # a Python float keeps the dtype
        return _bias_act(x, bias * self.lr_multiplier, self.activation, None)


def _normalize_2nd_moment(x: jax.Array) -> jax.Array:
    return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=1, keepdims=True) + 1e-8)


class MappingNetwork(nn.Module):
    """z (+ one-hot class) -> w [N, w_dim]; holds ``w_avg`` in ``buffers``."""

    config: StyleGAN2Config

    @nn.compact
    def __call__(self, z: jax.Array, c: jax.Array | None) -> jax.Array:
        cfg = self.config
        self.variable("buffers", "w_avg", lambda: jnp.zeros((cfg.w_dim,), jnp.float32))
        # Normalised in float32, then computed in the inputs' dtype (bfloat16 under mixed
        # precision, where the engine casts inputs and parameters alike).
        x = _normalize_2nd_moment(z.astype(jnp.float32)).astype(z.dtype)
        if cfg.num_classes:
            y = FullyConnected(cfg.embed_features or cfg.w_dim, name="embed")(c)
            x = jnp.concatenate([x, _normalize_2nd_moment(y)], axis=1)
        for i in range(cfg.mapping_layers):
            last = i == cfg.mapping_layers - 1
            x = FullyConnected(
                cfg.w_dim if last else cfg.layer_features or cfg.w_dim,
                activation=cfg.mapping_activation,
                lr_multiplier=cfg.mapping_lr_multiplier,
                name=f"fc{i}",
            )(x)
        return x

    def w_avg(self) -> jax.Array:
        return self.get_variable("buffers", "w_avg")


class SynthesisLayer(nn.Module):
    """Modulated, demodulated 3x3 conv (optionally upsampling by 2), noise, bias, lrelu."""

    features: int
    resolution: int
    up: bool
    config: StyleGAN2Config

    @nn.compact
    def __call__(self, x: jax.Array, w: jax.Array) -> jax.Array:
        cfg = self.config
        cin = x.shape[-1]
        styles = FullyConnected(cin, bias_init=1.0, name="affine")(w)  # [N, I]
        # NVlabs weight [O, I, 3, 3] as HWIO (3, 3, I, O).
        kernel = self.param("kernel", nn.initializers.normal(1.0), (3, 3, cin, self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        dcoefs = jax.lax.rsqrt(jnp.square(styles) @ jnp.sum(jnp.square(kernel), axis=(0, 1)) + 1e-8)
        x = x * styles[:, None, None, :]
        dn = ("NHWC", "HWIO", "NHWC")
        if self.up:
            # Stride-2 transposed conv (scatter) == correlation of the zero-dilated input,
            # padded by 2, with the spatially flipped kernel; then the FIR filter, padding 1.
            x = jax.lax.conv_general_dilated(
                x, kernel[::-1, ::-1], (1, 1), ((2, 2), (2, 2)), lhs_dilation=(2, 2),
                dimension_numbers=dn,
            )
            x = _fir(x, (1, 1), 1)
        else:
            x = jax.lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dn)
        x = x * dcoefs[:, None, None, :]
        if cfg.use_noise:
            noise_const = self.variable(
                "buffers", "noise_const",
                lambda: jnp.zeros((self.resolution, self.resolution), jnp.float32),
            ).value
            strength = self.param("noise_strength", nn.initializers.zeros, ())
            if cfg.noise_mode == "const":
                x = x + (noise_const * strength)[None, :, :, None]
        return _bias_act(x, bias, "lrelu", cfg.conv_clamp)


class ToRGB(nn.Module):
    """Modulated 1x1 conv without demodulation, bias, clamp."""

    channels: int
    config: StyleGAN2Config

    @nn.compact
    def __call__(self, x: jax.Array, w: jax.Array) -> jax.Array:
        cin = x.shape[-1]
        styles = FullyConnected(cin, bias_init=1.0, name="affine")(w) / math.sqrt(cin)
        kernel = self.param("kernel", nn.initializers.normal(1.0), (cin, self.channels))
        bias = self.param("bias", nn.initializers.zeros, (self.channels,))
        x = jnp.einsum("nhwi,io->nhwo", x * styles[:, None, None, :], kernel)
        return _bias_act(x, bias, "linear", self.config.conv_clamp)


class SynthesisNetwork(nn.Module):
    """ws [N, num_ws, w_dim] -> image [N, H, W, C] (NHWC, about [-1, 1])."""

    config: StyleGAN2Config

    @nn.compact
    def __call__(self, ws: jax.Array) -> jax.Array:
        cfg = self.config
        n = ws.shape[0]
        x = img = None
        w_idx = 0
        for res in cfg.resolutions:
            block = f"b{res}"
            ch = cfg.channels(res)
            if res == 4:
                const = self.param(f"{block}_const", nn.initializers.normal(1.0), (4, 4, ch))
                x = jnp.broadcast_to(const, (n, 4, 4, ch))
                x = SynthesisLayer(ch, res, False, cfg, name=f"{block}_conv1")(x, ws[:, w_idx])
                w_idx += 1
            else:
                x = SynthesisLayer(ch, res, True, cfg, name=f"{block}_conv0")(x, ws[:, w_idx])
                x = SynthesisLayer(ch, res, False, cfg, name=f"{block}_conv1")(x, ws[:, w_idx + 1])
                w_idx += 2
            y = ToRGB(cfg.img_channels, cfg, name=f"{block}_torgb")(x, ws[:, w_idx])
            img = y if img is None else upsample2d(img) + y
        return img


class StyleGAN2Generator(nn.Module):
    """The generator in one input space: z (+ class ids), w or w+ -> NHWC image."""

    config: StyleGAN2Config

    def setup(self) -> None:
        self.mapping = MappingNetwork(self.config)
        self.synthesis = SynthesisNetwork(self.config)

    def map(self, z: jax.Array, label: jax.Array | None) -> jax.Array:
        """z [N, z_dim] (+ int class ids [N]) -> untruncated w [N, w_dim]. An id outside
        [0, num_classes) (e.g. -1) gives the all-zero class vector."""
        cfg = self.config
        c = None
        if cfg.num_classes:
            if label is None:
                raise ValueError("conditional StyleGAN2 needs a class id")
            c = jax.nn.one_hot(label, cfg.num_classes, dtype=z.dtype)
        return self.mapping(z, c)

    def truncate(self, ws: jax.Array) -> jax.Array:
        """ws [N, num_ws, w_dim] truncated towards w_avg (``psi``; first ``cutoff`` layers)."""
        cfg = self.config
        if cfg.truncation_psi == 1:
            return ws
        w_avg = self.mapping.w_avg()
        t = w_avg + cfg.truncation_psi * (ws - w_avg)
        if cfg.truncation_cutoff is None:
            return t
        layer = jnp.arange(ws.shape[1])[None, :, None]
        return jnp.where(layer < cfg.truncation_cutoff, t, ws)

    def __call__(self, inputs: jax.Array, label: jax.Array | None = None) -> jax.Array:
        cfg = self.config
        if cfg.input_space == "z":
            w = self.map(inputs, label)
            ws = self.truncate(jnp.broadcast_to(w[:, None], (w.shape[0], cfg.num_ws, cfg.w_dim)))
        elif cfg.input_space == "w":
            ws = jnp.broadcast_to(inputs[:, None], (inputs.shape[0], cfg.num_ws, cfg.w_dim))
        else:
            ws = inputs
        return self.synthesis(ws)

    def sample_w(self, z: jax.Array, label: jax.Array | None) -> jax.Array:
        """The prior of the w / w+ spaces: mapped and truncated ws [N, num_ws, w_dim]."""
        cfg = self.config
        w = self.map(z, label)
        return self.truncate(jnp.broadcast_to(w[:, None], (w.shape[0], cfg.num_ws, cfg.w_dim)))


# ----------------------------------------------------------------------------- Generator


def settings_key(config: StyleGAN2Config) -> str:
    """The key the Generator's variables sit under: names every setting that changes its
    images from the same weights, so the parameter hash (and a profile) tells them apart."""
    return (
        f"stylegan2 input_space={config.input_space} truncation_psi={float(config.truncation_psi)!r} "
        f"truncation_cutoff={config.truncation_cutoff} noise_mode={config.noise_mode}"
    )


@dataclasses.dataclass(frozen=True)
class StyleGAN2Apply:
    """Pure apply for the engine: {settings_key: variables} + inputs (+ class ids) -> [0, 1]
    NHWC. A frozen dataclass, so equal configs share one compiled program."""

    config: StyleGAN2Config

    def __call__(self, params: Any, inputs: jax.Array, condition: Any) -> jax.Array:
        cfg = self.config
        variables = params[settings_key(cfg)]
        label = condition if cfg.input_space == "z" else None
        out = StyleGAN2Generator(cfg).apply(variables, inputs, label)
        return jnp.clip((out.astype(jnp.float32) + 1.0) / 2.0, 0.0, 1.0)


@dataclasses.dataclass(frozen=True, eq=False)
class MappingPrior:
    """The prior of the w and w+ input spaces: the mapping network applied to z ~ N(0, I).

    Each restart draws one z (and, for a conditional model, a class uniformly at random),
    maps it, broadcasts the w to every layer and truncates it as the generator is set to
    (``psi``, ``cutoff``): a w+ restart starts on the model's own W manifold, one w for all
    layers, and the inversion then frees the layers. Holds the mapping weights as constants;
    equal by (config, weights), so equal generators share one compiled program."""

    config: StyleGAN2Config
    variables: Any
    digest: str

    def __call__(self, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        cfg = self.config
        lead = tuple(shape[: len(shape) - len(cfg.input_shape)])
        n = int(np.prod(lead, dtype=np.int64))
        k_z, k_c = jax.random.split(key)
        z = jax.random.normal(k_z, (n, cfg.z_dim), jnp.float32)
        label = jax.random.randint(k_c, (n,), 0, cfg.num_classes) if cfg.num_classes else None
        ws = StyleGAN2Generator(cfg).apply(self.variables, z, label, method=StyleGAN2Generator.sample_w)
        out = ws[:, 0] if cfg.input_space == "w" else ws
        return out.reshape((*lead, *cfg.input_shape))

    def __hash__(self) -> int:
        return hash((self.config, self.digest))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MappingPrior) and (self.config, self.digest) == (other.config, other.digest)


def init_variables(config: StyleGAN2Config, key: jax.Array) -> dict[str, Any]:
    """Fresh generator variables (``params`` and ``buffers``) of ``config``'s architecture."""
    arch = dataclasses.replace(config, input_space="z", truncation_psi=1.0, truncation_cutoff=None)
    z = jnp.zeros((1, config.z_dim), jnp.float32)
    label = jnp.zeros((1,), jnp.int32) if config.num_classes else None
    return dict(StyleGAN2Generator(arch).init(key, z, label))


def make_generator(
    config: StyleGAN2Config,
    variables: Any,
    name: str = "stylegan2",
    *,
    input_space: str | None = None,
    truncation_psi: float | None = None,
    truncation_cutoff: int | None = None,
    noise_mode: str | None = None,
    **info: Any,
) -> Generator:
    """Wrap StyleGAN2 variables as a :class:`Generator`.

    The keyword settings override ``config``'s (the card's) when given. Input spaces:
    ``"z"`` (prior N(0, I); a conditional model takes per-image int class ids, id -1 giving
    the all-zero class vector), ``"w"`` (input ``(w_dim,)``) and ``"w+"`` (input ``(num_ws,
    w_dim)``), whose prior is :class:`MappingPrior` and which take no class (it is in w).
    ``Generator.num_classes`` is the number of classes the Generator's condition takes.
    """
    changes = {
        k: v
        for k, v in dict(
            input_space=input_space, truncation_psi=truncation_psi, noise_mode=noise_mode
        ).items()
        if v is not None
    }
    if truncation_cutoff is not None or truncation_psi is not None:
        changes["truncation_cutoff"] = truncation_cutoff
    cfg = dataclasses.replace(config, **changes)
    variables = jax.tree_util.tree_map(jnp.asarray, variables)
    prior_kwargs: dict[str, Any] = {}
    if cfg.input_space != "z":
        mapping = {col: {"mapping": tree["mapping"]} for col, tree in variables.items()}
        prior_kwargs["prior"] = MappingPrior(cfg, mapping, param_hash(mapping))
    return Generator(
        name=name,
        apply_fn=StyleGAN2Apply(cfg),
        params={settings_key(cfg): variables},
        input_shape=cfg.input_shape,
        output_shape=(cfg.img_resolution, cfg.img_resolution, cfg.img_channels),
        info={
            "architecture": "stylegan2",
            "config": dataclasses.asdict(cfg),
            "input_space": cfg.input_space,
            "truncation_psi": cfg.truncation_psi,
            "truncation_cutoff": cfg.truncation_cutoff,
            "noise_mode": cfg.noise_mode,
            "num_classes": cfg.num_classes if cfg.input_space == "z" else 0,
            **info,
        },
        num_classes=cfg.num_classes if cfg.input_space == "z" else 0,
        **prior_kwargs,
    )
