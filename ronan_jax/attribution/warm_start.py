"""Warm starts as the method sees them: which of the two inversions of an image (model and
reference) start one run at an encoder's output, said in one phrase, and refused when
asked for where no encoder exists.

The engine does the warm start (:attr:`ronan_jax.engine.config.InversionConfig.warm_start`);
each generator with an encoder (``Generator.encoder``) gets it, one without runs cold, and
the generators' identities record which encoder was used.
"""

from __future__ import annotations

from ronan_jax.engine.config import InversionConfig
from ronan_jax.engine.generator import Generator
from ronan_jax.engine.program import warm_applies


class WarmStartError(ValueError):
    """A warm start was asked for, but neither the model nor the reference has an encoder."""


def warm_roles(model: Generator, reference: Generator | None, config: InversionConfig) -> list[str]:
    """The inversions (``"model"``, ``"reference"``) that start warm under ``config``."""
    roles = [("model", model), ("reference", reference)]
    return [role for role, gen in roles if gen is not None and warm_applies(gen, config)]


def check_warm_start(model: Generator, reference: Generator | None, config: InversionConfig) -> None:
    """Refuse a warm start that would change nothing (no encoder on either model)."""
    if config.warm_start and not warm_roles(model, reference, config):
        raise WarmStartError(
            f"a warm start needs an encoder, and neither {model.name!r} nor "
            f"{'no reference' if reference is None else repr(reference.name)} has one; "
            "train one with `ronan encoder train --model DIR`"
        )


def describe_warm_start(model: Generator, reference: Generator | None, config: InversionConfig) -> str:
    """A phrase for messages, e.g. ``"warm start (model and reference encoders)"``; empty
    when cold."""
    if not config.warm_start:
        return ""
    roles = warm_roles(model, reference, config)
    cold = [r for r in ("model", "reference") if r not in roles and (r == "model" or reference is not None)]
    text = f"warm start ({' and '.join(roles)} encoder{'s' if len(roles) > 1 else ''}"
    return text + (f"; {' and '.join(cold)} cold, no encoder)" if cold else ")")
