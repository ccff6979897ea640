"""Bulk audit: image sources -> decoded batches -> attribution -> one SQLite row per image.

The pipeline of :func:`run_audit`::

    iter_records(inputs) -> Batcher (decode threads, prefetch) -> judge_batch (attribute)
        -> ResultStore.write_batch (one transaction per batch) -> progress callback

* Resumable: a run is keyed by the settings that determine its results
  (:func:`ronan_jax.audit.plan.run_config`); images whose ``(path, member)`` already has a row
  under that key are skipped before their bytes are read. Error rows are retried (a fixed
  file is picked up), except inversions that diverged, which are deterministic. A process
  killed mid-batch loses that batch only.
* Errors are rows, never exceptions (:mod:`ronan_jax.audit.rows`).
* Stoppable: ``stop`` (a :class:`threading.Event`) is checked after each committed batch, so
  Ctrl-C in the CLI ends the run cleanly with every finished batch stored.
* Memory-bounded: a batch goes to the engine in calls that fit (:mod:`ronan_jax.audit.sizing`);
  the size used is recorded with the run (``info.batch_sizing``), per batch in the telemetry
  and in the summary.
* Telemetry: one row per batch in the store's ``telemetry`` table.
* Evidence (``AuditConfig.keep_evidence``): per image an ``.npz`` (:mod:`ronan_jax.audit.evidence`)
  in a sub-folder per results key, so audits of several models can share the folder.

Library code: returns values, reports progress through a callback, never prints.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ronan_jax.audit.config import AuditCounts, AuditSummary, ProgressFn
from ronan_jax.audit.evidence import EvidenceBatch, sweep_orphans
from ronan_jax.audit.plan import AuditPlan, check_matches_profile, run_config
from ronan_jax.audit.resume import InputFilter, count_pending, resume_keys
from ronan_jax.audit.rows import BatchOutcome, ContentCache, judge_batch
from ronan_jax.audit.shards import ProcessShard
from ronan_jax.audit.sizing import BatchSizer, default_batch_size
from ronan_jax.audit.sizing import plan as plan_batches
from ronan_jax.inputs import Batch, Batcher, iter_records
from ronan_jax.results.store import ResultStore, RunInfo
from ronan_jax.results.telemetry import BatchTelemetry, memory_in_use


def run_audit(
    inputs: Sequence[str],
    plan: AuditPlan,
    store: ResultStore,
    *,
    progress: ProgressFn | None = None,
    stop: threading.Event | None = None,
    shard: ProcessShard | None = None,
    count_total: bool = True,
) -> AuditSummary:
    """Judge every image of ``inputs`` as ``plan`` says and store one row per image.

    ``inputs``: files, directories, glob patterns, tar archives and list files, as
    :func:`ronan_jax.inputs.iter_records` reads them. ``plan``: from
    :func:`ronan_jax.audit.plan_audit` or :meth:`AuditPlan.from_objects`; its
    :class:`AuditConfig` gives the batch size, resize rule, evidence folder and decoder
    threads. ``progress`` is called at the start and after every batch; ``stop`` ends the
    run after the batch in flight is committed; ``shard`` judges only the inputs this
    process owns (recorded with the run, not in its key, so shard databases merge);
    ``count_total`` counts the inputs ahead for a progress total (not for tar streams).

    Returns an :class:`AuditSummary`; errors in images are counted, not raised.
    """
    t_start = time.perf_counter()
    check_matches_profile(plan.profile, plan.model, plan.reference, plan.config)
    cfg = plan.audit
    batch_size = cfg.batch_size or default_batch_size(plan.config)
    sizer = plan_batches(plan.model, plan.reference, plan.config, most=batch_size)
    info = {**plan.info, "batch_sizing": sizer.to_dict()}
    run = store.start_run(
        run_config(plan, info if shard is None else {**plan.info, "shard": shard.to_dict()},
                   batch_size)
    )
    done = resume_keys(store, run.config_key)
    total = count_pending(inputs, done, shard) if count_total else None
    folder = _evidence_folder(plan, store, run.config_key, owned=shard is None)
    skip = InputFilter(done, shard)
    counts, seen = AuditCounts(), ContentCache()

    def report() -> None:
        if progress is not None:
            progress(counts.progress(total, skip.skipped, time.perf_counter() - t_start))

    report()
    stopped = False
    h, w, c = plan.model.output_shape
    with Batcher(iter_records(inputs, skip_key=skip), batch_size=batch_size, target_hw=(h, w),
                 channels=c, resize=cfg.resize, max_pixels=cfg.max_pixels,
                 workers=cfg.workers) as batcher:
        for index, batch in enumerate(batcher):
            outcome = _commit_batch(index, batch, plan, store, run, sizer, seen, folder)
            counts.add(outcome.rows, outcome.work)
            report()
            if stop is not None and stop.is_set():
                stopped = True
                break
    return AuditSummary.from_counts(
        counts, wall_s=time.perf_counter() - t_start, run_id=run.run_id,
        config_key=run.config_key, db_path=os.path.abspath(store.path), skipped=skip.skipped,
        repeated=skip.repeated, stopped=stopped, totals=store.count_by_verdict(run.config_key),
        evidence_dir=None if folder is None else str(folder), batch_sizing=sizer.to_dict(),
    )


def _evidence_folder(plan: AuditPlan, store: ResultStore, config_key: str, owned: bool) -> Path | None:
    """The run's evidence folder, made now (an unwritable place fails before any work) and,
    when this run alone owns it (no shards), swept of what a killed run left."""
    root = plan.audit.resolved_evidence_dir()
    if root is None:
        return None
    folder = root / config_key[:16]
    folder.mkdir(parents=True, exist_ok=True)
    if owned:
        sweep_orphans(folder, store.evidence_paths(config_key))
    return folder


def _commit_batch(
    index: int, batch: Batch, plan: AuditPlan, store: ResultStore, run: RunInfo,
    sizer: BatchSizer, seen: ContentCache, folder: Path | None,
) -> BatchOutcome:
    """Judge one batch and store its rows and telemetry; a failure removes its evidence."""
    calls, splits = sizer.calls, sizer.oom_splits
    evidence = EvidenceBatch(folder)
    try:
        outcome = judge_batch(batch, plan, evidence, sizer, seen)
        store.write_batch(run.config_key, outcome.rows, run_id=run.run_id)
    except BaseException:
        evidence.discard()  # no evidence file without its row (the rerun redoes it)
        raise
    store.write_telemetry(run.run_id, run.config_key,
                          batch_telemetry(index, outcome, sizer, calls, splits))
    return outcome


def batch_telemetry(
    index: int, outcome: BatchOutcome, sizer: BatchSizer, calls: int, splits: int
) -> dict[str, Any]:
    """The telemetry row of batch ``index``; ``calls`` and ``splits`` are the sizer's
    counters before the batch."""
    work = outcome.work
    memory, peak, source = memory_in_use()
    return BatchTelemetry(
        batch=index,
        images=work.inverted,
        images_per_call=sizer.images_per_call,
        calls=sizer.calls - calls,
        oom_splits=sizer.oom_splits - splits,
        steps_run=work.steps_run,
        steps_budget=work.steps_budget,
        seconds=work.seconds,
        images_per_s=work.inverted / work.seconds if work.seconds > 0 else 0.0,
        memory_bytes=memory,
        memory_peak_bytes=peak,
        memory_source=source,
    ).to_row()

