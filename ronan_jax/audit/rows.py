"""One batch of decoded inputs -> one results row per input, in input order.

Images are judged by :func:`ronan_jax.attribution.attribute.attribute` in calls that fit in
memory (:func:`ronan_jax.audit.sizing.run_fitting`). Errors are rows, never exceptions:
inputs that could not be read arrive as failed items, a diverged inversion is an ``error``
row of kind ``diverged``, a call that ran out of memory or failed otherwise marks its images
``out-of-memory`` or ``internal``, and the audit goes on.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import numpy as np

from ronan_jax.attribution.attribute import Attribution, attribute
from ronan_jax.attribution.profile import ProfileMismatchError
from ronan_jax.attribution.verdicts import DIVERGED, ERROR, INTERNAL
from ronan_jax.audit.config import BatchWork
from ronan_jax.audit.evidence import EvidenceBatch
from ronan_jax.audit.plan import AuditPlan
from ronan_jax.audit.sizing import BatchSizer, Piece, run_fitting
from ronan_jax.inputs import Batch, Item
from ronan_jax.results.store import utc_now
from ronan_jax.results.telemetry import step_counts


@dataclasses.dataclass(frozen=True)
class BatchOutcome:
    """The rows of one batch (in input order) and the engine work behind them."""

    rows: list[dict[str, Any]]
    work: BatchWork


def finite(value: Any) -> float | None:
    """``float(value)``, or None where it is NaN or infinite (stored as NULL)."""
    f = float(value)
    return f if math.isfinite(f) else None


def diverged_message(att: Attribution, i: int) -> str:
    """Why image ``i`` has no finite calibrated loss, in words."""
    where = []
    if att.model_result.diverged[i]:
        where.append("the model")
    if att.reference_result is not None and att.reference_result.diverged[i]:
        where.append("the reference")
    if not where:
        return "the calibrated loss is not finite (reference loss 0 or overflow)"
    return "inversion diverged on every restart on " + " and ".join(where)


def judged_fields(att: Attribution, i: int) -> dict[str, Any]:
    """The verdict fields of image ``i`` of an attribution (NULL where not finite)."""
    verdict = str(att.verdict[i])
    row = {
        "loss": finite(att.loss[i]),
        "ref_loss": None if att.ref_loss is None else finite(att.ref_loss[i]),
        "calibrated_loss": finite(att.calibrated_loss[i]),
        "z": finite(att.z[i]),
        "critical_value": finite(att.critical_value[i]),
        "p_value": finite(att.p_value[i]),
        "verdict": verdict,
    }
    if verdict == ERROR:
        row.update(error_kind=DIVERGED, error=diverged_message(att, i))
    return row


def failed_input_row(item: Item) -> dict[str, Any]:
    """The row of an input that could not be read or decoded."""
    return {**item.row_fields(), "verdict": ERROR}


JUDGED_FIELDS = ("loss", "ref_loss", "calibrated_loss", "z", "critical_value", "p_value",
                 "verdict", "error_kind", "error", "evidence_path")
"""The fields of a row that follow from the image's content alone (given the run's settings)."""


class ContentCache:
    """What this run already concluded per image content (SHA-256 of the bytes): the same
    bytes under another path are not inverted again, they get the same judged fields. Only
    deterministic outcomes are kept (verdicts and diverged inversions, not out-of-memory or
    internal failures, which a later call may not repeat)."""

    def __init__(self) -> None:
        self._fields: dict[str, dict[str, Any]] = {}

    def get(self, sha: str | None) -> dict[str, Any] | None:
        return None if sha is None else self._fields.get(sha)

    def keep(self, sha: str | None, row: dict[str, Any]) -> None:
        if sha is not None and row.get("error_kind") in (None, DIVERGED):
            self._fields[sha] = {k: row.get(k) for k in JUDGED_FIELDS}


def _piece_rows(
    piece: Piece[Attribution], items: list[Item], images: np.ndarray, evidence: EvidenceBatch,
    stamp: dict[str, Any],
) -> list[tuple[int, dict[str, Any]]]:
    """Rows of the images ``piece.lo:piece.hi`` of the inverted ones, keyed by input index."""
    att = piece.value
    out = []
    for i, item in enumerate(items[piece.lo : piece.hi]):
        row = {**item.row_fields(), **stamp}
        if att is None:
            row.update(verdict=ERROR, error_kind=piece.error_kind, error=piece.error)
        else:
            row.update(judged_fields(att, i))
            if row["verdict"] != ERROR and item.sha256:
                row["evidence_path"] = evidence.save(item.sha256, images[piece.lo + i], att, i)
        out.append((item.index, row))
    return out


def _piece_work(piece: Piece[Attribution], plan: AuditPlan) -> BatchWork:
    if piece.value is None:
        return BatchWork()
    att = piece.value
    run, budget = step_counts(
        (att.model_result, att.reference_result), plan.config.restarts, plan.config.steps
    )
    return BatchWork(inverted=piece.hi - piece.lo, steps_run=run, steps_budget=budget)


def _split_by_content(batch: Batch, seen: ContentCache) -> tuple[list[int], list[int]]:
    """Positions in ``batch.items`` to invert (first of each new content) and the rest."""
    fresh, repeat, firsts = [], [], set()
    for pos, item in enumerate(batch.items):
        if seen.get(item.sha256) is not None or (item.sha256 and item.sha256 in firsts):
            repeat.append(pos)
        else:
            fresh.append(pos)
            if item.sha256:
                firsts.add(item.sha256)
    return fresh, repeat


def _invert_fresh(
    items: list[Item], images: np.ndarray, plan: AuditPlan, sizer: BatchSizer,
    evidence: EvidenceBatch,
) -> tuple[list[tuple[int, dict[str, Any]]], BatchWork]:
    """Rows and work of the images to invert, in calls that fit in memory."""
    started, t0 = utc_now(), time.perf_counter()
    pieces = run_fitting(
        lambda lo, hi, cfg: attribute(images[lo:hi], plan.model, plan.reference, plan.profile, cfg),
        len(items), plan.config, sizer, fatal=(ProfileMismatchError,),
    )
    seconds = time.perf_counter() - t0
    stamp = {"started": started, "finished": utc_now(), "seconds": seconds / len(items)}
    rows, work = [], BatchWork()
    for piece in pieces:
        rows.extend(_piece_rows(piece, items, images, evidence, stamp))
        work = work + _piece_work(piece, plan)
    return rows, dataclasses.replace(work, seconds=seconds)


def judge_batch(
    batch: Batch, plan: AuditPlan, evidence: EvidenceBatch, sizer: BatchSizer,
    seen: ContentCache | None = None,
) -> BatchOutcome:
    """Judge the decoded images of ``batch`` and return every input's row with the work.

    Content met before in this run (``seen``) or twice in the batch is inverted once. A
    configuration error (:class:`ProfileMismatchError`) propagates: it is not an image's.
    """
    seen = seen if seen is not None else ContentCache()
    rows = [(item.index, failed_input_row(item)) for item in batch.failed]
    work = BatchWork()
    fresh, repeat = _split_by_content(batch, seen)
    if fresh:
        fresh_rows, work = _invert_fresh([batch.items[p] for p in fresh], batch.images[fresh],
                                         plan, sizer, evidence)
        for (_, row), pos in zip(fresh_rows, fresh, strict=True):
            seen.keep(batch.items[pos].sha256, row)
        rows.extend(fresh_rows)
    for pos in repeat:
        item = batch.items[pos]
        known = seen.get(item.sha256)
        if known is None:  # its first copy in this batch failed for a passing reason
            known = {"verdict": ERROR, "error_kind": INTERNAL,
                     "error": "an identical image in the same batch could not be judged"}
        rows.append((item.index, {**item.row_fields(), "seconds": 0.0, **known}))
    rows.sort(key=lambda r: r[0])
    return BatchOutcome([r for _, r in rows], work)
