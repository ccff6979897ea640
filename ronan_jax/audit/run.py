"""Bulk audit: image sources -> decoded batches -> Algorithm 1 -> one SQLite row per image.

The pipeline of DESIGN.md in one function, :func:`run_audit`::

    iter_records(inputs) -> Batcher (decode threads, prefetch) -> attribute() per batch
        -> ResultStore.write_batch (one transaction per batch) -> progress callback

* Resumable: a run is keyed by the settings that determine its results (:func:`run_config`);
  images whose ``(path, member)`` already has a row under that key are skipped before their
  bytes are read. Error rows are retried (a fixed file is picked up), except inversions that
  diverged, which are deterministic. A process killed mid-batch loses that batch only.
* Errors are rows, never exceptions: unreadable, corrupt, wrong-size images come from the
  batcher as complete error rows; a diverged inversion is ``verdict='error'`` with
  ``error_kind='diverged'``; an unexpected failure of a batch's inversion marks its images
  ``error_kind='internal'`` and the run goes on.
* Stoppable: ``stop`` (a :class:`threading.Event`) is checked after each committed batch, so
  Ctrl-C in the CLI ends the run cleanly with every finished batch stored.
* Memory-bounded: a batch goes to the engine in calls that fit (:mod:`ronan_jax.audit.sizing`):
  sized from the device's free memory where the backend reports it, halved on an
  out-of-memory error down to one image; an image that alone does not fit is an error row
  (``error_kind='out-of-memory'``). The size used is recorded with the run (``info.batch_sizing``),
  per batch in the telemetry and in the summary.
* Telemetry: one row per batch in the store's ``telemetry`` table (:mod:`ronan_jax.results.telemetry`):
  images, batch size used, steps run against the full budget, images/s, memory in use.
* Evidence (``evidence_dir``): per image an ``.npz`` named by the SHA-256 of its bytes with
  float32 ``image``, ``reconstruction``, ``best_input`` (the reverse-engineered input) and,
  when calibrated, ``ref_reconstruction`` and ``ref_best_input``; its path is in the row.

Library code: returns values, reports progress through a callback, never prints.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from ronan_jax.attribution.attribute import (
    BELONGING,
    DIVERGED,
    NON_BELONGING,
    Attribution,
    attribute,
)
from ronan_jax.attribution.profile import (
    Profile,
    ProfileMismatchError,
    check_compatible,
    library_versions,
)
from ronan_jax.audit.shards import ProcessShard
from ronan_jax.audit.sizing import BatchSizer, engine_images_per_call, run_fitting
from ronan_jax.audit.sizing import plan as plan_batches
from ronan_jax.engine.config import InversionConfig
from ronan_jax.engine.generator import Generator
from ronan_jax.inputs import DEFAULT_MAX_PIXELS, Batch, Batcher, iter_records
from ronan_jax.results.store import ROW_KEYS, ResultStore, utc_now
from ronan_jax.results.telemetry import BatchTelemetry, WorkSummary, memory_in_use, step_counts

AUDIT_FORMAT = 1
"""Version of the audit's result semantics; part of every run's config key."""

DEFAULT_DB = "ronan-results.sqlite"
CPU_BATCH_SIZE = 16


@dataclasses.dataclass(frozen=True)
class AuditConfig:
    """Everything a user chooses for one audit besides the inputs and inversion settings.

    ``reference`` None means "the model's documented default", ``"none"`` means uncalibrated;
    ``profile`` None means the profile shipped with a builtin model. ``batch_size`` None picks
    :func:`default_batch_size`. Recorded with the run (not part of its results key, except
    ``resize``, which changes what is compared).
    """

    model: str
    reference: str | None = None
    profile: str | None = None
    db: str = DEFAULT_DB
    batch_size: int | None = None
    resize: bool = False
    keep_evidence: bool = False
    evidence_dir: str | None = None
    workers: int | None = None
    quiet: bool = False

    def __post_init__(self) -> None:
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")

    def resolved_evidence_dir(self) -> Path | None:
        """Where evidence goes: ``evidence_dir``, else ``<db stem>-evidence`` beside the
        database; None without ``keep_evidence``."""
        if not self.keep_evidence:
            return None
        if self.evidence_dir:
            return Path(self.evidence_dir).absolute()
        db = Path(self.db).absolute()
        return db.with_name(db.stem + "-evidence")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class AuditProgress:
    """A progress report, sent once at the start and after every committed batch.

    ``done`` counts rows written by this run (judged images and error rows); ``total`` the
    inputs still to do when the run started (None when unknown: tar streams are not counted
    ahead); ``skipped`` inputs already done by an earlier run (or listed twice).
    """

    done: int
    total: int | None
    belonging: int
    non_belonging: int
    errors: int
    skipped: int
    elapsed_s: float
    images_per_s: float


@dataclasses.dataclass(frozen=True)
class AuditSummary:
    """Counts and timings of one :func:`run_audit` call.

    Counts are this run's; ``totals`` are all rows under the run's config key (earlier runs
    of the same settings included). ``stopped`` is True when ``stop`` ended the run early.
    """

    run_id: str
    config_key: str
    db_path: str
    processed: int
    belonging: int
    non_belonging: int
    errors: int
    error_kinds: dict[str, int]
    skipped: int
    batches: int
    wall_s: float
    attribute_s: float
    images_per_s: float
    stopped: bool
    totals: dict[str, int]
    evidence_dir: str | None = None
    inverted: int = 0
    steps_run: int = 0
    steps_budget: int = 0
    batch_sizing: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def judged(self) -> int:
        """Images that got a belonging / non-belonging verdict in this run."""
        return self.belonging + self.non_belonging

    @property
    def work(self) -> WorkSummary:
        """Steps run against the full budget (images x restarts x steps per inversion) and
        the engine's throughput; :meth:`WorkSummary.describe` words it."""
        return WorkSummary(
            self.batches, self.inverted, self.steps_run, self.steps_budget, self.attribute_s,
            self.batch_sizing.get("images_per_call"), int(self.batch_sizing.get("oom_splits", 0)),
        )

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "judged": self.judged}


