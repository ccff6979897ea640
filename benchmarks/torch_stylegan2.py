"""PyTorch StyleGAN2 generators for the parity tests and the speed benchmark at the paper's
sizes (:mod:`benchmarks.scale`), written from the published architectures (no code of theirs
is imported or run):

* :class:`Generator`: NVlabs stylegan2-ada-pytorch ``training/networks.py``, with its
  parameter and buffer names (``mapping.fc0.weight``, ``synthesis.b8.conv0.noise_const``,
  ...), so its state dict is what a network pickle holds. The forward pass uses the fused
  modulated convolution (one grouped conv with per-image weights), the path NVlabs takes in
  float32 inference, and upfirdn2d's reference formulation (zero insertion, pad, FIR filter).
* :class:`RosinalityGenerator`: rosinality stylegan2-pytorch ``model.py`` names and maths
  (weight scale inside the modulated conv, ``NoiseInjection``, ``FusedLeakyReLU`` bias,
  ``noises.noise_i`` buffers), with a configurable channel table so tests stay small.

Every module records ``_init_args`` / ``_init_kwargs`` like NVlabs' persistent classes, for
the crafted network pickles. :func:`randomize` gives every weight, bias, noise strength and
noise buffer non-zero random values, so parity checks cover each of them.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

SQRT2 = math.sqrt(2.0)


def fir_filter() -> torch.Tensor:
    """The normalised 4x4 [1, 3, 3, 1] filter (NVlabs ``setup_filter([1, 3, 3, 1])``)."""
    f = torch.tensor([1.0, 3.0, 3.0, 1.0])
    f = torch.outer(f, f)
    return f / f.sum()


def upfirdn2d(x: torch.Tensor, f: torch.Tensor, up: int = 1, pad: tuple[int, int] = (0, 0), gain: float = 1.0) -> torch.Tensor:
    """Reference upfirdn2d (no downsampling): insert zeros, pad (before, after), convolve."""
    n, c, h, w = x.shape
    if up > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(n, c, h * up, w * up)
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    k = (f * gain).flip([0, 1])[None, None].repeat(c, 1, 1, 1)
    return F.conv2d(x, k, groups=c)


def bias_act(x: torch.Tensor, b: torch.Tensor, act: str = "linear", clamp: float | None = None) -> torch.Tensor:
    x = x + b.reshape(1, -1, *([1] * (x.ndim - 2)))
    if act == "lrelu":
        x = F.leaky_relu(x, 0.2) * SQRT2
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


class _Recorded(torch.nn.Module):
    """Keeps the constructor arguments as NVlabs' persistence decorator does."""

    def _record(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._init_args = tuple(args)
        self._init_kwargs = dict(kwargs)


class FullyConnectedLayer(_Recorded):
    def __init__(self, in_features: int, out_features: int, activation: str = "linear",
                 lr_multiplier: float = 1.0, bias_init: float = 0.0) -> None:
        super().__init__()
        self._record((in_features, out_features), dict(activation=activation, lr_multiplier=lr_multiplier, bias_init=bias_init))
        self.activation = activation
        self.weight = torch.nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = torch.nn.Parameter(torch.full([out_features], float(bias_init)))
        self.weight_gain = lr_multiplier / np.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.matmul((self.weight * self.weight_gain).t())
        return bias_act(x, self.bias * self.bias_gain, self.activation)


def normalize_2nd_moment(x: torch.Tensor) -> torch.Tensor:
    return x * (x.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()


class MappingNetwork(_Recorded):
    def __init__(self, z_dim: int, c_dim: int, w_dim: int, num_ws: int, num_layers: int = 8,
                 lr_multiplier: float = 0.01, embed_features: int | None = None) -> None:
        super().__init__()
        self._record((), dict(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=num_ws, num_layers=num_layers, lr_multiplier=lr_multiplier))
        self.z_dim, self.c_dim, self.w_dim, self.num_ws, self.num_layers = z_dim, c_dim, w_dim, num_ws, num_layers
        embed = (embed_features or w_dim) if c_dim else 0
        feats = [z_dim + embed] + [w_dim] * num_layers
        if c_dim:
            self.embed = FullyConnectedLayer(c_dim, embed)
        for i in range(num_layers):
            setattr(self, f"fc{i}", FullyConnectedLayer(feats[i], feats[i + 1], activation="lrelu", lr_multiplier=lr_multiplier))
        self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(self, z: torch.Tensor, c: torch.Tensor | None, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None) -> torch.Tensor:
        x = normalize_2nd_moment(z)
        if self.c_dim:
            x = torch.cat([x, normalize_2nd_moment(self.embed(c))], dim=1)
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        x = x.unsqueeze(1).repeat([1, self.num_ws, 1])
        if truncation_psi != 1:
            if truncation_cutoff is None:
                x = self.w_avg.lerp(x, truncation_psi)
            else:
                x = x.clone()
                x[:, :truncation_cutoff] = self.w_avg.lerp(x[:, :truncation_cutoff], truncation_psi)
        return x


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, up: bool,
                     padding: int, demodulate: bool, f: torch.Tensor | None) -> torch.Tensor:
    """NVlabs' fused path: per-image weights, one grouped (transposed) convolution."""
    n = x.shape[0]
    o, i, kh, kw = weight.shape
    w = weight.unsqueeze(0) * styles.reshape(n, 1, -1, 1, 1)
    if demodulate:
        w = w * (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt().reshape(n, -1, 1, 1, 1)
    x = x.reshape(1, -1, *x.shape[2:])
    if up:
        w = w.transpose(1, 2).reshape(n * i, o, kh, kw)
        x = F.conv_transpose2d(x, w, stride=2, groups=n)
        x = upfirdn2d(x, f, pad=(1, 1), gain=4.0)
    else:
        x = F.conv2d(x, w.reshape(n * o, i, kh, kw), padding=padding, groups=n)
    return x.reshape(n, -1, *x.shape[2:])


class SynthesisLayer(_Recorded):
    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int,
                 up: int = 1, use_noise: bool = True, conv_clamp: float | None = None) -> None:
        super().__init__()
        self._record((in_channels, out_channels), dict(w_dim=w_dim, resolution=resolution, up=up, use_noise=use_noise, conv_clamp=conv_clamp))
        self.resolution, self.up, self.use_noise, self.conv_clamp = resolution, up, use_noise, conv_clamp
        self.activation = "lrelu"
        self.register_buffer("resample_filter", fir_filter())
        self.padding = 1
        self.act_gain = SQRT2
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = torch.nn.Parameter(torch.randn([out_channels, in_channels, 3, 3]))
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
            self.noise_strength = torch.nn.Parameter(torch.zeros([]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "const") -> torch.Tensor:
        styles = self.affine(w)
        x = modulated_conv2d(x, self.weight, styles, self.up == 2, self.padding, True, self.resample_filter)
        if self.use_noise and noise_mode == "const":
            x = x + self.noise_const * self.noise_strength
        return bias_act(x, self.bias, "lrelu", self.conv_clamp)


class ToRGBLayer(_Recorded):
    def __init__(self, in_channels: int, out_channels: int, w_dim: int, conv_clamp: float | None = None) -> None:
        super().__init__()
        self._record((in_channels, out_channels), dict(w_dim=w_dim, conv_clamp=conv_clamp))
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = torch.nn.Parameter(torch.randn([out_channels, in_channels, 1, 1]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / np.sqrt(in_channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, False, 0, False, None)
        return bias_act(x, self.bias, "linear", self.conv_clamp)


class SynthesisBlock(_Recorded):
    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int,
                 img_channels: int, is_last: bool, use_noise: bool = True, conv_clamp: float | None = None) -> None:
        super().__init__()
        self._record((in_channels, out_channels), dict(w_dim=w_dim, resolution=resolution, img_channels=img_channels, is_last=is_last, architecture="skip", conv_clamp=conv_clamp))
        self.in_channels, self.resolution, self.architecture = in_channels, resolution, "skip"
        self.register_buffer("resample_filter", fir_filter())
        kw = dict(w_dim=w_dim, resolution=resolution, use_noise=use_noise, conv_clamp=conv_clamp)
        if in_channels == 0:
            self.const = torch.nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, up=2, **kw)
        self.conv1 = SynthesisLayer(out_channels, out_channels, **kw)
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp)
        self.num_conv = 1 if in_channels == 0 else 2

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None, ws: torch.Tensor, noise_mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        if self.in_channels == 0:
            x = self.const.unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
            x = self.conv1(x, ws[:, 0], noise_mode)
        else:
            x = self.conv0(x, ws[:, 0], noise_mode)
            x = self.conv1(x, ws[:, 1], noise_mode)
        if img is not None:
            img = upfirdn2d(img, self.resample_filter, up=2, pad=(2, 1), gain=4.0)
        y = self.torgb(x, ws[:, self.num_conv])
        return x, (y if img is None else img + y)


class SynthesisNetwork(_Recorded):
    def __init__(self, w_dim: int, img_resolution: int, img_channels: int, channel_base: int = 32768,
                 channel_max: int = 512, conv_clamp: float | None = None, use_noise: bool = True) -> None:
        super().__init__()
        self._record((), dict(w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels, channel_base=channel_base, channel_max=channel_max, conv_clamp=conv_clamp))
        self.resolutions = [2**i for i in range(2, int(np.log2(img_resolution)) + 1)]
        ch = {r: min(channel_base // r, channel_max) for r in self.resolutions}
        self.num_ws = 0
        for r in self.resolutions:
            block = SynthesisBlock(ch[r // 2] if r > 4 else 0, ch[r], w_dim, r, img_channels,
                                   r == img_resolution, use_noise=use_noise, conv_clamp=conv_clamp)
            self.num_ws += block.num_conv
            setattr(self, f"b{r}", block)
        self.num_ws += 1

    def forward(self, ws: torch.Tensor, noise_mode: str = "const") -> torch.Tensor:
        x = img = None
        idx = 0
        for r in self.resolutions:
            block = getattr(self, f"b{r}")
            x, img = block(x, img, ws[:, idx : idx + block.num_conv + 1], noise_mode)
            idx += block.num_conv
        return img


class Generator(_Recorded):
    """NVlabs ``Generator(z_dim, c_dim, w_dim, img_resolution, img_channels, mapping_kwargs,
    synthesis_kwargs)``."""

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, img_resolution: int, img_channels: int,
                 mapping_kwargs: dict[str, Any] | None = None, synthesis_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__()
        mapping_kwargs, synthesis_kwargs = dict(mapping_kwargs or {}), dict(synthesis_kwargs or {})
        self._record((), dict(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, img_resolution=img_resolution,
                              img_channels=img_channels, mapping_kwargs=mapping_kwargs, synthesis_kwargs=synthesis_kwargs))
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.synthesis = SynthesisNetwork(w_dim, img_resolution, img_channels, **synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, c_dim, w_dim, self.num_ws, **mapping_kwargs)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None, noise_mode: str = "const") -> torch.Tensor:
        ws = self.mapping(z, c, truncation_psi, truncation_cutoff)
        return self.synthesis(ws, noise_mode)


# ----------------------------------------------------------------------------- rosinality


class _EqualLinear(torch.nn.Module):
    def __init__(self, in_dim: int, out_dim: int, bias_init: float = 0.0, lr_mul: float = 1.0, activation: bool = False) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = torch.nn.Parameter(torch.full([out_dim], float(bias_init)))
        self.scale, self.lr_mul, self.activation = lr_mul / math.sqrt(in_dim), lr_mul, activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight * self.scale)
        b = self.bias * self.lr_mul
        return F.leaky_relu(out + b, 0.2) * SQRT2 if self.activation else out + b


class _PixelNorm(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(torch.mean(x**2, dim=1, keepdim=True) + 1e-8)


class _ModConv(torch.nn.Module):
    def __init__(self, cin: int, cout: int, k: int, style_dim: int, demodulate: bool = True, upsample: bool = False) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(1, cout, cin, k, k))
        self.modulation = _EqualLinear(style_dim, cin, bias_init=1)
        self.scale, self.demodulate, self.upsample, self.padding = 1 / math.sqrt(cin * k * k), demodulate, upsample, k // 2
        if upsample:
            self.blur = torch.nn.Module()
            self.blur.register_buffer("kernel", fir_filter() * 4)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        n, cin, h, w = x.shape
        s = self.modulation(style).view(n, 1, cin, 1, 1)
        weight = self.scale * self.weight * s
        if self.demodulate:
            weight = weight * torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + 1e-8).view(n, -1, 1, 1, 1)
        cout, k = weight.shape[1], weight.shape[-1]
        x = x.view(1, n * cin, h, w)
        if self.upsample:
            weight = weight.transpose(1, 2).reshape(n * cin, cout, k, k)
            out = F.conv_transpose2d(x, weight, padding=0, stride=2, groups=n)
            out = out.view(n, cout, *out.shape[2:])
            return upfirdn2d(out, self.blur.kernel, pad=(1, 1))
        out = F.conv2d(x, weight.view(n * cout, cin, k, k), padding=self.padding, groups=n)
        return out.view(n, cout, *out.shape[2:])


class _StyledConv(torch.nn.Module):
    def __init__(self, cin: int, cout: int, style_dim: int, upsample: bool = False) -> None:
        super().__init__()
        self.conv = _ModConv(cin, cout, 3, style_dim, upsample=upsample)
        self.noise = torch.nn.Module()
        self.noise.weight = torch.nn.Parameter(torch.zeros(1))
        self.activate = torch.nn.Module()
        self.activate.bias = torch.nn.Parameter(torch.zeros(cout))

    def forward(self, x: torch.Tensor, style: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        out = self.conv(x, style)
        if noise is not None:
            out = out + self.noise.weight * noise
        return F.leaky_relu(out + self.activate.bias.view(1, -1, 1, 1), 0.2) * SQRT2


class _ToRGB(torch.nn.Module):
    def __init__(self, cin: int, style_dim: int, upsample: bool = True) -> None:
        super().__init__()
        if upsample:
            self.upsample = torch.nn.Module()
            self.upsample.register_buffer("kernel", fir_filter() * 4)
        self.conv = _ModConv(cin, 3, 1, style_dim, demodulate=False)
        self.bias = torch.nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, style: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        out = self.conv(x, style) + self.bias
        if skip is not None:
            out = out + upfirdn2d(skip, self.upsample.kernel, up=2, pad=(2, 1))
        return out


ROSINALITY_CHANNELS = {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128, 512: 64, 1024: 32}


class RosinalityGenerator(torch.nn.Module):
    """rosinality ``Generator(size, style_dim, n_mlp, lr_mlp)``; ``channels`` replaces its
    table (default: channel_multiplier 2) so tests can be small."""

    def __init__(self, size: int, style_dim: int, n_mlp: int, lr_mlp: float = 0.01, channels: dict[int, int] | None = None) -> None:
        super().__init__()
        ch = channels or ROSINALITY_CHANNELS
        self.style = torch.nn.Sequential(_PixelNorm(), *[_EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activation=True) for _ in range(n_mlp)])
        self.input = torch.nn.Module()
        self.input.input = torch.nn.Parameter(torch.randn(1, ch[4], 4, 4))
        self.conv1 = _StyledConv(ch[4], ch[4], style_dim)
        self.to_rgb1 = _ToRGB(ch[4], style_dim, upsample=False)
        self.log_size = int(math.log2(size))
        self.num_layers = (self.log_size - 2) * 2 + 1
        self.convs, self.to_rgbs = torch.nn.ModuleList(), torch.nn.ModuleList()
        self.noises = torch.nn.Module()
        for i in range(self.num_layers):
            r = 2 ** ((i + 5) // 2)
            self.noises.register_buffer(f"noise_{i}", torch.randn(1, 1, r, r))
        cin = ch[4]
        for i in range(3, self.log_size + 1):
            cout = ch[2**i]
            self.convs.append(_StyledConv(cin, cout, style_dim, upsample=True))
            self.convs.append(_StyledConv(cout, cout, style_dim))
            self.to_rgbs.append(_ToRGB(cout, style_dim))
            cin = cout
        self.n_latent = self.log_size * 2 - 2

    def forward(self, z: torch.Tensor, truncation: float = 1.0, truncation_latent: torch.Tensor | None = None,
                input_is_latent: bool = False, randomize_noise: bool = False) -> torch.Tensor:
        w = z if input_is_latent else self.style(z)
        if truncation < 1:
            w = truncation_latent + truncation * (w - truncation_latent)
        latent = w.unsqueeze(1).repeat(1, self.n_latent, 1) if w.ndim < 3 else w
        noise = [None] * self.num_layers if randomize_noise else [getattr(self.noises, f"noise_{i}") for i in range(self.num_layers)]
        out = self.input.input.repeat(latent.shape[0], 1, 1, 1)
        out = self.conv1(out, latent[:, 0], noise[0])
        skip = self.to_rgb1(out, latent[:, 1])
        i = 1
        for c1, c2, n1, n2, rgb in zip(self.convs[::2], self.convs[1::2], noise[1::2], noise[2::2], self.to_rgbs, strict=True):
            out = c1(out, latent[:, i], n1)
            out = c2(out, latent[:, i + 1], n2)
            skip = rgb(out, latent[:, i + 2], skip)
            i += 2
        return skip


def randomize(module: torch.nn.Module, seed: int = 0, lr_multiplier: float = 0.01) -> torch.nn.Module:
    """Every parameter and buffer of ``module`` drawn at random, in place (filters kept);
    returns ``module`` in eval mode. Biases, noise strengths and noise buffers are non-zero,
    mapping weights and biases are divided by the mapping's ``lr_multiplier`` (as NVlabs'
    init, so the mapping is not all bias), toRGB weights are scaled so images stay mostly in
    [-1, 1]."""
    gen = torch.Generator().manual_seed(seed)

    def draw(shape: torch.Size, scale: float) -> torch.Tensor:
        return torch.randn(shape, generator=gen) * scale

    with torch.no_grad():
        for name, p in module.named_parameters():
            mapping = re.match(r"^(mapping\.fc\d+|style\.\d+)\.", name) is not None
            if name.endswith(("affine.bias", "modulation.bias")):
                p.copy_(1.0 + draw(p.shape, 0.3))
            elif name.endswith(("bias", "noise_strength", "noise.weight")):
                p.copy_(draw(p.shape, 0.3) / (lr_multiplier if mapping else 1.0))
            elif "torgb" in name or "to_rgb" in name:
                p.copy_(draw(p.shape, 0.3 if "affine" not in name and "modulation" not in name else 1.0))
            else:
                p.copy_(draw(p.shape, 1.0 / lr_multiplier if mapping else 1.0))
        for name, b in module.named_buffers():
            if "noise" in name:
                b.copy_(draw(b.shape, 1.0))
            elif name.endswith("w_avg"):
                b.copy_(draw(b.shape, 0.5))
    return module.eval()


# ----------------------------------------------------------------------------- network pickles


class Discriminator(_Recorded):
    """A stand-in ``D`` for crafted network pickles (one parameter; never converted)."""

    def __init__(self, img_resolution: int) -> None:
        super().__init__()
        self._record((), dict(c_dim=0, img_resolution=img_resolution, img_channels=3))
        self.weight = torch.nn.Parameter(torch.randn(4, 3, 3, 3))


def network_pickle_bytes(networks: dict[str, Any], module_src: str, protocol: int = 4) -> bytes:
    """``pickle.dump`` of ``networks`` exactly as NVlabs' persistence writes its modules:
    every module becomes ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with
    ``meta = {type: 'class', version, module_src, class_name, state: its __dict__}``;
    ``*_kwargs`` values and ``training_set_kwargs`` are ``dnnlib.util.EasyDict``. Stand-in
    modules of those names exist only while pickling (pickle looks globals up by name)."""
    import pickle
    import sys
    import types

    def _reconstruct_persistent_obj(meta: Any) -> Any:  # pragma: no cover - never unpickled here
        raise AssertionError("not for loading")

    easy = type("EasyDict", (dict,), {"__module__": "dnnlib.util"})
    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    fakes = {
        "torch_utils": types.ModuleType("torch_utils"),
        "torch_utils.persistence": types.ModuleType("torch_utils.persistence"),
        "dnnlib": types.ModuleType("dnnlib"),
        "dnnlib.util": types.ModuleType("dnnlib.util"),
    }
    fakes["torch_utils.persistence"]._reconstruct_persistent_obj = _reconstruct_persistent_obj
    fakes["dnnlib.util"].EasyDict = easy
    assert not set(fakes) & set(sys.modules), "real torch_utils / dnnlib must not be importable here"

    def easydicts(d: dict[str, Any]) -> dict[str, Any]:
        return {k: easy(v) if k.endswith("_kwargs") and isinstance(v, dict) else v for k, v in d.items()}

    class Pickler(pickle.Pickler):
        def reducer_override(self, obj: Any) -> Any:
            if isinstance(obj, _Recorded):
                state = dict(obj.__dict__)
                state["_init_kwargs"] = easydicts(state["_init_kwargs"])
                meta = dict(type="class", version=6, module_src=module_src,
                            class_name=type(obj).__name__, state=state)
                return (_reconstruct_persistent_obj, (meta,))
            return NotImplemented

    import io

    buf = io.BytesIO()
    sys.modules.update(fakes)
    try:
        data = {k: v for k, v in networks.items()}
        data.setdefault("training_set_kwargs", easy(path="data.zip", resolution=32))
        Pickler(buf, protocol=protocol).dump(data)
    finally:
        for name in fakes:
            sys.modules.pop(name, None)
    return buf.getvalue()
