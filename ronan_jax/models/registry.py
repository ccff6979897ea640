"""Architecture table: from a model card's ``architecture`` + ``config`` to a Generator.

One explicit entry per architecture family (no renaming guesses, no string dispatch spread
over files). Each entry knows how to build fresh variables (the shape template that restored
or converted weights are checked against) and how to wrap variables as a Generator.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax

from ronan_jax.generator import Generator
from ronan_jax.models import dcgan


@dataclasses.dataclass(frozen=True)
class Architecture:
    """How to instantiate one family from a JSON-able config dict."""

    name: str
    init: Callable[[dict[str, Any], jax.Array], Any]
    make: Callable[..., Generator]  # (config_dict, variables, name=..., **info) -> Generator


def _dcgan_config(cfg: dict[str, Any]) -> dcgan.DCGANConfig:
    return dcgan.DCGANConfig(**cfg)


ARCHITECTURES: dict[str, Architecture] = {
    "dcgan": Architecture(
        "dcgan",
        init=lambda cfg, key: dcgan.init_variables(_dcgan_config(cfg), key),
        make=lambda cfg, variables, name="dcgan", **info: dcgan.make_generator(
            _dcgan_config(cfg), variables, name=name, **info
        ),
    ),
}


def get_architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ValueError(
            f"unknown architecture {name!r}; known: {', '.join(sorted(ARCHITECTURES))}"
        ) from None
