"""Evidence thumbnails: float [0, 1] HxWxC arrays from an evidence .npz -> PNG data URIs."""

from __future__ import annotations

import base64
import io
import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

THUMB_MIN = 128
"""Small images are upscaled by an integer factor (nearest neighbour) to at least this size."""
THUMB_MAX = 256
"""Large images are downscaled to at most this size (the report shows them at ~128 px)."""

EVIDENCE_KEYS = ("image", "reconstruction", "ref_reconstruction")


@dataclass(frozen=True)
class Thumb:
    """One inlined picture: its data URI and the original size it was made from."""

    uri: str
    height: int
    width: int


def to_uint8(array: np.ndarray) -> np.ndarray:
    """HxW or HxWxC (C in 1, 3, 4) float [0, 1] -> uint8 HxW or HxWxC (1 channel squeezed)."""
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (3, 4))):
        raise ValueError(f"expected an HxW or HxWxC (C in 1, 3, 4) image, got shape {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"empty image of shape {a.shape}")
    if a.dtype == np.uint8:
        return a
    f = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=1.0, neginf=0.0)
    return np.round(np.clip(f, 0.0, 1.0) * 255.0).astype(np.uint8)


def thumbnail(array: np.ndarray) -> Thumb:
    """A PNG data URI of the image, nearest-neighbour upscaled when small, shrunk when large."""
    a = to_uint8(array)
    height, width = a.shape[:2]
    img = Image.fromarray(a)
    longest = max(height, width)
    if longest < THUMB_MIN:
        factor = math.ceil(THUMB_MIN / longest)
        img = img.resize((width * factor, height * factor), Image.Resampling.NEAREST)
    elif longest > THUMB_MAX:
        img.thumbnail((THUMB_MAX, THUMB_MAX), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    return Thumb(uri=uri, height=height, width=width)


def load_evidence(
    evidence_path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None
) -> dict[str, Thumb]:
    """Thumbnails of the arrays in an evidence .npz (``image``, ``reconstruction``, optionally
    ``ref_reconstruction``). A relative path is resolved against ``root`` when given.

    Raises OSError / ValueError (with a message fit for the report) when the file is missing,
    unreadable, or lacks ``image``.
    """
    path = Path(evidence_path)
    if root is not None and not path.is_absolute():
        path = Path(root) / path
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "image" not in npz.files:
                raise ValueError(f"no 'image' array in evidence (has {sorted(npz.files)})")
            return {key: thumbnail(npz[key]) for key in EVIDENCE_KEYS if key in npz.files}
    except (zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(f"unreadable evidence file: {exc}") from exc
