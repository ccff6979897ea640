"""Ground truth for a report: which images truly belong (``path,label`` files)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ronan_jax.attribution.verdicts import BELONGING, NON_BELONGING
from ronan_jax.inputs.sources import printable_name

T = TypeVar("T")

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


def read_class_labels(path: str | os.PathLike[str]) -> dict[str, int]:
    """Known classes for an audit of a class-conditional model: a CSV or TSV file of
    ``path,class`` lines, read by the rules of :func:`read_labels` (last field, tar members as
    ``archive.tar::member``, paths relative to the file, header and comments skipped); the
    class is a non-negative integer."""
    return _read_path_table(path, _parse_class, "class")


def _parse_class(text: str) -> int:
    key = text.strip().strip("\"'")
    if not key.isdigit():
        raise ValueError(f"unknown class {text.strip()!r} (use a class number: 0, 1, ...)")
    return int(key)


def read_labels(path: str | os.PathLike[str]) -> dict[str, bool]:
    """Ground truth for a report: a CSV or TSV file of ``path,label`` lines.

    The label is the last field (so paths may contain commas); a tar member is written
    ``archive.tar::member``; relative paths are resolved against the labels file's folder,
    as the audit stores absolute paths. Blank lines, ``#`` comments and a header line are
    skipped. Raises ValueError naming the line of any bad entry.
    """
    return _read_path_table(path, parse_label, "label")


def _read_path_table(path: str | os.PathLike[str], parse: Callable[[str], T], what: str) -> dict[str, T]:
    """``path -> parse(last field)`` of a ``path,value`` file, keyed as the audit stores
    images (absolute path, ``::member`` for a tar member)."""
    path = Path(path)
    folder = path.absolute().parent
    table: dict[str, T] = {}
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {what}s file {path}: {exc}") from exc
    first = True
    for lineno, (raw, escape) in enumerate(_text_lines(data.removeprefix(b"\xef\xbb\xbf")), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        sep = "\t" if "\t" in line else ","
        if sep not in line:
            raise ValueError(f"{path}:{lineno}: expected 'path{sep}{what}', got {line!r}")
        name, value = line.rsplit(sep, 1)
        try:
            parsed = parse(value)
        except ValueError as exc:
            if first:  # a header such as "path,label"
                first = False
                continue
            raise ValueError(f"{path}:{lineno}: {exc}") from None
        first = False
        name = name.strip().strip('"')
        file_part, _, member = name.partition("::")
        file_part = os.path.normpath(os.path.join(folder, os.path.expanduser(file_part)))
        if escape:  # raw file-name bytes: the names the audit reported for them
            file_part, member = printable_name(file_part), printable_name(member)
        table[f"{file_part}::{member}" if member else file_part] = parsed
    return table


def _text_lines(data: bytes) -> list[tuple[str, bool]]:
    """The lines of a labels file and whether each held bytes that are not UTF-8. A valid
    line is taken as written (names as the audit reports them, e.g. from ``ronan export``);
    another holds raw file-name bytes, decoded as the file system does."""
    out = []
    for raw in data.splitlines():
        try:
            out.append((raw.decode("utf-8"), False))
        except UnicodeDecodeError:
            out.append((raw.decode("utf-8", "surrogateescape"), True))
    return out
