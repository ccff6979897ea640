"""PyTorch / diffusers checkpoints -> ronan-jax checkpoints (Flax variables + model card).

Public API (imported lazily, so ``import converters.layout`` stays light)::

    convert(src, out_dir, fmt=None, *, name=None, **options) -> dict   # the card written
    detect_format(path) -> str                                         # "dcgan", "sd-vae", ...
    ConversionError                                                    # base of every refusal

Layout: ``layout`` (tensor layout rules), ``readers`` (safe file reading, the finite-value
check), ``keymap`` (key-map rules and the layer/block tables of the diffusers converters),
``base`` (the ``Converted`` result), ``errors``, ``formats`` (the format names, torch-free),
``api`` (detection, dispatch table, writing), and one module per source format (``dcgan``,
``sd_vae``, ``diffusers_unet``, ``consistency``).
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "convert": "converters.api",
    "detect_format": "converters.api",
    "ConversionError": "converters.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'converters' has no attribute {name!r}")
