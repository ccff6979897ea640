"""From what the user asked (:class:`AuditConfig`) to what the audit runs (:class:`AuditPlan`).

The rules: the profile is ``AuditConfig.profile`` or the one shipped with a builtin model;
the reference is the one named, else none for an uncalibrated profile, else the one the
profile was built with, else the model's documented default; the inversion settings are the
profile's, and settings the user named must equal them. Every refusal is an
:class:`AuditPlanError` naming the field at fault, raised before anything is stored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ronan_jax.attribution.classes import describe_class_rule, num_classes
from ronan_jax.attribution.profile import (
    Profile,
    ProfileMismatchError,
    check_compatible,
    config_from_profile,
)
from ronan_jax.attribution.warm_start import WarmStartError, check_warm_start, describe_warm_start
from ronan_jax.audit.config import AUDIT_FORMAT, AuditConfig
from ronan_jax.engine.config import InversionConfig
from ronan_jax.engine.environment import library_versions
from ronan_jax.engine.generator import Generator
from ronan_jax.models import resolver
from ronan_jax.results.labels import read_class_labels


class AuditPlanError(ValueError):
    """An audit that cannot run as asked; ``field`` names the :class:`AuditConfig` field at
    fault (``model``, ``reference``, ``profile``, ``inversion``) or is None."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclasses.dataclass(frozen=True)
class AuditPlan:
    """A resolved audit: the models, the profile and the inversion settings it judges with,
    and the metadata recorded with its run. Build one with :func:`plan_audit` (from specs)
    or :meth:`from_objects` (from models and a profile in hand)."""

    audit: AuditConfig
    model: Generator
    reference: Generator | None
    profile: Profile
    config: InversionConfig
    info: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    classes: int | Mapping[str, int] | None = None  # the images' known class (conditional models)

    def class_of(self, path: str, member: str | None) -> int | None:
        """The known class of an input (None: none is known, or the model needs none)."""
        if self.classes is None or isinstance(self.classes, int):
            return self.classes
        return self.classes.get(f"{path}::{member}" if member else path)

    @classmethod
    def from_objects(
        cls,
        model: Generator,
        reference: Generator | None,
        profile: Profile,
        config: InversionConfig | None = None,
        audit: AuditConfig | None = None,
        info: Mapping[str, Any] | None = None,
    ) -> AuditPlan:
        """A plan for models and a profile already loaded; ``config`` defaults to the
        profile's settings. Raises :class:`ProfileMismatchError` when they do not match."""
        config = config or config_from_profile(profile)
        check_matches_profile(profile, model, reference, config)
        audit = audit or AuditConfig(model=model.name)
        return cls(audit, model, reference, profile, config, dict(info or {}),
                   known_classes(audit, model, config))

    def describe_settings(self) -> str:
        """The inversion settings in one phrase, for messages."""
        c = self.config
        text = f"{c.steps} steps x {c.restarts} restarts, lr {c.lr:g}, {c.metric}, seed {c.seed}"
        classes = describe_class_rule(self.model, c)
        text += f", {classes}" if classes else ""
        warm = describe_warm_start(self.model, self.reference, c)
        text += f", {warm}" if warm else ""
        if c.second_chance:
            second = c.second_pass()
            text += (f", second chance above calibrated loss "
                     f"{self.profile.second_chance_level:.4g} ({second.steps} steps x "
                     f"{second.restarts} new restarts)")
        return text


def check_matches_profile(
    profile: Profile, model: Generator, reference: Generator | None, config: InversionConfig
) -> None:
    """Refuse (:class:`ProfileMismatchError`) weights, settings or an image shape that are
    not the profile's."""
    check_compatible(profile, model, reference, config)
    try:
        check_warm_start(model, reference, config)
    except WarmStartError as exc:
        raise ProfileMismatchError(str(exc)) from exc
    if tuple(profile.image_shape) != tuple(model.output_shape):
        raise ProfileMismatchError(
            f"the profile was built on {tuple(profile.image_shape)} images but the model "
            f"emits {tuple(model.output_shape)}"
        )


def profile_path_for(model_spec: str, given: str | None, preset: str | None = None) -> Path:
    """``given``, or the profile shipped with a builtin model for ``preset`` (default
    ``paper``)."""
    if given:
        if preset is not None:
            raise AuditPlanError("--preset picks a shipped profile; with --profile the "
                                 "profile's own settings apply", "preset")
        return Path(given)
    found = resolver.shipped_profile(model_spec, preset or "paper")
    if found is not None:
        return found
    if resolver.is_builtin(model_spec):
        name = resolver.builtin_name(model_spec)
        flag = "" if preset in (None, "paper") else f" --preset {preset}"
        which = "" if not flag else f"{preset}-preset "
        raise AuditPlanError(
            f"no {which}profile is shipped for {model_spec}; build one with "
            f"`ronan profile --model {model_spec}{flag} -o {name}.json` and pass --profile {name}.json"
        )
    raise AuditPlanError(
        "a checkpoint model needs --profile: build one with "
        f"`ronan profile --model {model_spec} -o profile.json`"
    )


def reference_spec_for(model_spec: str, given: str | None, profile: Profile) -> str | None:
    """``given``; else none for an uncalibrated profile; else the reference the profile was
    built with (when it recorded its spec); else the model's default reference."""
    if given is not None:
        return given
    if not profile.calibrated:
        return None
    spec = (profile.reference or {}).get("spec")
    if spec:
        return str(spec)
    return resolver.default_reference_spec(model_spec)


