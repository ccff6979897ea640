"""Memory-bounded batching: how many images one engine call may take, found automatically.

A :class:`BatchSizer` holds the number of images per engine call for one run. It starts from

1. the engine's own size (``InversionConfig.max_batch`` // restarts, per device), and
2. the number of images that fit in the memory there is (:func:`ronan_jax.engine.memory.fit_call`):
   the free device memory where the backend reports it (GPU/TPU), the available host RAM on
   CPU (or ``RONAN_HOST_MEMORY``); the inversion step is compiled for one and for up to eight
   images and its memory analysis gives the fixed bytes and the bytes per image, unless a
   traced bound already shows the engine's size fits; the size is rounded down to a power of
   two, the shapes the engine pads to;

and :func:`run_fitting` keeps it honest: a call that fails with an out-of-memory error
(XLA's ``RESOURCE_EXHAUSTED``) is split in halves and retried, down to one image, and the
smaller size is kept for the rest of the run. Only an image that does not fit alone becomes
an error (:data:`OUT_OF_MEMORY`); the other images go on. On CPU no call ever fails that way
(the kernel kills the process instead), so an image the estimate says cannot fit alone in
host memory is not run: every image becomes an :data:`OUT_OF_MEMORY` error at once
(``BatchSizer.cap`` 0).

Splitting never changes results beyond float rounding: an image's random key comes from the
seed and its content (:func:`ronan_jax.engine.invert.image_prng_key`) and its runs are independent of
the others in a call, and ``max_batch`` is a speed-only setting (not in
``InversionConfig.result_settings``).
"""

from __future__ import annotations

import dataclasses
import gc
import math
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import jax

from ronan_jax.attribution.verdicts import INTERNAL, OUT_OF_MEMORY
from ronan_jax.audit.config import CPU_BATCH_SIZE
from ronan_jax.engine.config import InversionConfig
from ronan_jax.engine.generator import Generator
from ronan_jax.engine.memory import (
    HOST_MEMORY,
    SAFETY,
    MemoryBudget,
    fit_call,
    memory_budget,
    padded_images,
)
from ronan_jax.engine.program import images_per_call

T = TypeVar("T")

__all__ = ["SAFETY", "BatchSizer", "Piece", "default_batch_size", "is_out_of_memory", "plan",
           "run_fitting"]

