"""rosinality stylegan2-pytorch checkpoints (``.pt``) -> the NVlabs-equivalent Flax StyleGAN2.

A training checkpoint is ``torch.save({"g": ..., "d": ..., "g_ema": ..., "g_optim": ...,
"args": Namespace, ...})``; ``convert_weight.py`` output is ``{"g_ema": ..., "latent_avg":
...}``. It is read with ``torch.load(weights_only=True)`` (:mod:`converters.readers`).

rosinality's generator computes what NVlabs' "skip" generator computes, with other names and
two differences of bookkeeping, resolved here:

* ``ModulatedConv2d`` keeps its equalised-learning-rate scale ``1/sqrt(fan_in)`` outside the
  weight ``[1, O, I, k, k]``; NVlabs' 3x3 layers have none (demodulation makes the scale
  irrelevant but for the 1e-8 epsilon), so the converted 3x3 weight is ``scale * weight``
  and the result is exact. For toRGB (no demodulation) both apply the same ``1/sqrt(I)``,
  NVlabs to the styles: the weight is copied as is.
* noise: ``NoiseInjection.weight`` is NVlabs' ``noise_strength``, ``noises.noise_i`` its
  ``noise_const`` (i = 0 for the 4x4 conv, then two per resolution); the bias lives in
  ``FusedLeakyReLU`` (``activate.bias``). Upsampling (transposed conv + ``Blur`` with pad
  (1, 1) and gain 4, and the skip ``Upsample`` with pad (2, 1)) is NVlabs'; the blur kernels
  are checked to be [1, 3, 3, 1].

``latent_avg`` becomes ``w_avg``; a checkpoint without it (a training snapshot) gets the mean
w of 4096 mapped z (PRNG key 0), as rosinality's ``generate.py`` computes ``mean_latent(4096)``
for truncation. ``size``, ``style_dim``, ``n_mlp`` and the channels per resolution (and the
``channel_multiplier`` if they follow rosinality's table) are inferred from the shapes;
``lr_mlp`` (not stored) is taken from ``args.lr_mlp`` when present, else 0.01 (its default).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from converters.base import Converted, sha256_file
from converters.errors import ArchitectureError, ConversionError, preview
from converters.readers import TensorTable, is_state_dict, load_checkpoint, require_finite
from converters.stylegan2 import FIR_1331, fit_channels, nvlabs_variables
from ronan_jax.models import stylegan2

__all__ = ["ROSINALITY_CHANNELS", "convert_rosinality", "is_rosinality_state_dict"]

NETWORKS = ("g_ema", "g")
ROSINALITY_CHANNELS = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}
"""rosinality's channel table at channel_multiplier 1 (entries from 64 up scale with it)."""
MEAN_LATENT_SAMPLES = 4096
_STYLE = re.compile(r"^style\.(\d+)\.weight$")


def is_rosinality_state_dict(obj: Any) -> bool:
    """A state dict with rosinality's generator keys (mapping ``style.N`` and ``to_rgb1``)."""
    return is_state_dict(obj) and "to_rgb1.conv.weight" in obj and "style.1.weight" in obj


def _select(obj: Any, network: str, source: str) -> tuple[dict[str, np.ndarray], str | None]:
    if is_rosinality_state_dict(obj):
        return dict(obj), None
    if isinstance(obj, Mapping) and network in obj and is_rosinality_state_dict(obj[network]):
        return dict(obj[network]), network
    have = sorted(map(str, obj)) if isinstance(obj, Mapping) else [type(obj).__name__]
    raise ConversionError(
        f"{source}: no rosinality StyleGAN2 generator {network!r} (a state dict with style.N and "
        f"to_rgb1 keys) in the checkpoint (it holds {preview(have)})"
    )


def _lr_mlp(obj: Any) -> float | None:
    args = obj.get("args") if isinstance(obj, Mapping) else None
    value = getattr(args, "lr_mlp", None) if args is not None else None
    return float(value) if isinstance(value, int | float) else None


