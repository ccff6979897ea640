"""The evidence behind a verdict, kept per image as an ``.npz`` named by the SHA-256 of the
image's bytes: float32 ``image``, ``reconstruction``, ``best_input`` (the reverse-engineered
input), ``restart_best`` and, when calibrated, ``ref_reconstruction`` and ``ref_best_input``."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ronan_jax.attribution.attribute import Attribution


def write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write atomically: a killed run never leaves a half-written evidence file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    os.replace(tmp, path)


def save_evidence(folder: Path, sha: str, image: np.ndarray, att: Attribution, i: int) -> Path:
    """Store the evidence behind image ``i`` of a batch; returns the ``.npz`` path."""
    arrays = {
        "image": np.asarray(image, np.float32),
        "reconstruction": np.asarray(att.model_result.reconstruction[i], np.float32),
        "best_input": np.asarray(att.model_result.best_input[i], np.float32),
        "restart_best": np.asarray(att.model_result.restart_best[i], np.float32),
    }
    if att.reference_result is not None:
        arrays["ref_reconstruction"] = np.asarray(att.reference_result.reconstruction[i], np.float32)
        arrays["ref_best_input"] = np.asarray(att.reference_result.best_input[i], np.float32)
    path = folder / f"{sha}.npz"
    write_npz(path, arrays)
    return path
