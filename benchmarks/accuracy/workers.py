"""Fill the loss cache with one process per CPU core before the tables are scored.

On XLA:CPU one small-convolution inversion does not keep two cores busy: measured here, one
process on both cores inverted ref-photo at 12.5 s per image, and two processes pinned to one
core each at 10.7 s per image apiece (2.3x the throughput). So the accuracy benchmark can
plan every inversion its tables need as jobs (one model x one image set x one setting), and
hand them, in table order, to pinned worker processes; the tables are then scored from the
cache. Jobs are deduplicated, and a job whose images are cached costs nothing.

This module imports nothing heavy at the top: a worker pins itself to its core before JAX
starts its thread pool.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any


@dataclasses.dataclass(frozen=True)
class Job:
    """Invert the first ``n`` images of set ``spec`` on model ``model`` with ``config``."""

    model: str
    spec: str
    n: int
    config: Any  # InversionConfig (frozen, hashable)

    def __str__(self) -> str:
        return f"{self.spec} on {self.model} ({self.config.metric})"


def plan(rows: Iterable[Any], config: Any, n: int) -> list[Job]:
    """The inversions scoring ``rows`` needs, row by row, without repeats.

    Row by row, so a pool that is stopped early leaves whole rows measured (see ``--partial``).
    """
    from benchmarks.accuracy import sets

    jobs: list[Job] = []
    for row in rows:
        cfg = row.settings(config)
        jobs += [Job(row.model, s, n, cfg) for s in row.specs]
        if row.screen is not None:
            jobs += [Job(row.model, s, n, cfg.replace(steps=row.screen[0])) for s in row.specs]
        if row.calibrated:  # the reference is unconditional: no class rule
            ref = sets.default_reference(row.model)
            jobs += [Job(ref, s, n, cfg.replace(class_rule="known")) for s in row.specs]
    return list(dict.fromkeys(jobs))


def watch_parent(parent: int, poll: float = 2.0,
                 on_orphan: Callable[[], None] = lambda: os._exit(1),
                 stop: threading.Event | None = None) -> threading.Thread:
    """Call ``on_orphan`` (by default: exit at once) once this process's parent is no longer
    ``parent``, checked every ``poll`` seconds on a daemon thread (until ``stop`` is set): a
    worker whose benchmark was killed stops instead of inverting on for hours."""
    stop = stop or threading.Event()

    def loop() -> None:
        while os.getppid() == parent:
            if stop.wait(poll):
                return
        on_orphan()

    thread = threading.Thread(target=loop, name="watch-parent", daemon=True)
    thread.start()
    return thread


def _pin(cores: Any, parent: int) -> None:
    core = cores.get()
    os.sched_setaffinity(0, {core})
    os.environ["RONAN_WORKER_CORE"] = str(core)
    watch_parent(parent)


def run_job(job: Job, cache_root: Path | None = None,
            images_dir: Path | None = None) -> tuple[str, float]:
    """Invert one job's uncached images (in a worker process); returns (job, seconds)."""
    from benchmarks.accuracy import cache, sets
    from ronan_jax.attribution.classes import num_classes

    if images_dir is not None:  # this process only ever runs jobs of one fill_cache call
        sets.IMAGES_DIR = images_dir
    t0 = time.time()
    core = os.environ.get("RONAN_WORKER_CORE", "?")
    images = sets.load_set(job.spec, job.n)
    gen = sets.load_model(job.model)
    classes = sets.load_classes(job.spec, job.n) if num_classes(gen) else None
    cache.losses(gen, images, job.config, job.spec,
                 log=lambda m: print(f"[core {core}]{m}", flush=True), root=cache_root,
                 classes=classes, codecs=sets.load_codecs(job.spec, job.n))
    return str(job), time.time() - t0


def fill_cache(jobs: list[Job], workers: int, log: Callable[[str], None] = print,
               cache_root: Path | None = None, images_dir: Path | None = None) -> int:
    """Run ``jobs`` on ``workers`` processes, each pinned to its own core; returns failures.

    A failed job is reported and skipped: its table is then scored by the caller, which
    inverts the missing images itself or raises there with the real error.
    """
    cores = sorted(os.sched_getaffinity(0))
    workers = max(1, min(workers, len(cores)))
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    for c in cores[:workers]:
        queue.put(c)
    failures = 0
    log(f"filling the loss cache: {len(jobs)} jobs on {workers} pinned workers "
        f"(cores {cores[:workers]})")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_pin,
                             initargs=(queue, os.getpid())) as pool:
        futures = {pool.submit(run_job, job, cache_root, images_dir): job for job in jobs}
        for fut in as_completed(futures):
            try:
                name, seconds = fut.result()
                log(f"done: {name} in {seconds:.0f} s")
            except Exception as exc:
                failures += 1
                log(f"FAILED: {futures[fut]}: {type(exc).__name__}: {exc}")
    return failures
