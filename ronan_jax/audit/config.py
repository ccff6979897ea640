"""What an audit is asked to do (:class:`AuditConfig`), what it reports while it runs
(:class:`AuditProgress`) and what it did (:class:`AuditSummary`, :class:`AuditCounts`)."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from ronan_jax.attribution.verdicts import BELONGING, ERROR, NON_BELONGING
from ronan_jax.inputs import DEFAULT_MAX_PIXELS
from ronan_jax.results.telemetry import WorkSummary

AUDIT_FORMAT = 1
"""Version of the audit's result semantics; part of every run's results key."""

DEFAULT_DB = "ronan-results.sqlite"
DEFAULT_MODEL_SPEC = "builtin:dcgan-mnist"
CPU_BATCH_SIZE = 16
INVERSION_FLAGS: tuple[str, ...] = ("steps", "restarts", "lr", "metric", "seed",
                                    "second_chance", "second_restarts", "second_steps",
                                    "class_rule", "warm_start")
"""Inversion settings an audit may name; they must equal the profile's."""


@dataclasses.dataclass(frozen=True)
class AuditConfig:
    """Everything a user chooses for one audit besides the inputs.

    ``reference`` None means "the profile's reference, else the model's documented default",
    ``"none"`` means uncalibrated; ``profile`` None means the profile shipped with a builtin
    model. ``batch_size`` (images per batch and per commit) None picks
    :func:`default_batch_size`. ``inversion`` holds inversion settings the user named
    (:data:`INVERSION_FLAGS`, and ``devices``); the result-changing ones must equal the
    profile's. ``class_label`` / ``classes_from`` (a ``path,class`` file) give the images'
    class for a class-conditional model whose profile needs it. ``preset`` picks the shipped
    profile of a builtin model for that inversion preset (None: ``paper``). Recorded with the run; only
    ``resize`` and ``max_pixels`` enter its results key (they change what is compared).
    """

    model: str = DEFAULT_MODEL_SPEC
    reference: str | None = None
    profile: str | None = None
    db: str = DEFAULT_DB
    batch_size: int | None = None
    resize: bool = False
    keep_evidence: bool = False
    evidence_dir: str | None = None
    workers: int | None = None
    quiet: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    inversion: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    class_label: int | None = None
    classes_from: str | None = None
    preset: str | None = None

    def __post_init__(self) -> None:
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.class_label is not None and self.classes_from is not None:
            raise ValueError("give the images' class once: a class for all, or a classes file")
        unknown = set(self.inversion) - {*INVERSION_FLAGS, "devices"}
        if unknown:
            raise ValueError(f"unknown inversion settings {sorted(unknown)}")
        given = {k: v for k, v in self.inversion.items() if v is not None}
        object.__setattr__(self, "inversion", given)

    def resolved_evidence_dir(self) -> Path | None:
        """Where evidence goes: ``evidence_dir``, else ``<db stem>-evidence`` beside the
        database; None without ``keep_evidence``."""
        if not self.keep_evidence:
            return None
        if self.evidence_dir:
            return Path(self.evidence_dir).absolute()
        db = Path(self.db).absolute()
        return db.with_name(db.stem + "-evidence")

    def replace(self, **changes: Any) -> AuditConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "inversion": dict(self.inversion)}


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


ProgressFn = Callable[[AuditProgress], None]


@dataclasses.dataclass(frozen=True)
class BatchWork:
    """What the engine did for one batch: images inverted, steps run against the full
    budget (images x restarts x steps per model), and seconds spent judging."""

    inverted: int = 0
    steps_run: int = 0
    steps_budget: int = 0
    seconds: float = 0.0

    def __add__(self, other: BatchWork) -> BatchWork:
        return BatchWork(
            self.inverted + other.inverted,
            self.steps_run + other.steps_run,
            self.steps_budget + other.steps_budget,
            self.seconds + other.seconds,
        )


@dataclasses.dataclass
class AuditCounts:
    """The running counts of one audit: rows by verdict, error kinds, batches and work.
    :meth:`add` folds in one committed batch."""

    verdicts: Counter[str] = dataclasses.field(default_factory=Counter)
    error_kinds: Counter[str] = dataclasses.field(default_factory=Counter)
    batches: int = 0
    work: BatchWork = dataclasses.field(default_factory=BatchWork)

    def add(self, rows: Iterable[Mapping[str, Any]], work: BatchWork) -> None:
        for row in rows:
            self.verdicts[row["verdict"]] += 1
            if row["verdict"] == ERROR:
                self.error_kinds[str(row.get("error_kind") or "unknown")] += 1
        self.batches += 1
        self.work = self.work + work

    @property
    def processed(self) -> int:
        return sum(self.verdicts.values())

    @property
    def judged(self) -> int:
        return self.verdicts[BELONGING] + self.verdicts[NON_BELONGING]

    def progress(self, total: int | None, skipped: int, elapsed_s: float) -> AuditProgress:
        return AuditProgress(
            done=self.processed,
            total=total,
            belonging=self.verdicts[BELONGING],
            non_belonging=self.verdicts[NON_BELONGING],
            errors=self.verdicts[ERROR],
            skipped=skipped,
            elapsed_s=elapsed_s,
            images_per_s=self.processed / elapsed_s if elapsed_s > 0 else 0.0,
        )


@dataclasses.dataclass(frozen=True)
class AuditSummary:
    """Counts and timings of one :func:`ronan_jax.audit.run_audit` call.

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
    repeated: int = 0  # of ``skipped``: inputs named twice in this run (judged once)

    @classmethod
    def from_counts(cls, counts: AuditCounts, *, wall_s: float, **fields: Any) -> AuditSummary:
        """The summary of a run whose counts are ``counts``; ``fields`` name the run."""
        return cls(
            processed=counts.processed,
            belonging=counts.verdicts[BELONGING],
            non_belonging=counts.verdicts[NON_BELONGING],
            errors=counts.verdicts[ERROR],
            error_kinds=dict(counts.error_kinds.most_common()),
            batches=counts.batches,
            wall_s=wall_s,
            attribute_s=counts.work.seconds,
            images_per_s=counts.judged / wall_s if wall_s > 0 else 0.0,
            inverted=counts.work.inverted,
            steps_run=counts.work.steps_run,
            steps_budget=counts.work.steps_budget,
            **fields,
        )

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
