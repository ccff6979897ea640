"""Ground truth for a report: which images truly belong (``path,label`` files)."""

from __future__ import annotations

import io
import os
from pathlib import Path

from ronan_jax.attribution.verdicts import BELONGING, NON_BELONGING

_TRUE_LABELS = frozenset({"1", BELONGING, "true", "yes", "b"})
_FALSE_LABELS = frozenset({"0", NON_BELONGING, "nonbelonging", "false", "no", "n"})


def parse_label(text: str) -> bool:
    """``1``/``belonging``/``true`` -> True, ``0``/``non-belonging``/``false`` -> False."""
    key = text.strip().strip("\"'").lower()
    if key in _TRUE_LABELS:
        return True
    if key in _FALSE_LABELS:
        return False
    raise ValueError(f"unknown label {text.strip()!r} (use 1/0 or belonging/non-belonging)")


def read_labels(path: str | os.PathLike[str]) -> dict[str, bool]:
    """Ground truth for a report: a CSV or TSV file of ``path,label`` lines.

    The label is the last field (so paths may contain commas); a tar member is written
    ``archive.tar::member``; relative paths are resolved against the labels file's folder,
    as the audit stores absolute paths. Blank lines, ``#`` comments and a header line are
    skipped. Raises ValueError naming the line of any bad entry.
    """
    path = Path(path)
    folder = path.absolute().parent
    labels: dict[str, bool] = {}
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read labels file {path}: {exc}") from exc
    first = True
    for lineno, raw in enumerate(io.StringIO(text), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        sep = "\t" if "\t" in line else ","
        if sep not in line:
            raise ValueError(f"{path}:{lineno}: expected 'path{sep}label', got {line!r}")
        name, label = line.rsplit(sep, 1)
        try:
            value = parse_label(label)
        except ValueError as exc:
            if first:  # a header such as "path,label"
                first = False
                continue
            raise ValueError(f"{path}:{lineno}: {exc}") from None
        first = False
        name = name.strip().strip('"')
        file_part, _, member = name.partition("::")
        file_part = os.path.normpath(os.path.join(folder, os.path.expanduser(file_part)))
        labels[f"{file_part}::{member}" if member else file_part] = value
    return labels
