"""Throughput telemetry: per audit batch, the work done, the speed and the memory in use.

One :class:`BatchTelemetry` per batch, stored by the audit in the results database's
``telemetry`` table, one row per batch keyed by run id and batch number; read it with
:meth:`ronan_jax.results.store.ResultStore.iter_telemetry` or plain SQL::

    SELECT batch, images, images_per_call, steps_run, steps_budget, images_per_s,
           memory_bytes, memory_source FROM telemetry WHERE run_id = ?

Work is counted in optimisation steps: an image's budget is ``restarts x steps`` per
inversion (two inversions with a reference model), and ``steps_run`` is what the engine
actually ran (``InversionResult.steps_run``), less when early stopping (plateau, halving,
a decision stop) ends restarts early. :func:`summarize` adds a run's batches up.

Memory is the device's ``bytes_in_use`` / ``peak_bytes_in_use`` where the backend reports
them (``memory_source = "device"``), else this process's resident set size from
``/proc/self/status`` (``"process-rss"``: VmRSS and VmHWM) or, without ``/proc``,
``resource.getrusage`` (``"process-peak-rss"``: the peak only). ``memory_bytes`` is read after
the batch (its buffers mostly freed); ``memory_peak_bytes`` is the highest since the process
started, neither source resets it per batch.
"""

from __future__ import annotations

import dataclasses
import resource
import sys
from collections.abc import Iterable, Mapping
from typing import Any

MEMORY_DEVICE = "device"
MEMORY_RSS = "process-rss"
MEMORY_PEAK_RSS = "process-peak-rss"


def memory_in_use(device: Any = None) -> tuple[int | None, int | None, str]:
    """(bytes in use, peak bytes, source): the device's memory where its backend reports
    it, else this process's resident memory (see the module docstring)."""
    try:
        import jax

        stats = (device or jax.local_devices()[0]).memory_stats()
    except Exception:
        stats = None
    if stats and "bytes_in_use" in stats:
        peak = stats.get("peak_bytes_in_use")
        return int(stats["bytes_in_use"]), None if peak is None else int(peak), MEMORY_DEVICE
    try:
        fields = {}
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                name, _, value = line.partition(":")
                if name in ("VmRSS", "VmHWM"):
                    fields[name] = int(value.split()[0]) * 1024  # kB
        if "VmRSS" in fields:
            return fields["VmRSS"], fields.get("VmHWM"), MEMORY_RSS
    except (OSError, ValueError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak *= 1 if sys.platform == "darwin" else 1024  # bytes on macOS, kB elsewhere
    return None, int(peak), MEMORY_PEAK_RSS


@dataclasses.dataclass(frozen=True)
class BatchTelemetry:
    """What one audit batch cost.

    ``images``: images inverted (decode errors and images that failed are not);
    ``images_per_call``: the batch size used, the most images per engine call at the end of
    the batch; ``calls``: engine calls tried; ``oom_splits``: calls split after running out
    of memory; ``steps_run`` / ``steps_budget``: optimisation steps run / the full budget;
    ``seconds``: time in the engine; ``images_per_s``: ``images / seconds``.
    """

    batch: int
    images: int
    images_per_call: int
    calls: int
    oom_splits: int
    steps_run: int
    steps_budget: int
    seconds: float
    images_per_s: float
    memory_bytes: int | None
    memory_peak_bytes: int | None
    memory_source: str

    def to_row(self) -> dict[str, Any]:
        """The row the store writes (:data:`ronan_jax.results.store.TELEMETRY_KEYS`)."""
        return dataclasses.asdict(self)


def step_counts(results: Iterable[Any], restarts: int, steps: int) -> tuple[int, int]:
    """(steps run, full budget) of inversion results (``InversionResult``; None skipped):
    the sum of ``steps_run`` and ``images x runs x steps`` per result, where the runs per
    image are ``steps_run``'s columns (the restarts, plus a warm start's run) when known."""
    run = budget = 0
    for res in results:
        if res is None:
            continue
        done = getattr(res, "steps_run", None)
        images = len(res.loss)
        runs = restarts if done is None or done.ndim != 2 else int(done.shape[1])
        budget += images * runs * steps
        run += images * runs * steps if done is None else int(done.sum())
    return run, budget


@dataclasses.dataclass(frozen=True)
class WorkSummary:
    """A run's (or several runs') telemetry added up."""

    batches: int
    images: int
    steps_run: int
    steps_budget: int
    seconds: float
    images_per_call: int | None  # the batch size used last
    oom_splits: int

    @property
    def run_fraction(self) -> float | None:
        """Steps run as a share of the full budget (None without any)."""
        return self.steps_run / self.steps_budget if self.steps_budget else None

    @property
    def images_per_s(self) -> float:
        """Images inverted per second in the engine."""
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def describe(self) -> str:
        """One sentence: steps run against the budget, the share saved, throughput."""
        frac = self.run_fraction
        if frac is None:
            return "No image was inverted."
        saved = (
            "the full budget" if self.steps_run >= self.steps_budget
            else f"{100 * frac:.1f}% of the full budget, {100 * (1 - frac):.1f}% saved by early stopping"
        )
        text = (
            f"Inversion work: {self.steps_run:,} of {self.steps_budget:,} optimisation steps "
            f"run ({saved}), {self.images_per_s:.2f} images/s in the engine"
        )
        if self.images_per_call is not None:
            text += f", up to {self.images_per_call} image(s) per device call"
        if self.oom_splits:
            text += f" ({self.oom_splits} call(s) split after running out of memory)"
        return text + "."


def _count(value: Any) -> int:
    """A stored count as an int; 0 for NULL or what a hand edit left (text, bytes, NaN)."""
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError, OverflowError):
        return 0


def _seconds(value: Any) -> float:
    try:
        f = float(value or 0.0)
    except (TypeError, ValueError):
        return 0.0
    return f if f >= 0.0 and f != float("inf") else 0.0


def summarize(rows: Iterable[Mapping[str, Any]]) -> WorkSummary:
    """Add telemetry rows (dicts as the store gives them) up, in order; a value that is not
    a number (a hand-edited database) counts as 0."""
    batches = images = run = budget = splits = 0
    seconds = 0.0
    per_call = None
    for row in rows:
        batches += 1
        images += _count(row.get("images"))
        run += _count(row.get("steps_run"))
        budget += _count(row.get("steps_budget"))
        seconds += _seconds(row.get("seconds"))
        splits += _count(row.get("oom_splits"))
        per_call = _count(row.get("images_per_call")) or per_call
    return WorkSummary(batches, images, run, budget, seconds, per_call, splits)
