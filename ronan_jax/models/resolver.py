"""Model names as users type them -> Generators, default references and shipped profiles.

A model spec is either ``builtin:NAME`` (a zoo model, see ``ronan zoo``) or the path of a
checkpoint directory (:mod:`ronan_jax.models.checkpoint`: ``model_card.json`` + ``params/``, as
written by the zoo trainer and the converters). ``none`` as a reference spec means
"uncalibrated" (no reference model).

The zoo is imported lazily, only for ``builtin:`` specs, so checkpoint paths work on an
install whose zoo is missing or broken.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ronan_jax.engine.generator import Generator
from ronan_jax.models.checkpoint import CheckpointError, load_generator, read_card

BUILTIN_PREFIX = "builtin:"
NO_REFERENCE = "none"
FALLBACK_REFERENCE = "builtin:ref-photo"
"""Reference of a checkpoint whose model card names none: the zoo's general-purpose reference
(fully convolutional, serves any size that is a multiple of 4, greyscale via luma)."""

_PROFILES_DIR = Path(__file__).resolve().parent.parent / "zoo" / "profiles"


class ModelSpecError(ValueError):
    """A model spec names no loadable model (unknown zoo name, not a checkpoint, damaged)."""


def is_builtin(spec: str) -> bool:
    """True for ``builtin:NAME`` specs."""
    return spec.startswith(BUILTIN_PREFIX)


def builtin_name(spec: str) -> str:
    """``NAME`` of a ``builtin:NAME`` spec."""
    if not is_builtin(spec):
        raise ModelSpecError(f"{spec!r} is not a builtin:NAME spec")
    name = spec[len(BUILTIN_PREFIX) :].strip()
    if not name:
        raise ModelSpecError("empty zoo name in 'builtin:'; see `ronan zoo` for the names")
    return name


def _zoo() -> Any:
    try:
        from ronan_jax import zoo
    except Exception as exc:  # the zoo is optional for checkpoint paths
        raise ModelSpecError(f"the built-in model zoo is not available ({exc})") from exc
    return zoo


def normalize_spec(spec: str) -> str:
    """The canonical form of a spec: ``builtin:NAME`` as is, a path made absolute."""
    spec = spec.strip()
    if is_builtin(spec) or spec.lower() == NO_REFERENCE:
        return spec
    return os.path.abspath(os.path.expanduser(spec))


def load_model(spec: str) -> Generator:
    """The Generator a spec names; :class:`ModelSpecError` with a helpful message otherwise."""
    spec = spec.strip()
    if is_builtin(spec):
        name = builtin_name(spec)
        zoo = _zoo()
        try:
            return zoo.load(name)
        except (ValueError, CheckpointError, OSError) as exc:
            raise ModelSpecError(f"cannot load {spec}: {exc}") from exc
    path = Path(os.path.expanduser(spec))
    if not path.exists():
        hint = ""
        try:
            names = [m["name"] for m in _zoo().list_models()]
        except ModelSpecError:
            names = []
        if spec in names:
            hint = f" (did you mean builtin:{spec}?)"
        raise ModelSpecError(
            f"no such model {spec!r}{hint}: give builtin:NAME (see `ronan zoo`) or the path "
            "of a checkpoint directory"
        )
    try:
        return load_generator(path)
    except (CheckpointError, ValueError, KeyError, OSError) as exc:
        raise ModelSpecError(f"cannot load model {spec!r}: {exc}") from exc


def load_reference(spec: str | None) -> Generator | None:
    """Like :func:`load_model`, but ``None`` or ``none`` mean no reference (uncalibrated)."""
    if spec is None or spec.strip().lower() == NO_REFERENCE:
        return None
    return load_model(spec)


def default_reference_spec(model_spec: str) -> str:
    """The documented default reference of a model: the zoo's entry for builtin models, the
    model card's ``default_reference`` for checkpoints, else :data:`FALLBACK_REFERENCE`."""
    if is_builtin(model_spec):
        name = builtin_name(model_spec)
        try:
            ref = _zoo().default_reference(name)
        except ValueError as exc:
            raise ModelSpecError(str(exc)) from exc
        return ref if is_builtin(ref) else BUILTIN_PREFIX + ref
    try:
        card = read_card(os.path.expanduser(model_spec))
    except (CheckpointError, OSError):
        return FALLBACK_REFERENCE
    ref = card.get("default_reference")
    if not ref:
        return FALLBACK_REFERENCE
    ref = str(ref)
    if is_builtin(ref) or ref.lower() == NO_REFERENCE or os.path.isabs(ref):
        return ref
    if (Path(model_spec) / ref).exists():  # a path relative to the checkpoint
        return str((Path(model_spec) / ref).resolve())
    return BUILTIN_PREFIX + ref  # a bare zoo name


def shipped_profile(model_spec: str, preset: str = "paper") -> Path | None:
    """The profile shipped with a builtin model for an inversion preset
    (``ronan_jax/zoo/profiles/NAME.json`` for ``paper``, ``NAME-PRESET.json`` for the
    others), or None for checkpoints and for builtin models without one."""
    if not is_builtin(model_spec):
        return None
    path = shipped_profile_location(preset_profile_name(builtin_name(model_spec), preset))
    return path if path.is_file() else None


def preset_profile_name(name: str, preset: str = "paper") -> str:
    """The shipped-profile name of zoo model ``name`` under ``preset``."""
    return name if preset == "paper" else f"{name}-{preset}"


def shipped_profile_location(name: str) -> Path:
    """Where the shipped profile of zoo model ``name`` lives (whether or not it exists)."""
    return _PROFILES_DIR / f"{name}.json"