def settings_from_profile(
    profile: Profile, model: Generator, reference: Generator | None, given: Mapping[str, Any]
) -> InversionConfig:
    """The profile's inversion settings with ``given`` applied; those that change results
    must equal the profile's (else :class:`AuditPlanError`)."""
    try:
        config = config_from_profile(profile).replace(**given)
    except ValueError as exc:
        raise AuditPlanError(str(exc), "inversion") from exc
    try:
        check_matches_profile(profile, model, reference, config)
    except ProfileMismatchError as exc:
        hint = (
            ". Omit --steps/--restarts/--lr/--metric/--seed/--second-chance to use the "
            "profile's settings, or "
            "build a profile with yours (`ronan profile`)."
        )
        raise AuditPlanError(f"{exc}{hint if given else ''}", "inversion") from exc
    return config


def load_profile(path: str | Path) -> Profile:
    """The profile at ``path``; :class:`AuditPlanError` (field ``profile``) if unreadable."""
    try:
        return Profile.load(path)
    except (ValueError, TypeError) as exc:
        raise AuditPlanError(str(exc), "profile") from exc


def load_model_spec(spec: str) -> Generator:
    """The model a spec names, or :class:`AuditPlanError` (field ``model``)."""
    try:
        return resolver.load_model(spec)
    except resolver.ModelSpecError as exc:
        raise AuditPlanError(str(exc), "model") from exc


def load_reference_spec(spec: str | None, defaulted: bool) -> Generator | None:
    """The reference a spec names (None for ``none``), or :class:`AuditPlanError` (field
    ``reference``); ``defaulted``: the spec was not the user's, and the message says so."""
    try:
        return resolver.load_reference(spec)
    except resolver.ModelSpecError as exc:
        hint = (
            f" ({spec} is the default reference; name another with --reference, or `none`)"
            if defaulted else ""
        )
        raise AuditPlanError(f"{exc}{hint}", "reference") from exc


def known_classes(
    audit: AuditConfig, model: Generator, config: InversionConfig
) -> int | dict[str, int] | None:
    """The images' class as the audit gives it, checked against the model and the profile's
    class rule (a conditional model under rule ``known`` needs one; others take none)."""
    c = num_classes(model)
    given = audit.class_label is not None or audit.classes_from is not None
    if not c:
        if given:
            raise AuditPlanError(f"model {model.name!r} is not class-conditional: it takes no "
                                 "class (--class / --classes-from)", "classes")
        return None
    if config.class_rule != "known":
        if given:
            raise AuditPlanError(f"the profile inverts every image with class rule "
                                 f"{config.class_rule!r}; it takes no class (--class / "
                                 "--classes-from)", "classes")
        return None
    if not given:
        raise AuditPlanError(
            f"model {model.name!r} is class-conditional ({c} classes) and its profile needs each "
            "image's class: give --class K or --classes-from CSV, or audit with a profile built "
            "with --class-rule min (class unknown: the minimum over classes, at "
            f"{c} times the inversion cost)", "classes")
    if audit.class_label is not None:
        table: int | dict[str, int] = int(audit.class_label)
        values = [table]
    else:
        try:
            table = read_class_labels(audit.classes_from)
        except ValueError as exc:
            raise AuditPlanError(str(exc), "classes") from exc
        values = list(table.values())
    bad = sorted({v for v in values if not 0 <= v < c})
    if bad:
        raise AuditPlanError(f"class {bad[0]} is outside [0, {c}) for model {model.name!r}",
                             "classes")
    return table


def plan_audit(
    audit: AuditConfig, inputs: Sequence[str] = (), info: Mapping[str, Any] | None = None
) -> AuditPlan:
    """Resolve ``audit`` into a plan: load the profile and models, take the settings from
    the profile, and gather what the run records (specs, profile, inputs, ``info``)."""
    model = load_model_spec(audit.model)
    profile_path = profile_path_for(audit.model, audit.profile, audit.preset)
    profile = load_profile(profile_path)
    ref_spec = reference_spec_for(audit.model, audit.reference, profile)
    reference = load_reference_spec(ref_spec, defaulted=audit.reference is None)
    config = settings_from_profile(profile, model, reference, audit.inversion)
    run_info = {
        "audit": audit.to_dict(),
        "model_spec": resolver.normalize_spec(audit.model),
        "reference_spec": None if ref_spec is None else resolver.normalize_spec(ref_spec),
        "profile_path": str(Path(profile_path).absolute()),
        "profile": profile.to_dict(),
        "inputs": list(inputs),
        **(info or {}),
    }
    classes = known_classes(audit, model, config)
    return AuditPlan(audit, model, reference, profile, config, run_info, classes)


def run_config(plan: AuditPlan, info: Mapping[str, Any], batch_size: int) -> dict[str, Any]:
    """The configuration a run is stored with.

    Its results key (see :mod:`ronan_jax.results.store`) covers what determines a row: model
    and reference identity (weights hash), the profile (id and statistics), the inversion
    settings, the decode rules (``resize``, ``max_pixels``, output shape) and
    :data:`AUDIT_FORMAT`. Versions, batch size, workers and ``info`` are recorded only.
    """
    profile = plan.profile
    return {
        "audit_format": AUDIT_FORMAT,
        "model": dict(plan.model.identity),
        "reference": None if plan.reference is None else dict(plan.reference.identity),
        "profile": {
            "id": profile.id,
            "n": profile.n,
            "mu": profile.mu,
            "sigma": profile.sigma,
            "alpha": profile.alpha,
            "calibrated": profile.calibrated,
        },
        "settings": plan.config.result_settings(),
        "image_shape": list(plan.model.output_shape),
        "resize": bool(plan.audit.resize),
        "max_pixels": int(plan.audit.max_pixels),
        "versions": library_versions(),
        "batch_size": batch_size,
        "workers": plan.audit.workers,
        "info": dict(info),
    }
