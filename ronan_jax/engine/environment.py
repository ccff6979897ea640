"""What a result was computed with: the versions of the libraries that decide its numbers."""

from __future__ import annotations

import importlib.metadata
import platform

import jax


def library_versions() -> dict[str, str]:
    """Versions of the libraries that determine numerical results, and the JAX backend."""
    out = {"python": platform.python_version(), "jax_backend": jax.default_backend()}
    for pkg in ("ronan-jax", "jax", "jaxlib", "flax", "optax", "numpy", "scipy"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "unknown"
    return out
