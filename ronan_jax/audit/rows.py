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
from pathlib import Path
from typing import Any

from ronan_jax.attribution.attribute import Attribution, attribute
from ronan_jax.attribution.profile import ProfileMismatchError
from ronan_jax.attribution.verdicts import DIVERGED, ERROR
from ronan_jax.audit.config import BatchWork
from ronan_jax.audit.evidence import save_evidence
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


def _piece_rows(
    piece: Piece[Attribution], batch: Batch, folder: Path | None, stamp: dict[str, Any]
) -> list[tuple[int, dict[str, Any]]]:
    """Rows of the images ``piece.lo:piece.hi`` of a batch, keyed by input index."""
    att = piece.value
    out = []
    for i, item in enumerate(batch.items[piece.lo : piece.hi]):
        row = {**item.row_fields(), **stamp}
        if att is None:
            row.update(verdict=ERROR, error_kind=piece.error_kind, error=piece.error)
        else:
            row.update(judged_fields(att, i))
            if row["verdict"] != ERROR and folder is not None and item.sha256:
                image = batch.images[piece.lo + i]
                row["evidence_path"] = str(save_evidence(folder, item.sha256, image, att, i))
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


def judge_batch(
    batch: Batch, plan: AuditPlan, folder: Path | None, sizer: BatchSizer
) -> BatchOutcome:
    """Judge the decoded images of ``batch`` and return every input's row with the work.

    A configuration error (:class:`ProfileMismatchError`) propagates: it is not an image's.
    """
    rows = [(item.index, failed_input_row(item)) for item in batch.failed]
    work = BatchWork()
    if batch.items:
        started, t0 = utc_now(), time.perf_counter()
        pieces = run_fitting(
            lambda lo, hi, cfg: attribute(batch.images[lo:hi], plan.model, plan.reference,
                                          plan.profile, cfg),
            len(batch.items), plan.config, sizer, fatal=(ProfileMismatchError,),
        )
        seconds = time.perf_counter() - t0
        stamp = {"started": started, "finished": utc_now(), "seconds": seconds / len(batch.items)}
        for piece in pieces:
            rows.extend(_piece_rows(piece, batch, folder, stamp))
            work = work + _piece_work(piece, plan)
        work = dataclasses.replace(work, seconds=seconds)
    rows.sort(key=lambda r: r[0])
    return BatchOutcome([r for _, r in rows], work)