ProgressFn = Callable[[AuditProgress], None]


def effective_max_batch(config: InversionConfig, backend: str | None = None) -> int:
    """Runs (images x restarts) per device call: ``config.max_batch``, or the engine's
    per-backend default when it is 0."""
    if config.max_batch:
        return config.max_batch
    try:
        from ronan_jax.engine.invert import default_max_batch
    except ImportError:  # an engine without per-backend defaults
        return 256
    return default_max_batch(backend)


def default_batch_size(config: InversionConfig | None = None, backend: str | None = None) -> int:
    """Images per batch when the user does not say: small on CPU (rows are committed often
    and the first results come quickly); on accelerators as many images as one device call
    takes (:func:`effective_max_batch` // restarts), times the devices the engine splits a
    batch over, so each device gets a full call."""
    import jax

    if backend is None:
        backend = jax.default_backend()
    if backend == "cpu":
        return CPU_BATCH_SIZE
    config = config or InversionConfig()
    try:
        local = jax.local_device_count(backend)
    except RuntimeError:  # that backend is not present here (a planning question)
        local = 1
    devices = min(config.devices, local) if getattr(config, "devices", 0) else local
    return max(1, effective_max_batch(config, backend) // config.restarts) * devices


def run_config(
    model: Generator,
    reference: Generator | None,
    profile: Profile,
    config: InversionConfig,
    *,
    resize: bool,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    info: Mapping[str, Any] | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """The configuration a run is stored with.

    Its results key (see :mod:`ronan_jax.results.store`) covers what determines a row: model and
    reference identity (weights hash), the profile (id and statistics), the inversion
    settings, the decode rules (``resize``, ``max_pixels``, output shape) and
    :data:`AUDIT_FORMAT`. Versions, batch size, workers and ``info`` are recorded only.
    """
    return {
        "audit_format": AUDIT_FORMAT,
        "model": dict(model.identity),
        "reference": None if reference is None else dict(reference.identity),
        "profile": {
            "id": profile.id,
            "n": profile.n,
            "mu": profile.mu,
            "sigma": profile.sigma,
            "alpha": profile.alpha,
            "calibrated": profile.calibrated,
        },
        "settings": config.result_settings(),
        "image_shape": list(model.output_shape),
        "resize": bool(resize),
        "max_pixels": int(max_pixels),
        "versions": library_versions(),
        "batch_size": batch_size,
        "workers": workers,
        "info": dict(info or {}),
    }


def resume_keys(store: ResultStore, config_key: str) -> set[tuple[str, str]]:
    """``(path, member)`` of images a new run of ``config_key`` can skip: every row except
    errors worth retrying (all error kinds but ``diverged``)."""
    done = store.done_keys(config_key)
    retry = {
        (r["path"], r["member"])
        for r in store.iter_results(config_key, verdict="error")
        if r.get("error_kind") != "diverged"
    }
    return done - retry


class _ArchiveFound(Exception):
    """Raised inside a counting walk when a tar member shows up (streams are not counted)."""


def count_pending(
    inputs: Sequence[str], done: set[tuple[str, str]], shard: ProcessShard | None = None
) -> int | None:
    """How many inputs a run will process (not done, duplicates once, owned by ``shard``),
    or None when an input streams a tar archive (counting it would mean reading it twice).

    Walks directories, globs and list files without reading image bytes.
    """
    seen: set[tuple[str, str]] = set()
    count = 0

    def key(path: str, member: str | None) -> bool:
        nonlocal count
        if member is not None:
            raise _ArchiveFound
        k = (path, "")
        if shard is not None and not shard.owns(path):
            return True
        if k not in done and k not in seen:
            seen.add(k)
            count += 1
        return True  # never read the bytes

    try:
        for _record in iter_records(inputs, skip_key=key):
            count += 1  # records the filter never saw: unreadable inputs, damaged archives
    except _ArchiveFound:
        return None
    return count


def _finite(value: Any) -> float | None:
    f = float(value)
    return f if math.isfinite(f) else None


def _write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write atomically: a killed run never leaves a half-written evidence file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    os.replace(tmp, path)


def save_evidence(
    folder: Path, sha: str, image: np.ndarray, att: Attribution, i: int
) -> Path:
    """Store the evidence behind image ``i`` of a batch; returns the ``.npz`` path."""
    arrays = {
        "image": np.asarray(image, np.float32),
        "reconstruction": np.asarray(att.model_result.reconstruction[i], np.float32),
        "best_input": np.asarray(att.model_result.best_input[i], np.float32),
        "restart_best": np.asarray(att.model_result.restart_best[i], np.float32),
    }
    if att.reference_result is not None:
        arrays["ref_reconstruction"] = np.asarray(att.reference_result.reconstruction[i], np.float32)
        arrays["ref_best_input"] = np.asarray(att.reference_result.best_input[i], np.float32)
    path = folder / f"{sha}.npz"
    _write_npz(path, arrays)
    return path


def _diverged_message(att: Attribution, i: int) -> str:
    where = []
    if att.model_result.diverged[i]:
        where.append("the model")
    if att.reference_result is not None and att.reference_result.diverged[i]:
        where.append("the reference")
    if not where:
        return "the calibrated loss is not finite (reference loss 0 or overflow)"
    return "inversion diverged on every restart on " + " and ".join(where)


def _judge_batch(
    batch: Batch,
    model: Generator,
    reference: Generator | None,
    profile: Profile,
    config: InversionConfig,
    evidence_dir: Path | None,
    sizer: BatchSizer | None = None,
) -> tuple[list[dict[str, Any]], float, tuple[int, int, int]]:
    """Rows for one batch (judged images and error rows, in input order), the seconds
    spent in :func:`attribute`, and (images inverted, steps run, full step budget).

    The images go to :func:`attribute` in calls that fit in memory (``sizer``, see
    :func:`ronan_jax.audit.sizing.run_fitting`); a call that fails for another reason marks
    its images ``error_kind='internal'`` (one bad call must not stop a million-image audit).
    """
    rows: list[tuple[int, dict[str, Any]]] = []
    seconds = 0.0
    inverted = steps_run = steps_budget = 0
    if batch.items:
        sizer = sizer or BatchSizer(engine_images_per_call(config), config.restarts)
        started = utc_now()
        t0 = time.perf_counter()
        pieces = run_fitting(
            lambda lo, hi, cfg: attribute(batch.images[lo:hi], model, reference, profile, cfg),
            len(batch.items),
            config,
            sizer,
            fatal=(ProfileMismatchError,),  # a configuration error: not a per-image error
        )
        seconds = time.perf_counter() - t0
        finished = utc_now()
        share = seconds / len(batch.items)
        for piece in pieces:
            att: Attribution | None = piece.value
            if att is not None:
                inverted += piece.hi - piece.lo
                run, budget = step_counts(
                    (att.model_result, att.reference_result), config.restarts, config.steps
                )
                steps_run += run
                steps_budget += budget
            for i, item in enumerate(batch.items[piece.lo : piece.hi]):
                row = item.row_fields()
                row.update(started=started, finished=finished, seconds=share)
                if att is None:
                    row.update(verdict=DIVERGED, error_kind=piece.error_kind, error=piece.error)
                else:
                    verdict = str(att.verdict[i])
                    row.update(
                        loss=_finite(att.loss[i]),
                        ref_loss=None if att.ref_loss is None else _finite(att.ref_loss[i]),
                        calibrated_loss=_finite(att.calibrated_loss[i]),
                        z=_finite(att.z[i]),
                        critical_value=_finite(att.critical_value[i]),
                        p_value=_finite(att.p_value[i]),
                        verdict=verdict,
                    )
                    if verdict == DIVERGED:
                        row.update(error_kind="diverged", error=_diverged_message(att, i))
                    elif evidence_dir is not None and item.sha256:
                        image = batch.images[piece.lo + i]
                        path = save_evidence(evidence_dir, item.sha256, image, att, i)
                        row["evidence_path"] = str(path)
                rows.append((item.index, row))
    for item in batch.failed:
        rows.append((item.index, item.row_fields()))
    rows.sort(key=lambda r: r[0])
    return [r for _, r in rows], seconds, (inverted, steps_run, steps_budget)


def run_audit(
    inputs: Sequence[str],
    model: Generator,
    reference: Generator | None,
    profile: Profile,
    config: InversionConfig,
    store: ResultStore,
    *,
    batch_size: int | None = None,
    resize: bool = False,
    evidence_dir: str | os.PathLike[str] | None = None,
    progress: ProgressFn | None = None,
    stop: threading.Event | None = None,
    workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    info: Mapping[str, Any] | None = None,
    count_total: bool = True,
    shard: ProcessShard | None = None,
) -> AuditSummary:
    """Judge every image of ``inputs`` against ``model`` and store one row per image.

    Args:
      inputs: files, directories, glob patterns, tar archives, list files (``@list`` or
        ``.txt``/``.lst``), as :func:`ronan_jax.inputs.iter_records` reads them.
      model, reference, profile, config: as for :func:`ronan_jax.attribution.attribute.attribute`; a
        mismatch raises :class:`ProfileMismatchError` before anything is stored.
      store: the results database; a run is started in it (see :func:`run_config`).
      batch_size: images per inversion batch and per transaction (default
        :func:`default_batch_size`).
      resize: resize images of another size to the model's (antialiased) instead of
        recording a ``size-mismatch`` error.
      evidence_dir: keep per-image evidence ``.npz`` files here (None: keep none); they go
        in a sub-folder per results key, so audits of several models can share it.
      progress: called with an :class:`AuditProgress` at the start and after every batch.
      stop: when set, the run ends after the batch in flight is committed.
      workers: decoder threads (default: the batcher's).
      info: extra metadata recorded with the run (not part of its results key).
      count_total: count the inputs ahead (for a progress total) when no tar is involved.
      shard: this process's share of a run split over processes: only the inputs it owns
        (:meth:`ProcessShard.owns`) are judged; recorded with the run (not in its key, so
        the shards' databases merge).

    Returns an :class:`AuditSummary`; errors in images are counted, not raised. The number
    of images per engine call is found by :func:`ronan_jax.audit.sizing.plan` (device
    memory) and lowered on out-of-memory errors; it is recorded with the run
    (``info.batch_sizing``: the starting size), per batch in the store's telemetry and in
    the summary (the size at the end).
    """
    t_start = time.perf_counter()
    check_compatible(profile, model, reference, config)
    if tuple(profile.image_shape) != tuple(model.output_shape):
        raise ProfileMismatchError(
            f"profile was built on {tuple(profile.image_shape)} images, the model emits "
            f"{tuple(model.output_shape)}"
        )
    batch_size = batch_size or default_batch_size(config)
    sizer = plan_batches(model, reference, config)
    info = {**(info or {}), "batch_sizing": sizer.to_dict()}
    run = store.start_run(
        run_config(
            model,
            reference,
            profile,
            config,
            resize=resize,
            max_pixels=max_pixels,
            info=info if shard is None else {**(info or {}), "shard": shard.to_dict()},
            batch_size=batch_size,
            workers=workers,
        )
    )
    done = resume_keys(store, run.config_key)
    total = count_pending(inputs, done, shard) if count_total else None
    folder = None if evidence_dir is None else Path(evidence_dir).absolute() / run.config_key[:16]

    seen: set[tuple[str, str]] = set()
    skipped = 0

    def skip_key(path: str, member: str | None) -> bool:
        # runs in the batcher's feeder thread; the main thread only reads `skipped`
        nonlocal skipped
        if shard is not None and not shard.owns(path, member):
            return True  # another process's input
        k = (path, member or "")
        if k in done or k in seen:
            skipped += 1
            return True
        seen.add(k)
        return False

    counts: Counter[str] = Counter()
    error_kinds: Counter[str] = Counter()
    processed = batches = 0
    attribute_s = 0.0
    inverted = steps_run = steps_budget = 0
    stopped = False

    def report() -> None:
        if progress is None:
            return
        elapsed = time.perf_counter() - t_start
        progress(
            AuditProgress(
                done=processed,
                total=total,
                belonging=counts[BELONGING],
                non_belonging=counts[NON_BELONGING],
                errors=counts[DIVERGED],
                skipped=skipped,
                elapsed_s=elapsed,
                images_per_s=processed / elapsed if elapsed > 0 else 0.0,
            )
        )

    report()
    h, w, c = model.output_shape
    records = iter_records(inputs, skip_key=skip_key)
    with Batcher(
        records,
        batch_size=batch_size,
        target_hw=(h, w),
        channels=c,
        resize=resize,
        max_pixels=max_pixels,
        workers=workers,
    ) as batcher:
        for batch in batcher:
            calls, splits = sizer.calls, sizer.oom_splits
            rows, seconds, work = _judge_batch(batch, model, reference, profile, config, folder, sizer)
            store.write_batch(run.config_key, rows, run_id=run.run_id)
            store.write_telemetry(
                run.run_id, run.config_key, _batch_telemetry(batches, work, seconds, sizer, calls, splits)
            )
            attribute_s += seconds
            inverted += work[0]
            steps_run += work[1]
            steps_budget += work[2]
            batches += 1
            processed += len(rows)
            for row in rows:
                counts[row["verdict"]] += 1
                if row["verdict"] == DIVERGED:
                    error_kinds[str(row.get("error_kind") or "unknown")] += 1
            report()
            if stop is not None and stop.is_set():
                stopped = True
                break
    wall = time.perf_counter() - t_start
    return AuditSummary(
        run_id=run.run_id,
        config_key=run.config_key,
        db_path=os.path.abspath(store.path),
        processed=processed,
        belonging=counts[BELONGING],
        non_belonging=counts[NON_BELONGING],
        errors=counts[DIVERGED],
        error_kinds=dict(error_kinds.most_common()),
        skipped=skipped,
        batches=batches,
        wall_s=wall,
        attribute_s=attribute_s,
        images_per_s=(counts[BELONGING] + counts[NON_BELONGING]) / wall if wall > 0 else 0.0,
        stopped=stopped,
        totals=store.count_by_verdict(run.config_key),
        evidence_dir=None if folder is None else str(folder),
        inverted=inverted,
        steps_run=steps_run,
        steps_budget=steps_budget,
        batch_sizing=sizer.to_dict(),
    )


def _batch_telemetry(
    index: int, work: tuple[int, int, int], seconds: float, sizer: BatchSizer, calls: int, splits: int
) -> dict[str, Any]:
    """The telemetry row of batch ``index``; ``calls`` and ``splits`` are the sizer's
    counters before the batch."""
    images, run, budget = work
    memory, peak, source = memory_in_use()
    return BatchTelemetry(
        batch=index,
        images=images,
        images_per_call=sizer.images_per_call,
        calls=sizer.calls - calls,
        oom_splits=sizer.oom_splits - splits,
        steps_run=run,
        steps_budget=budget,
        seconds=seconds,
        images_per_s=images / seconds if seconds > 0 else 0.0,
        memory_bytes=memory,
        memory_peak_bytes=peak,
        memory_source=source,
    ).to_row()


# -- results out: export, labels ------------------------------------------------------------

EXPORT_FIELDS: tuple[str, ...] = (
    "path",
    "member",
    "sha256",
    "verdict",
    "loss",
    "ref_loss",
    "calibrated_loss",
    "z",
    "critical_value",
    "p_value",
    "error_kind",
    "error",
    *(k for k in ROW_KEYS if k not in {
        "path", "member", "sha256", "verdict", "loss", "ref_loss", "calibrated_loss", "z",
        "critical_value", "p_value", "error_kind", "error",
    }),
    "config_key",
)
"""Columns of ``ronan export``, in order: identity and verdict first, then every stored field."""

EXPORT_FORMATS = ("csv", "jsonl")


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def export_rows(rows: Iterable[Mapping[str, Any]], fmt: str, out: TextIO) -> int:
    """Write result rows as CSV (header + one line per image; empty = NULL) or JSON Lines
    (one object per image; null = NULL) with :data:`EXPORT_FIELDS`; return the count."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {EXPORT_FORMATS}, got {fmt!r}")
    n = 0
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=EXPORT_FIELDS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else _plain(row.get(k))) for k in EXPORT_FIELDS})
            n += 1
    else:
        for row in rows:
            record = {k: _plain(row.get(k)) for k in EXPORT_FIELDS}
            out.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")
            n += 1
    return n


_TRUE_LABELS = frozenset({"1", "belonging", "true", "yes", "b"})
_FALSE_LABELS = frozenset({"0", "non-belonging", "nonbelonging", "false", "no", "n"})


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


def save_png_images(images: np.ndarray, folder: str | os.PathLike[str], prefix: str) -> list[Path]:
    """Write [N, H, W, C] float images in [0, 1] as 8-bit PNG files ``prefix-000.png`` ...
    (greyscale for C = 1), the way generated images are saved in the wild."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    images = np.asarray(images, np.float32)
    paths = []
    for i, img in enumerate(images):
        u8 = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
        pil = Image.fromarray(u8[..., 0] if u8.shape[-1] == 1 else u8)  # 2-D uint8 -> mode L
        p = folder / f"{prefix}-{i:03d}.png"
        pil.save(p)
        paths.append(p)
    return paths
