"""The evidence behind a verdict, kept per image as an ``.npz`` named by the SHA-256 of the
image's bytes: float32 ``image``, ``reconstruction``, ``best_input`` (the reverse-engineered
input), ``restart_best`` and, when calibrated, ``ref_reconstruction`` and ``ref_best_input``;
in a robust mode that resamples, ``resized_to`` (and ``ref_resized_to``): the (height,
width) the inversion found the image was resized down to and back."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ronan_jax.attribution.attribute import Attribution


def write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write atomically: a killed or failed write (a full disk) never leaves a half-written
    evidence file, nor its temporary file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def sweep_orphans(folder: Path, referenced: set[str]) -> int:
    """Remove what a killed run left in ``folder``: temporary files and evidence files no
    stored row points to (``referenced``: the rows' evidence paths). Returns how many."""
    if not folder.is_dir():
        return 0
    removed = 0
    for path in folder.iterdir():
        orphan = path.name.endswith(".tmp") or (path.suffix == ".npz" and str(path) not in referenced)
        if orphan and path.is_file():
            path.unlink(missing_ok=True)
            removed += 1
    return removed


class EvidenceBatch:
    """The evidence files of one batch: if the batch fails before its rows are stored, the
    files it wrote are removed, so no evidence file is left that no row points to."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self.written: list[Path] = []

    def save(self, sha: str, image: np.ndarray, att: Attribution, i: int) -> str | None:
        """Keep image ``i``'s evidence (None when the batch keeps none)."""
        if self.folder is None:
            return None
        existed = (self.folder / f"{sha}.npz").exists()  # kept by an earlier batch or run
        path = save_evidence(self.folder, sha, image, att, i)
        if not existed:
            self.written.append(path)
        return str(path)

    def discard(self) -> None:
        for path in self.written:
            path.unlink(missing_ok=True)
        self.written.clear()


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
    # a robust mode's resample stage: the (height, width) each inversion resized the image
    # down to and back (its own size: no resize)
    for key, res in (("resized_to", att.model_result), ("ref_resized_to", att.reference_result)):
        if res is not None and res.resized_to is not None and res.resized_to[i].any():
            arrays[key] = np.asarray(res.resized_to[i], np.int32)
    path = folder / f"{sha}.npz"
    write_npz(path, arrays)
    return path
