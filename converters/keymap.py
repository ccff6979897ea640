"""Explicit key maps from diffusers state dicts to Flax variables, shared by the diffusers
converters (:mod:`converters.sd_vae`, :mod:`converters.diffusers_unet`).

A key map is a list of :class:`KeyRule`, one per PyTorch tensor: its state-dict key, the
Flax path it goes to, the layout rule that turns one into the other, and older names the
same tensor may be saved under. Maps are built from per-layer leaf tables (:data:`CONV`,
:data:`LINEAR`, :data:`NORM`, ...) and the block tables both model families share
(:data:`RESNET`, :data:`ATTENTION`); :func:`map_tensors` then consumes a
:class:`~converters.readers.TensorTable` through the map. Writing every tensor out, rather
than pattern-matching keys, means a checkpoint either matches exactly or is refused with the
full list of differences.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import numpy as np

from converters import layout
from converters.base import flax_key
from converters.errors import ArchitectureError
from converters.readers import TensorTable, require_finite

__all__ = [
    "ATTENTION",
    "CONV",
    "EMBED",
    "FOURIER",
    "LINEAR",
    "NORM",
    "RESNET",
    "KeyRule",
    "Leaves",
    "Rule",
    "attention_rules",
    "flax_module_path",
    "layer_rules",
    "map_tensors",
    "resnet_rules",
]

Rule = Callable[[np.ndarray], np.ndarray]
"""A layout rule: a PyTorch tensor (NumPy) -> the Flax leaf it becomes."""

Leaves = tuple[tuple[str, str, Rule], ...]
"""The tensors of one kind of layer: (PyTorch parameter name, Flax leaf name, layout rule)."""


def _same(x: np.ndarray) -> np.ndarray:
    return np.asarray(x)


# Leaf tables of the layer kinds diffusers models are built from.
CONV: Leaves = (("weight", "kernel", layout.conv2d), ("bias", "bias", _same))
LINEAR: Leaves = (("weight", "kernel", layout.linear), ("bias", "bias", _same))
NORM: Leaves = (("weight", "scale", _same), ("bias", "bias", _same))
EMBED: Leaves = (("weight", "embedding", _same),)
FOURIER: Leaves = (("weight", "weight", _same),)

# Sub-modules of one ResnetBlock2D, in state-dict order; ``time_emb_proj`` exists only in
# blocks that take a time embedding (the UNet's, not the VAE's), ``conv_shortcut`` only when
# the block changes the channel count.
RESNET: tuple[tuple[str, Leaves], ...] = (
    ("norm1", NORM),
    ("conv1", CONV),
    ("time_emb_proj", LINEAR),
    ("norm2", NORM),
    ("conv2", CONV),
)
# Projections of one attention block: (name, leaves, name before diffusers 0.15 renamed it;
# such old checkpoints may also store them as 1x1 convolutions, which ``layout.linear`` takes).
ATTENTION: tuple[tuple[str, Leaves, str], ...] = (
    ("to_q", LINEAR, "query"),
    ("to_k", LINEAR, "key"),
    ("to_v", LINEAR, "value"),
    ("to_out.0", LINEAR, "proj_attn"),
)


@dataclasses.dataclass(frozen=True)
class KeyRule:
    """One row of a key map: a diffusers state-dict key, where it goes in the Flax variables
    (collection, module path, leaf), how its layout changes, and older names of the same
    tensor."""

    torch_key: str
    flax_path: tuple[str, ...]
    rule: Rule
    aliases: tuple[str, ...] = ()


def flax_module_path(torch_module: str) -> tuple[str, ...]:
    """``decoder.up_blocks.0.resnets.1`` -> ``("decoder", "up_blocks_0", "resnets_1")``: a
    list index joins its list's name, as linen names the members of a module list."""
    parts: list[str] = []
    for p in torch_module.split("."):
        if p.isdigit() and parts:
            parts[-1] = f"{parts[-1]}_{p}"
        else:
            parts.append(p)
    return tuple(parts)


def layer_rules(module: str, leaves: Leaves, legacy: str | None = None) -> list[KeyRule]:
    """Rules of one layer's tensors under ``params``; ``legacy`` is the module's older name
    (same parameter names)."""
    path = ("params", *flax_module_path(module))
    return [
        KeyRule(
            f"{module}.{torch_name}",
            (*path, flax_name),
            rule,
            () if legacy is None else (f"{legacy}.{torch_name}",),
        )
        for torch_name, flax_name, rule in leaves
    ]


def resnet_rules(
    prefix: str, channels: tuple[int, int], *, time_embedding: bool
) -> list[KeyRule]:
    """Rules of one ResnetBlock2D taking ``channels[0]`` to ``channels[1]`` channels."""
    rules: list[KeyRule] = []
    for name, leaves in RESNET:
        if name == "time_emb_proj" and not time_embedding:
            continue
        rules += layer_rules(f"{prefix}.{name}", leaves)
    if channels[0] != channels[1]:
        rules += layer_rules(f"{prefix}.conv_shortcut", CONV)
    return rules


def attention_rules(prefix: str, *, group_norm: bool) -> list[KeyRule]:
    """Rules of one attention block (its projections accept their pre-0.15 names)."""
    rules = layer_rules(f"{prefix}.group_norm", NORM) if group_norm else []
    for name, leaves, legacy in ATTENTION:
        rules += layer_rules(f"{prefix}.{name}", leaves, legacy=f"{prefix}.{legacy}")
    return rules


def map_tensors(
    table: TensorTable, rules: Iterable[KeyRule], source: str
) -> dict[str, np.ndarray]:
    """``{flax keystr: leaf}`` for every rule whose tensor ``table`` holds, in layout.

    Each tensor is taken from ``table`` (missing ones are recorded there, for
    :meth:`TensorTable.finish` to list), refused when it holds NaN or infinite values
    (:func:`~converters.readers.require_finite`), and laid out by its rule; a tensor the
    rule cannot lay out (wrong rank) is an :class:`ArchitectureError` naming it."""
    values: dict[str, np.ndarray] = {}
    for row in rules:
        tensor = table.take(row.torch_key, *row.aliases)
        if tensor is None:
            continue
        require_finite(tensor, row.torch_key, source)
        try:
            values[flax_key(*row.flax_path)] = row.rule(tensor)
        except ValueError as exc:
            raise ArchitectureError(f"{source}: {row.torch_key}: {exc}") from exc
    return values