_OOM_MARKERS = ("RESOURCE_EXHAUSTED", "out of memory", "OOM when allocating")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says the device (or host) ran out of memory: XLA's
    ``JaxRuntimeError`` with ``RESOURCE_EXHAUSTED`` / "Out of memory", or ``MemoryError``."""
    if isinstance(exc, MemoryError):
        return True
    if not isinstance(exc, RuntimeError):
        return False
    text = str(exc).lower()
    return any(marker.lower() in text for marker in _OOM_MARKERS)


def default_batch_size(config: InversionConfig | None = None, backend: str | None = None) -> int:
    """Images per batch (and per commit) when the user does not say: small on CPU (rows are
    committed often and the first results come quickly); on accelerators as many images as
    one device call takes, times the devices the engine splits a batch over, so each device
    gets a full call."""
    if backend is None:
        backend = jax.default_backend()
    if backend == "cpu":
        return CPU_BATCH_SIZE
    config = config or InversionConfig()
    try:
        local = jax.local_device_count(backend)
    except RuntimeError:  # that backend is not present here (a planning question)
        local = 1
    devices = min(config.devices, local) if config.devices else local
    return images_per_call(config, devices, backend)


@dataclasses.dataclass
class BatchSizer:
    """The images per engine call of one run, learnt as it goes (one per run, mutable).

    ``cap`` None means "the engine's own size" (nothing learnt), 0 that not even one image
    fits (``refusal`` says why; no call is made); ``source`` says where the size came from:
    ``"engine"`` (config or backend default), ``"device-memory"`` / ``"host-memory"``
    (estimated from the device's or the host's memory) or ``"out-of-memory"`` (halved after
    an out-of-memory error). ``calls`` counts engine calls tried, ``oom_splits`` the calls
    split after running out of memory.
    """

    engine_images: int
    restarts: int
    devices: int = 1
    cap: int | None = None
    source: str = "engine"
    calls: int = 0
    oom_splits: int = 0
    notes: dict[str, Any] = dataclasses.field(default_factory=dict)
    refusal: str = ""

    @property
    def images_per_call(self) -> int:
        """The most images one call takes now."""
        return self.engine_images if self.cap is None else min(self.cap, self.engine_images)

    def config_for(self, config: InversionConfig) -> InversionConfig:
        """``config`` with ``max_batch`` lowered so one engine call holds at most
        :attr:`images_per_call` images (unchanged while nothing was learnt)."""
        if not self.cap or self.cap >= self.engine_images:
            return config
        per_device = max(1, math.ceil(self.cap / self.devices))
        return config.replace(max_batch=per_device * config.restarts)

    def shrink(self, images: int) -> None:
        """Take at most ``images`` per call from now on (after an out-of-memory error)."""
        images = max(1, images)
        if self.cap != 0 and images < self.images_per_call:
            self.cap = images
            self.source = OUT_OF_MEMORY

    def to_dict(self) -> dict[str, Any]:
        """What a run records: the size used, where it came from, the splits."""
        return {
            "images_per_call": self.images_per_call,
            "source": self.source,
            "engine_images_per_call": self.engine_images,
            "devices": self.devices,
            "oom_splits": self.oom_splits,
            **self.notes,
            **({"refusal": self.refusal} if self.refusal else {}),
        }


@dataclasses.dataclass(frozen=True)
class Piece(Generic[T]):
    """The outcome of images ``lo:hi``: ``value`` of the call, or ``error`` (message) and
    ``error_kind`` (:data:`OUT_OF_MEMORY` or :data:`INTERNAL`)."""

    lo: int
    hi: int
    value: T | None = None
    error: str | None = None
    error_kind: str | None = None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def run_fitting(
    fn: Callable[[int, int, InversionConfig], T],
    n: int,
    config: InversionConfig,
    sizer: BatchSizer,
    fatal: tuple[type[BaseException], ...] = (),
) -> list[Piece[T]]:
    """Call ``fn(lo, hi, config)`` over images ``0:n`` in calls that fit in memory.

    Calls hold at most ``sizer.images_per_call`` images (all ``n`` while nothing is learnt,
    the engine chunks them itself) and get ``sizer.config_for(config)``. A call that runs
    out of memory is split in halves of what the device was given and retried; the sizer
    keeps the smaller size. An image that alone runs out of memory becomes an
    :data:`OUT_OF_MEMORY` piece; a call failing otherwise an :data:`INTERNAL` piece, except
    exceptions of the ``fatal`` types, which propagate. Pieces come back in image order.
    With ``sizer.cap`` 0 (not even one image fits) nothing is called: all ``n`` images are
    one :data:`OUT_OF_MEMORY` piece with ``sizer.refusal``.
    """
    if sizer.cap == 0:
        return [Piece(0, n, error=sizer.refusal, error_kind=OUT_OF_MEMORY)] if n else []
    out: list[Piece[T]] = []
    pending: deque[tuple[int, int]] = deque([(0, n)] if n else [])
    while pending:
        lo, hi = pending.popleft()
        if sizer.cap is not None and hi - lo > sizer.images_per_call:
            step = sizer.images_per_call
            pending.extendleft(reversed([(a, min(a + step, hi)) for a in range(lo, hi, step)]))
            continue
        sizer.calls += 1
        try:
            value = fn(lo, hi, sizer.config_for(config))
        except fatal:
            raise
        except Exception as exc:
            if not is_out_of_memory(exc):
                out.append(Piece(lo, hi, error=f"{type(exc).__name__}: {exc}", error_kind=INTERNAL))
                continue
            message = _first_line(exc)
            del exc
            gc.collect()  # drop the failed call's buffers before retrying
            tried = min(hi - lo, sizer.images_per_call)
            if tried <= 1:
                out.append(Piece(lo, hi, error=(
                    f"this image alone (one call of {config.restarts} restarts) does not fit "
                    f"in device memory: {message}"), error_kind=OUT_OF_MEMORY))
                sizer.shrink(1)
                continue
            sizer.oom_splits += 1
            sizer.shrink(math.ceil(tried / 2))
            pending.appendleft((lo, hi))  # re-split at the new size
            continue
        out.append(Piece(lo, hi, value=value))
    return out


# -- sizing from the memory there is ----------------------------------------------------


def plan(
    model: Generator,
    reference: Generator | None,
    config: InversionConfig,
    memory: Callable[[], MemoryBudget | None] = memory_budget,
    most: int | None = None,
) -> BatchSizer:
    """The sizer a run starts with: the engine's size, lowered to what the free memory
    holds (the device's, or the host's on CPU; the estimate failing leaves the engine's).
    ``most``: no call holds more images (the audit's batch size). An image that alone does
    not fit in host memory gives ``cap`` 0: nothing is run (:func:`run_fitting`)."""
    from ronan_jax.engine.mesh import device_count

    try:
        devices = device_count(config.devices)
    except ValueError:
        devices = 1
    sizer = BatchSizer(images_per_call(config, devices), config.restarts, devices)
    budget = memory()
    if budget is None:
        return sizer
    gens = [model] if reference is None else [model, reference.for_shape(tuple(model.output_shape))]
    per_device = max(1, sizer.engine_images // devices)
    if most:
        per_device = padded_images(math.ceil(most / devices), per_device)
    try:
        fit = fit_call(gens, config, per_device, budget)
    except Exception as exc:  # an estimate must never stop a run; halving still guards it
        sizer.notes.update(budget.to_dict(), memory_estimate_error=_first_line(exc))
        return sizer
    sizer.notes.update(fit.to_dict())
    if fit.images == 0 and budget.source == HOST_MEMORY:
        sizer.cap, sizer.source, sizer.refusal = 0, HOST_MEMORY, fit.refusal(config.restarts)
    elif max(1, fit.images) * devices < sizer.engine_images and fit.images < fit.limit:
        sizer.cap = max(1, fit.images) * devices
        sizer.source = budget.source
    return sizer
