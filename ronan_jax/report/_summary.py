"""The numbers of a report, separate from their presentation: counts, confusion, accuracy, AUC.

Conventions (as the paper scores its tables): belonging is the positive class; a lower calibrated loss
means "more belonging", so the AUC is P(A'(belonging) < A'(non-belonging)) with ties counted
one half -- the Mann-Whitney U statistic divided by n_pos * n_neg. Rows whose verdict is
``'error'`` are counted but enter no metric; a row with no path or a verdict outside the
vocabulary counts as an error of kind ``invalid-row`` (the store's rule, ``checked_row``).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ronan_jax.attribution.verdicts import BELONGING, ERROR, VERDICTS
from ronan_jax.results.store import checked_row


def label_key(row: Mapping[str, Any]) -> str:
    """The key labels use for a row: ``path``, or ``path::member`` for a tar member."""
    member = row.get("member") or ""
    return f"{row['path']}::{member}" if member else str(row["path"])


def finite_or_none(value: Any) -> float | None:
    """``float(value)`` when it is a finite number, else None (None, NaN, inf, junk)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _as_scores_labels(losses: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(losses, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if y.dtype != np.bool_:
        raise ValueError(f"labels must be booleans (True = belonging), got dtype {y.dtype}")
    if x.shape != y.shape:
        raise ValueError(f"{x.size} losses but {y.size} labels")
    if not np.all(np.isfinite(x)):
        raise ValueError("losses must be finite; drop diverged images first")
    return x, y


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of x in ascending order, tied values sharing their mean rank."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)  # rank of the last element of each tie group
    mean_rank = ends - (counts - 1) / 2.0
    return mean_rank[inverse.reshape(-1)]


def auc_from_losses(losses: ArrayLike, labels: ArrayLike) -> float | None:
    """AUC of "lower loss = belonging" against boolean labels (True = belonging).

    Equals the fraction of (belonging, non-belonging) pairs in which the belonging image has
    the lower loss, ties counting 1/2 (Mann-Whitney U / (n_pos n_neg)). None when either class
    is empty.
    """
    x, y = _as_scores_labels(losses, labels)
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = _average_ranks(-x)  # higher rank = lower loss = more belonging
    u = float(ranks[y].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def auc_diverged_last(losses: ArrayLike, labels: ArrayLike) -> float | None:
    """:func:`auc_from_losses` with non-finite losses (diverged inversions) ranked as the
    highest, i.e. least belonging, instead of refused."""
    x = np.asarray(losses, dtype=np.float64).reshape(-1)
    finite = np.isfinite(x)
    top = x[finite].max() + 1.0 if finite.any() else 0.0
    return auc_from_losses(np.where(finite, x, top), labels)


def roc_curve(
    losses: ArrayLike, labels: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """ROC of the rule "belonging when loss <= threshold", one point per distinct loss.

    Returns ``(fpr, tpr, thresholds)`` starting at (0, 0) (threshold -inf) and ending at (1, 1);
    tied losses move both rates at once, so the trapezoidal area equals `auc_from_losses`.
    None when either class is empty.
    """
    x, y = _as_scores_labels(losses, labels)
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return None
    thresholds, inverse = np.unique(x, return_inverse=True)
    inverse = inverse.reshape(-1)
    pos = np.bincount(inverse, weights=y.astype(np.float64), minlength=thresholds.size)
    neg = np.bincount(inverse, weights=(~y).astype(np.float64), minlength=thresholds.size)
    tpr = np.concatenate([[0.0], np.cumsum(pos) / n_pos])
    fpr = np.concatenate([[0.0], np.cumsum(neg) / n_neg])
    return fpr, tpr, np.concatenate([[-np.inf], thresholds])


@dataclass(frozen=True)
class Confusion:
    """Verdicts against labels, belonging = positive."""

    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def total(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    @property
    def accuracy(self) -> float | None:
        return (self.tp + self.tn) / self.total if self.total else None

    @property
    def tpr(self) -> float | None:
        """Recall of belonging images (sensitivity)."""
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else None

    @property
    def tnr(self) -> float | None:
        """Share of non-belonging images called non-belonging (specificity)."""
        return self.tn / (self.tn + self.fp) if self.tn + self.fp else None

    @property
    def precision(self) -> float | None:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else None


@dataclass(frozen=True)
class Summary:
    """Everything numeric a report shows.

    ``counts`` always has the three verdicts as keys. The label-dependent fields are None when
    no labels were given; ``n_unlabelled`` counts non-error rows whose key is missing from the
    labels, ``n_labels_unmatched`` label keys that match no row. ``auc`` uses the labelled
    non-error rows with a finite calibrated loss (``n_auc`` of them; ``n_no_loss`` labelled
    rows had none) and is None when one class is absent.
    """

    n_rows: int
    counts: dict[str, int]
    error_kinds: dict[str, int]
    labelled: bool
    n_labelled: int = 0
    n_unlabelled: int = 0
    n_labels_unmatched: int = 0
    n_positive: int = 0
    n_negative: int = 0
    confusion: Confusion | None = None
    accuracy: float | None = None
    auc: float | None = None
    n_auc: int = 0
    n_no_loss: int = 0


def compute_summary(
    rows: Iterable[Mapping[str, Any]], labels: Mapping[str, bool] | None = None
) -> Summary:
    """Count verdicts and, given labels (`label_key` -> True for belonging), score them.

    A row the store could not read as a result (`checked_row`) counts as an error."""
    rows = [checked_row(row) for row in rows]
    counts = dict.fromkeys(VERDICTS, 0)
    for row in rows:
        counts[row["verdict"]] += 1
    error_kinds = Counter(
        str(row.get("error_kind") or "unknown") for row in rows if row["verdict"] == ERROR
    )
    base = {
        "n_rows": len(rows),
        "counts": counts,
        "error_kinds": dict(sorted(error_kinds.items(), key=lambda kv: (-kv[1], kv[0]))),
    }
    if labels is None:
        return Summary(labelled=False, **base)

    keys = {label_key(row) for row in rows}
    tp = fp = fn = tn = 0
    unlabelled = no_loss = 0
    losses: list[float] = []
    truth: list[bool] = []
    for row in rows:
        if row["verdict"] == ERROR:
            continue
        key = label_key(row)
        if key not in labels:
            unlabelled += 1
            continue
        actual = bool(labels[key])
        predicted = row["verdict"] == BELONGING
        if actual and predicted:
            tp += 1
        elif actual:
            fn += 1
        elif predicted:
            fp += 1
        else:
            tn += 1
        loss = finite_or_none(row.get("calibrated_loss"))
        if loss is None:
            no_loss += 1
        else:
            losses.append(loss)
            truth.append(actual)
    confusion = Confusion(tp=tp, fp=fp, fn=fn, tn=tn)
    auc = auc_from_losses(np.asarray(losses), np.asarray(truth, dtype=bool))
    return Summary(
        labelled=True,
        n_labelled=confusion.total,
        n_unlabelled=unlabelled,
        n_labels_unmatched=sum(1 for key in labels if key not in keys),
        n_positive=tp + fn,
        n_negative=fp + tn,
        confusion=confusion,
        accuracy=confusion.accuracy,
        auc=auc,
        n_auc=len(losses),
        n_no_loss=no_loss,
        **base,
    )
