"""Typed errors of the converters. Every message is one line that names the file and the fault.

All derive from :class:`ConversionError` (a ``ValueError``), so callers can catch one type;
the subclasses let tests and the CLI tell the faults apart.
"""

from __future__ import annotations

from collections.abc import Iterable


class ConversionError(ValueError):
    """A checkpoint cannot be converted; the message says why, on one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class UnsafeCheckpointError(ConversionError):
    """The checkpoint needs arbitrary code to unpickle (refused; nothing was executed)."""


class CorruptCheckpointError(ConversionError):
    """The file is truncated, damaged, or not a checkpoint format we read."""


class KeyMismatchError(ConversionError):
    """The state dict has keys the architecture does not use, or lacks keys it needs."""


class ArchitectureError(ConversionError):
    """The tensors do not describe an architecture this converter supports."""


class NonFiniteTensorError(ArchitectureError):
    """A floating tensor holds NaN or infinite values (a diverged or damaged checkpoint).

    An :class:`ArchitectureError`, as the UNet converter has always raised for it, so code
    catching either that or :class:`ConversionError` keeps working for every converter."""


class UnknownFormatError(ConversionError):
    """The source is not a format any converter recognises."""


class FormatNotAvailableError(ConversionError):
    """The source format is recognised but its converter is not installed / written yet."""


def preview(items: Iterable[str], limit: int = 8) -> str:
    """``a, b, c ... and 12 more``: a bounded listing of keys for one-line messages."""
    items = list(items)
    shown = ", ".join(items[:limit])
    if len(items) > limit:
        shown += f" ... and {len(items) - limit} more"
    return shown
