"""The one vocabulary of outcomes: the verdict of an image and, for errors, why.

Every row of an audit has one of :data:`VERDICTS`. An ``error`` row also names its reason:
one of the input kinds (the file could not be read or decoded, see
``ronan_jax.inputs.ERROR_KINDS``) or one of the engine's: :data:`DIVERGED` (every restart's
loss became NaN/inf, deterministic, so never retried), :data:`OUT_OF_MEMORY` (the image
alone did not fit in device memory) and :data:`INTERNAL` (an unexpected failure of its
inversion call). A stored row that is itself broken reads as :data:`INVALID_ROW`. The strings are stored in databases: they never change.
"""

from __future__ import annotations

BELONGING = "belonging"
NON_BELONGING = "non-belonging"
ERROR = "error"
VERDICTS: tuple[str, ...] = (BELONGING, NON_BELONGING, ERROR)

DIVERGED = "diverged"
OUT_OF_MEMORY = "out-of-memory"
INTERNAL = "internal"

NO_CLASS = "no-class"
"""The kind of an image a conditional model cannot judge: its class is not known (it is not
in the class file of an audit whose profile needs each image's class)."""

INVALID_ROW = "invalid-row"
"""The kind a stored row is read as when it holds no path or a verdict outside
:data:`VERDICTS` (hand-edited, or written by another tool); such a row is never done."""

NOT_RETRIED: frozenset[str] = frozenset({DIVERGED})
"""Error kinds a resumed audit does not retry (the outcome would be the same)."""