def _rename(table: TensorTable, n_mlp: int, blocks: int, source: str) -> dict[str, np.ndarray]:
    """rosinality tensors under their NVlabs names, with the 3x3 weight scale folded in."""
    out: dict[str, np.ndarray] = {}

    def take(key: str) -> np.ndarray:
        t = table.take(key)
        if t is None:
            return np.zeros((0,), np.float32)  # recorded missing; finish() lists them all
        return require_finite(t, key, source)

    def blur(key: str) -> None:
        if key in table:
            k = np.asarray(take(key), np.float64)
            if k.shape != (4, 4) or not np.allclose(k, FIR_1331 * 4, atol=1e-6):
                raise ArchitectureError(f"{source}: {key} is not the [1, 3, 3, 1] blur kernel; not supported")

    def styled(src: str, dst: str, noise: str) -> None:
        w = take(f"{src}.conv.weight")
        if w.ndim == 5:
            w = w[0] / math.sqrt(w.shape[2] * w.shape[3] * w.shape[4])
        out[f"{dst}.weight"] = w
        out[f"{dst}.affine.weight"] = take(f"{src}.conv.modulation.weight")
        out[f"{dst}.affine.bias"] = take(f"{src}.conv.modulation.bias")
        out[f"{dst}.noise_strength"] = take(f"{src}.noise.weight").reshape(())
        out[f"{dst}.bias"] = take(f"{src}.activate.bias")
        out[f"{dst}.noise_const"] = take(noise).reshape(take_shape(noise))
        blur(f"{src}.conv.blur.kernel")

    def take_shape(key: str) -> tuple[int, ...]:
        t = table.tensors.get(key)
        return tuple(t.shape[-2:]) if t is not None and t.ndim >= 2 else (0,)

    def rgb(src: str, dst: str) -> None:
        w = take(f"{src}.conv.weight")
        out[f"{dst}.weight"] = w[0] if w.ndim == 5 else w
        out[f"{dst}.affine.weight"] = take(f"{src}.conv.modulation.weight")
        out[f"{dst}.affine.bias"] = take(f"{src}.conv.modulation.bias")
        out[f"{dst}.bias"] = take(f"{src}.bias").reshape(-1)
        blur(f"{src}.upsample.kernel")

    for i in range(n_mlp):
        out[f"mapping.fc{i}.weight"] = take(f"style.{i + 1}.weight")
        out[f"mapping.fc{i}.bias"] = take(f"style.{i + 1}.bias")
    const = take("input.input")
    out["synthesis.b4.const"] = const[0] if const.ndim == 4 else const
    styled("conv1", "synthesis.b4.conv1", "noises.noise_0")
    rgb("to_rgb1", "synthesis.b4.torgb")
    for k in range(blocks):
        res = 8 * 2**k
        styled(f"convs.{2 * k}", f"synthesis.b{res}.conv0", f"noises.noise_{2 * k + 1}")
        styled(f"convs.{2 * k + 1}", f"synthesis.b{res}.conv1", f"noises.noise_{2 * k + 2}")
        rgb(f"to_rgbs.{k}", f"synthesis.b{res}.torgb")
    table.finish()
    return out


