"""Bulk audit: plan (settings and models from a profile), run (inputs -> engine -> store)."""

from ronan_jax.audit.run import (
    AUDIT_FORMAT,
    DEFAULT_DB,
    AuditConfig,
    AuditProgress,
    AuditSummary,
    default_batch_size,
    export_rows,
    read_labels,
    run_audit,
    save_png_images,
)

__all__ = [
    "AUDIT_FORMAT",
    "DEFAULT_DB",
    "AuditConfig",
    "AuditProgress",
    "AuditSummary",
    "default_batch_size",
    "export_rows",
    "read_labels",
    "run_audit",
    "save_png_images",
]
