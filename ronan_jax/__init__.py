"""ronan-jax: batched RONAN origin attribution of AI-generated images in JAX.

The curated API, what a Python user needs::

    from ronan_jax import load_model, load_reference, Profile, build_profile, attribute

    model = load_model("builtin:dcgan-mnist")               # or a checkpoint directory
    reference = load_reference("builtin:ref-photo")         # or None: uncalibrated
    profile = build_profile(model, reference)               # or Profile.load(path)
    result = attribute(images, model, reference, profile)   # images: [B, H, W, C] in [0, 1]

    plan = plan_audit(AuditConfig(model="builtin:dcgan-mnist", db="audit.sqlite"))
    with ResultStore("audit.sqlite") as store:
        summary = run_audit(["shots/"], plan, store)        # one row per image
    write_report("audit.sqlite")

(The audit is ``run_audit``: ``ronan_jax.audit`` is the audit's package.) Names are
imported on first use, so ``import ronan_jax`` (and the ``ronan`` command's
``--help``) stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Generator": "ronan_jax.engine.generator",
    "InversionConfig": "ronan_jax.engine.config",
    "InversionResult": "ronan_jax.engine.invert",
    "invert": "ronan_jax.engine.invert",
    "attribute": "ronan_jax.attribution.attribute",
    "Attribution": "ronan_jax.attribution.attribute",
    "Profile": "ronan_jax.attribution.profile",
    "ProfileMismatchError": "ronan_jax.attribution.profile",
    "build_profile": "ronan_jax.attribution.build",
    "load_model": "ronan_jax.models.resolver",
    "load_reference": "ronan_jax.models.resolver",
    "default_reference_spec": "ronan_jax.models.resolver",
    "shipped_profile": "ronan_jax.models.resolver",
    "AuditConfig": "ronan_jax.audit.config",
    "AuditPlan": "ronan_jax.audit.plan",
    "plan_audit": "ronan_jax.audit.plan",
    "run_audit": "ronan_jax.audit.run",
    "ResultStore": "ronan_jax.results.store",
    "write_report": "ronan_jax.report.write",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ronan_jax' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