def convert_rosinality(
    src: str | Path,
    *,
    network: str = "g_ema",
    input_space: str = "z",
    truncation_psi: float = 1.0,
    truncation_cutoff: int | None = None,
    noise_mode: str = "none",
    lr_mlp: float | None = None,
    image_size: int | None = None,
) -> Converted:
    """Read a rosinality stylegan2-pytorch checkpoint and convert its generator.

    Args:
        src: ``.pt`` training checkpoint or ``convert_weight.py`` output (or a bare state dict).
        network: ``"g_ema"`` (default) or ``"g"``.
        input_space, truncation_psi, truncation_cutoff, noise_mode: the Generator's settings
            (see ``ronan_jax.models.stylegan2.make_generator``); noise "const" uses the stored
            ``noises.noise_i`` buffers.
        lr_mlp: the mapping's learning-rate multiplier (default: ``args.lr_mlp`` or 0.01).
        image_size: expected output size, verified.
    """
    src = Path(src)
    source = str(src)
    network = str(network).lower()
    if network not in NETWORKS:
        raise ConversionError(f"network must be one of {NETWORKS}, got {network!r}")
    obj = load_checkpoint(src)
    state, entry = _select(obj, network, source)
    style = sorted(int(m[1]) for k in state if (m := _STYLE.match(k)))
    n_mlp = len(style)
    if style != list(range(1, n_mlp + 1)):
        raise ArchitectureError(f"{source}: mapping layers style.{style} are not numbered 1..N")
    blocks = sum(1 for k in state if re.fullmatch(r"to_rgbs\.\d+\.conv\.weight", k))
    size = 4 * 2**blocks
    style_dim = int(state["style.1.weight"].shape[1])
    channels = {4: int(state["input.input"].shape[1])} if "input.input" in state else {}
    for k in range(blocks):
        w = state.get(f"convs.{2 * k}.conv.weight")
        if w is None or w.ndim != 5:
            raise ArchitectureError(f"{source}: convs.{2 * k}.conv.weight is missing or not [1, O, I, k, k]")
        channels[8 * 2**k] = int(w.shape[1])
    base, cmax = fit_channels(channels, source)
    multiplier = next(
        (m for m in (1, 2, 4) if all(c == (ROSINALITY_CHANNELS[r] * (m if r >= 64 else 1)) for r, c in channels.items())),
        None,
    )
    lr = float(lr_mlp) if lr_mlp is not None else (_lr_mlp(obj) or 0.01)
    try:
        config = stylegan2.StyleGAN2Config(
            z_dim=style_dim, w_dim=style_dim, num_classes=0, img_resolution=size, img_channels=3,
            mapping_layers=n_mlp, mapping_lr_multiplier=lr, channel_base=base, channel_max=cmax,
            input_space=input_space, truncation_psi=float(truncation_psi),
            truncation_cutoff=truncation_cutoff, noise_mode=noise_mode,
        )
    except (TypeError, ValueError) as exc:
        raise ConversionError(f"{source}: {exc}") from exc
    if image_size is not None and int(image_size) != size:
        raise ArchitectureError(f"{source}: the generator makes {size}x{size} images, not {image_size}x{image_size}")
    table = TensorTable(state, f"{source} [{entry or 'state dict'}]")
    renamed = _rename(table, n_mlp, blocks, source)
    latent_avg = obj.get("latent_avg") if isinstance(obj, Mapping) else None
    if latent_avg is not None:
        latent_avg = require_finite(np.asarray(latent_avg, np.float32), "latent_avg", source).reshape(-1)
        w_avg_from = "latent_avg"
    renamed["mapping.w_avg"] = latent_avg if latent_avg is not None else np.zeros((style_dim,), np.float32)
    variables = nvlabs_variables(renamed, config, source)
    if latent_avg is None:
        variables = _with_mean_latent(variables, config)
        w_avg_from = f"mean of {MEAN_LATENT_SAMPLES} mapped z (PRNG key 0; no latent_avg in the checkpoint)"
    summary = {
        "network": entry or "state dict",
        "size": size, "style_dim": style_dim, "n_mlp": n_mlp, "lr_mlp": lr,
        "channel_multiplier": multiplier,
        "channels": {str(r): c for r, c in sorted(channels.items())},
        "w_avg": w_avg_from,
        "num_ws": config.num_ws,
        "input_space": config.input_space, "truncation_psi": config.truncation_psi,
        "truncation_cutoff": config.truncation_cutoff, "noise_mode": config.noise_mode,
        "output_shape": [size, size, 3],
    }
    return Converted(
        architecture="stylegan2",
        config=dataclasses.asdict(config),
        variables=variables,
        summary=summary,
        sources={str(src): sha256_file(src)},
    )


def _with_mean_latent(variables: dict[str, Any], config: stylegan2.StyleGAN2Config) -> dict[str, Any]:
    z = jax.random.normal(jax.random.key(0), (MEAN_LATENT_SAMPLES, config.z_dim), jnp.float32)
    w = stylegan2.StyleGAN2Generator(config).apply(variables, z, None, method=stylegan2.StyleGAN2Generator.map)
    buffers = jax.tree_util.tree_map(np.asarray, variables["buffers"])
    buffers = {**buffers, "mapping": {**buffers["mapping"], "w_avg": np.asarray(jnp.mean(w, axis=0))}}
    return {**variables, "buffers": buffers}
