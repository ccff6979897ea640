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
from ronan_jax.attribution.classes import num_classes
from ronan_jax.attribution.profile import ProfileMismatchError
from ronan_jax.attribution.verdicts import DIVERGED, ERROR, INTERNAL, NO_CLASS
from ronan_jax.audit.config import BatchWork
from ronan_jax.audit.evidence import EvidenceBatch
from ronan_jax.audit.plan import AuditPlan
from ronan_jax.audit.sizing import BatchSizer, Piece, run_fitting
from ronan_jax.engine.jpeg import SPEC_SIZE, identity_spec, jpeg_spec
from ronan_jax.engine.robust import recodes
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
    if att.winning_class is not None:  # a conditional model: the class it was judged with
        row["class_label"] = int(att.winning_class[i])
    if att.second_pass is not None:  # the profile's second chance: did this image get one
        row["second_pass"] = bool(att.second_pass[i])
        if att.second_pass[i] and att.first_loss is not None:
            row["first_loss"] = finite(att.first_loss[i])
    if verdict == ERROR:
        row.update(error_kind=DIVERGED, error=diverged_message(att, i))
    return row


def failed_input_row(item: Item) -> dict[str, Any]:
    """The row of an input that could not be read or decoded."""
    return {**item.row_fields(), "verdict": ERROR}


JUDGED_FIELDS = ("loss", "ref_loss", "calibrated_loss", "z", "critical_value", "p_value",
                 "verdict", "error_kind", "error", "evidence_path", "class_label",
                 "second_pass", "first_loss")
"""The fields of a row that follow from the image's content alone (given the run's settings)."""


class ContentCache:
    """What this run already concluded per image content (SHA-256 of the bytes): the same
    bytes under another path are not inverted again, they get the same judged fields. Only
    deterministic outcomes are kept (verdicts and diverged inversions, not out-of-memory or
    internal failures, which a later call may not repeat)."""

    def __init__(self) -> None:
        self._fields: dict[str, dict[str, Any]] = {}

    def get(self, key: str | None) -> dict[str, Any] | None:
        return None if key is None else self._fields.get(key)

    def keep(self, key: str | None, row: dict[str, Any]) -> None:
        if key is not None and row.get("error_kind") in (None, DIVERGED):
            self._fields[key] = {k: row.get(k) for k in JUDGED_FIELDS}


def content_key(item: Item, cls: int | None) -> str | None:
    """What decides an image's judged fields in a run: its bytes and, for a conditional
    model judged with the image's known class, that class."""
    if item.sha256 is None:
        return None
    return item.sha256 if cls is None else f"{item.sha256}:{cls}"


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
    restarts, steps = plan.config.restarts, plan.config.steps
    run, budget = step_counts((att.model_result,), restarts, steps)
    if plan.config.class_rule == "min":  # every class is inverted: C times the budget
        budget *= max(1, num_classes(plan.model))
    ref_run, ref_budget = step_counts((att.reference_result,), restarts, steps)
    run, budget = run + ref_run, budget + ref_budget
    if att.second_result is not None:  # the second chance's pass: its own steps and budget
        second = plan.config.second_pass()
        run2, budget2 = step_counts((att.second_result,), second.restarts, second.steps)
        run, budget = run + run2, budget + budget2
    return BatchWork(inverted=piece.hi - piece.lo, steps_run=run, steps_budget=budget)


def _split_by_content(keys: list[str | None], seen: ContentCache) -> tuple[list[int], list[int]]:
    """Positions to invert (the first of each new content key) and the rest."""
    fresh, repeat, firsts = [], [], set()
    for pos, key in enumerate(keys):
        if seen.get(key) is not None or (key and key in firsts):
            repeat.append(pos)
        else:
            fresh.append(pos)
            if key:
                firsts.add(key)
    return fresh, repeat


def _no_class_row(item: Item) -> dict[str, Any]:
    return {**item.row_fields(), "verdict": ERROR, "error_kind": NO_CLASS,
            "error": "the model is class-conditional and no class is known for this image "
                     "(it is not in the classes file)"}


def item_codecs(items: list[Item]) -> np.ndarray:
    """Each image's JPEG spec for robust mode's codec stage (the identity for an image whose
    pixels are not a JPEG file's own, :attr:`Item.jpeg`)."""
    return np.stack([identity_spec() if item.jpeg is None else
                     jpeg_spec(item.jpeg.luma, item.jpeg.chroma, item.jpeg.sampling)
                     for item in items]) if items else np.zeros((0, SPEC_SIZE), np.float32)


def _invert_fresh(
    items: list[Item], images: np.ndarray, classes: np.ndarray | None, plan: AuditPlan,
    sizer: BatchSizer, evidence: EvidenceBatch,
) -> tuple[list[tuple[int, dict[str, Any]]], BatchWork]:
    """Rows and work of the images to invert (with their known classes and, in a robust
    mode that re-codes as JPEG, their files' JPEG tables), in calls that fit."""
    started, t0 = utc_now(), time.perf_counter()
    codecs = item_codecs(items) if recodes(plan.config.robust) else None
    pieces = run_fitting(
        lambda lo, hi, cfg: attribute(
            images[lo:hi], plan.model, plan.reference, plan.profile, cfg,
            classes=None if classes is None else classes[lo:hi],
            codecs=None if codecs is None else codecs[lo:hi]),
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
    classes = [plan.class_of(item.path, item.member) for item in batch.items]
    needs_class = plan.classes is not None
    judged = [p for p, c in enumerate(classes) if c is not None or not needs_class]
    rows.extend((batch.items[p].index, _no_class_row(batch.items[p]))
                for p, c in enumerate(classes) if c is None and needs_class)
    keys = [content_key(batch.items[p], classes[p]) for p in judged]
    fresh_at, repeat_at = _split_by_content(keys, seen)
    fresh = [judged[i] for i in fresh_at]
    if fresh:
        known_classes = np.array([classes[p] for p in fresh], np.int32) if needs_class else None
        fresh_rows, work = _invert_fresh([batch.items[p] for p in fresh], batch.images[fresh],
                                         known_classes, plan, sizer, evidence)
        for (_, row), i in zip(fresh_rows, fresh_at, strict=True):
            seen.keep(keys[i], row)
        rows.extend(fresh_rows)
    for i in repeat_at:
        item = batch.items[judged[i]]
        known = seen.get(keys[i])
        if known is None:  # its first copy in this batch failed for a passing reason
            known = {"verdict": ERROR, "error_kind": INTERNAL,
                     "error": "an identical image in the same batch could not be judged"}
        rows.append((item.index, {**item.row_fields(), "seconds": 0.0, **known}))
    rows.sort(key=lambda r: r[0])
    return BatchOutcome([r for _, r in rows], work)
