"""Bulk audit: plan (settings and models from a profile), then run (inputs -> engine -> store).

``plan_audit(AuditConfig(...))`` resolves what the user asked into an :class:`AuditPlan`;
``run_audit(inputs, plan, store)`` judges every input and stores one row per image.
"""

from ronan_jax.audit.config import (
    AUDIT_FORMAT,
    DEFAULT_DB,
    DEFAULT_MODEL_SPEC,
    AuditConfig,
    AuditCounts,
    AuditProgress,
    AuditSummary,
)
from ronan_jax.audit.plan import AuditPlan, AuditPlanError, plan_audit
from ronan_jax.audit.run import run_audit
from ronan_jax.audit.sizing import default_batch_size

__all__ = [
    "AUDIT_FORMAT",
    "DEFAULT_DB",
    "DEFAULT_MODEL_SPEC",
    "AuditConfig",
    "AuditCounts",
    "AuditPlan",
    "AuditPlanError",
    "AuditProgress",
    "AuditSummary",
    "default_batch_size",
    "plan_audit",
    "run_audit",
]
