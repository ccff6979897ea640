"""StyleGAN2 state dicts with NVlabs names -> Flax variables of ``ronan_jax.models.stylegan2``.

Shared by :mod:`converters.stylegan_pickle` (NVlabs network pickles, whose generator state
dict has these names already) and :mod:`converters.stylegan_rosinality` (which renames
rosinality's tensors to them first). One :class:`~converters.keymap.KeyRule` per tensor::

    mapping.embed.{weight,bias}            params/mapping/embed/{kernel,bias}   (c_dim > 0)
    mapping.fc{i}.{weight,bias}            params/mapping/fc{i}/{kernel,bias}
    mapping.w_avg                          buffers/mapping/w_avg
    synthesis.b4.const  [C, 4, 4]          params/synthesis/b4_const  [4, 4, C]
    synthesis.b{r}.conv{0,1}.weight        params/synthesis/b{r}_conv{0,1}/kernel  (HWIO)
    synthesis.b{r}.conv{0,1}.affine.*      .../affine/{kernel,bias}
    synthesis.b{r}.conv{0,1}.{bias,noise_strength}, noise_const (buffers)
    synthesis.b{r}.torgb.{weight,bias,affine.*}

The FIR filter buffers (``resample_filter``) are checked to be the normalised [1, 3, 3, 1]
filter the Flax model hard-codes, then dropped; any other tensor left over, or missing, is
an error listing them all.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from converters import layout
from converters.base import abstract_template, fill_template
from converters.errors import ArchitectureError
from converters.keymap import LINEAR, KeyRule, map_tensors
from converters.readers import TensorTable
from ronan_jax.models import stylegan2

FIR_1331 = np.outer([1.0, 3.0, 3.0, 1.0], [1.0, 3.0, 3.0, 1.0]) / 64.0


def _chw_to_hwc(x: np.ndarray) -> np.ndarray:
    if x.ndim != 3:
        raise ValueError(f"expected a [C, H, W] tensor, got shape {x.shape}")
    return np.ascontiguousarray(x.transpose(1, 2, 0))


def _same(x: np.ndarray) -> np.ndarray:
    return np.asarray(x)


def _fc(torch_prefix: str, flax_path: tuple[str, ...]) -> list[KeyRule]:
    return [KeyRule(f"{torch_prefix}.{t}", ("params", *flax_path, f), rule) for t, f, rule in LINEAR]


def nvlabs_rules(config: stylegan2.StyleGAN2Config) -> list[KeyRule]:
    """Every tensor of an NVlabs StyleGAN2 generator of ``config`` and where it goes."""
    rules: list[KeyRule] = []
    if config.num_classes:
        rules += _fc("mapping.embed", ("mapping", "embed"))
    for i in range(config.mapping_layers):
        rules += _fc(f"mapping.fc{i}", ("mapping", f"fc{i}"))
    rules.append(KeyRule("mapping.w_avg", ("buffers", "mapping", "w_avg"), _same))
    for res in config.resolutions:
        block = f"synthesis.b{res}"
        if res == 4:
            rules.append(KeyRule(f"{block}.const", ("params", "synthesis", f"b{res}_const"), _chw_to_hwc))
        for conv in ("conv1",) if res == 4 else ("conv0", "conv1"):
            path = ("synthesis", f"b{res}_{conv}")
            rules += _fc(f"{block}.{conv}.affine", (*path, "affine"))
            rules.append(KeyRule(f"{block}.{conv}.weight", ("params", *path, "kernel"), layout.conv2d))
            rules.append(KeyRule(f"{block}.{conv}.bias", ("params", *path, "bias"), _same))
            if config.use_noise:
                rules.append(KeyRule(f"{block}.{conv}.noise_strength", ("params", *path, "noise_strength"), _same))
                rules.append(KeyRule(f"{block}.{conv}.noise_const", ("buffers", *path, "noise_const"), _same))
        path = ("synthesis", f"b{res}_torgb")
        rules += _fc(f"{block}.torgb.affine", (*path, "affine"))
        rules.append(KeyRule(f"{block}.torgb.weight", ("params", *path, "kernel"), layout.linear))
        rules.append(KeyRule(f"{block}.torgb.bias", ("params", *path, "bias"), _same))
    return rules


def check_filter(table: TensorTable, key: str, source: str) -> None:
    """Consume FIR-filter buffer ``key`` (if present); refuse a filter other than [1,3,3,1]."""
    if key not in table:
        return
    f = np.asarray(table.take(key), np.float64)
    if f.shape != (4, 4) or not np.allclose(f, FIR_1331, atol=1e-6):
        raise ArchitectureError(
            f"{source}: {key} is not the normalised [1, 3, 3, 1] filter (shape {f.shape}); "
            "other resampling filters are not supported"
        )


def nvlabs_variables(
    state: Mapping[str, np.ndarray], config: stylegan2.StyleGAN2Config, source: str
) -> dict[str, Any]:
    """Flax variables of ``config`` from an NVlabs-named generator state dict (NumPy)."""
    table = TensorTable(state, source)
    for key in list(state):
        if key.endswith("resample_filter"):
            check_filter(table, key, source)
    values = map_tensors(table, nvlabs_rules(config), source)
    table.finish()
    template = abstract_template(lambda k: stylegan2.init_variables(config, k), jax.random.key(0))
    return fill_template(template, values, source)


def fit_channels(channels: Mapping[int, int], source: str) -> tuple[int, int]:
    """``(channel_base, channel_max)`` that give ``channels`` (resolution -> feature maps) by
    NVlabs' rule ``min(channel_base // res, channel_max)``; ArchitectureError if none does."""
    cmax = max(channels.values())
    below = [r for r in sorted(channels) if channels[r] < cmax]
    base = channels[below[0]] * below[0] if below else cmax * max(channels)
    got = {r: min(base // r, cmax) for r in channels}
    if got != dict(channels):
        raise ArchitectureError(
            f"{source}: feature maps per resolution {dict(sorted(channels.items()))} do not follow "
            "min(channel_base // res, channel_max) for any channel_base, channel_max"
        )
    return base, cmax
