"""Many processes (hosts): which inputs this process judges, and where it writes them.

:func:`initialize_processes` starts ``jax.distributed`` (coordinator, process count and id
given, or auto-detected on Cloud TPU VMs and SLURM), or takes a fixed share without a
coordinator. Each process then audits the inputs it owns (:class:`ProcessShard`: a hash of the
image's path and tar member, so every process agrees without talking) on its local devices
only and writes its own results database (:meth:`ProcessShard.db_path`); ``ronan merge``
combines them. No collective crosses processes.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import jax

SHUTDOWN_TIMEOUT_S = 7 * 24 * 3600
"""How long a finished process waits at exit for the others (``jax.distributed`` shutdown
barrier): the coordinator's process must outlive every other process, whose shares may take
much longer; a dead process is still noticed by the heartbeat."""


def shard_index(path: str, member: str | None, count: int) -> int:
    """Which of ``count`` processes owns the input ``(path, member)``: a hash of the two,
    so it depends on nothing else (order, other inputs, the host)."""
    digest = hashlib.sha256(f"{path}\0{member or ''}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % count


@dataclasses.dataclass(frozen=True)
class ProcessShard:
    """This process's share of an audit: process ``index`` of ``count``."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(
                f"process id must lie in [0, {self.count}) and the process count be >= 1, "
                f"got process {self.index} of {self.count}"
            )

    def owns(self, path: str, member: str | None = None) -> bool:
        """Whether this process audits the input ``(path, member)`` (:func:`shard_index`)."""
        return self.count == 1 or shard_index(path, member, self.count) == self.index

    def db_path(self, db: str) -> str:
        """This process's results database: ``db`` for one process; else ``db`` with its
        ``{process_id}`` and ``{num_processes}`` fields filled when it has them, otherwise
        ``NAME.shard-I-of-K.EXT`` beside it (``results.db`` -> ``results.shard-0-of-2.db``)."""
        if self.count == 1:
            return db
        if "{process_id}" in db or "{num_processes}" in db:
            return db.format(process_id=self.index, num_processes=self.count)
        p = Path(db)
        return str(p.with_name(f"{p.stem}.shard-{self.index}-of-{self.count}{p.suffix}"))

    def to_dict(self) -> dict[str, int]:
        return {"index": self.index, "count": self.count}


@dataclasses.dataclass(frozen=True)
class ProcessSettings:
    """How this process learns its place: from ``jax.distributed`` when ``coordinator`` is
    given or ``auto`` (which lets JAX detect everything, e.g. on Cloud TPU VMs and SLURM);
    else from ``num_processes`` and ``process_id`` alone (independent workers); else one
    process."""

    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    auto: bool = False

    @property
    def distributed(self) -> bool:
        return self.auto or bool(self.coordinator)


def initialize_processes(
    settings: ProcessSettings, *, shutdown_timeout_s: int = SHUTDOWN_TIMEOUT_S
) -> ProcessShard:
    """Start ``jax.distributed`` if ``settings`` ask for it (before any other JAX work) and
    return this process's share. Raises ValueError for incomplete or impossible settings."""
    if settings.distributed:
        jax.distributed.initialize(
            coordinator_address=settings.coordinator or None,
            num_processes=settings.num_processes,
            process_id=settings.process_id,
            shutdown_timeout_seconds=shutdown_timeout_s,
        )
        return ProcessShard(jax.process_index(), jax.process_count())
    if settings.num_processes is None and settings.process_id is None:
        return ProcessShard()
    if settings.num_processes is None or settings.process_id is None:
        raise ValueError("without a coordinator, give both the process count and the process id")
    return ProcessShard(settings.process_id, settings.num_processes)
