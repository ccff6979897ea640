"""What one inversion call costs in memory, and how many images fit in the memory there is.

Used to size calls before a run (:func:`ronan_jax.audit.sizing.plan`, profile building): the
step is compiled for one and for ``probe`` images and the compiled program's own memory
analysis (``compiled.memory_analysis()``, on every backend, CPU included) gives the fixed
bytes and the bytes per image.

The memory there is (:func:`memory_budget`): the device's free memory where its backend
reports it (GPU, TPU: ``device.memory_stats()``), and on CPU the host's available RAM
(``MemAvailable`` of ``/proc/meminfo``), or the bytes the ``RONAN_HOST_MEMORY`` environment
variable gives (``12G``, ``512M``, a byte count). Host memory matters more than device memory:
XLA:CPU never reports running out of memory, the kernel kills the process instead, so a call
the estimate says cannot fit is not started at all (:attr:`CallFit.images` 0).

A cheap bound comes first (:func:`traced_bytes`: every array the step's traced program
creates, before XLA reuses any buffer, doubled): when it fits, nothing is compiled; small
models never pay for the estimate.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ronan_jax.engine.config import InversionConfig
from ronan_jax.engine.generator import Generator
from ronan_jax.engine.invert import _bucket
from ronan_jax.engine.program import compiled_program, step_segments
from ronan_jax.engine.robust import inversion_generator

SAFETY = 0.8
"""Share of the free memory a call may plan to use (the rest: fragmentation, the outer run
table, the reconstruction, on CPU the runtime's own buffers and other processes)."""

TRACED_MARGIN = 2
"""The traced bound is doubled: XLA may add layout copies the traced program does not show."""

HOST_MEMORY_ENV = "RONAN_HOST_MEMORY"
DEVICE_MEMORY = "device-memory"
HOST_MEMORY = "host-memory"

_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


class InsufficientMemoryError(MemoryError):
    """Not even one image's inversion call fits in the memory a run may use."""


@dataclasses.dataclass(frozen=True)
class MemoryBudget:
    """The memory a run's calls are planned in: ``limit`` bytes, ``in_use`` of them taken,
    from ``source`` (:data:`DEVICE_MEMORY` or :data:`HOST_MEMORY`); ``note`` says how the
    host figure was found."""

    limit: int
    in_use: int = 0
    source: str = DEVICE_MEMORY
    note: str = ""

    @property
    def free(self) -> int:
        """Bytes not in use."""
        return max(0, self.limit - self.in_use)

    @property
    def usable(self) -> int:
        """Bytes a call may plan to use: :data:`SAFETY` of the free bytes."""
        return int(SAFETY * self.free)

    def to_dict(self) -> dict[str, Any]:
        """What a run records about its memory."""
        return {"memory_source": self.source, "bytes_limit": self.limit, "bytes_free": self.free,
                **({"memory_note": self.note} if self.note else {})}


def parse_bytes(text: str) -> int:
    """Bytes of a size such as ``"12G"``, ``"512MiB"``, ``"1.5g"`` or ``"1073741824"``
    (binary units). Raises ValueError for anything else."""
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = value[-1:] if value[-1:] in _UNITS else ""
    number = value[: len(value) - len(unit)].strip()
    try:
        size = float(number) * _UNITS[unit]
    except ValueError:
        raise ValueError(f"not a memory size: {text!r} (e.g. 12G, 512M, or bytes)") from None
    if not math.isfinite(size) or size <= 0:
        raise ValueError(f"a memory size must be positive, got {text!r}")
    return int(size)


def meminfo_available(text: str) -> int | None:
    """``MemAvailable`` of a ``/proc/meminfo`` text, in bytes (None when absent)."""
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "MemAvailable":
            return int(value.split()[0]) * 1024  # kB
    return None


def host_available_bytes() -> int | None:
    """RAM the host can give without swapping: ``/proc/meminfo``'s MemAvailable, else
    psutil's ``available`` where psutil is installed, else None."""
    try:
        with open("/proc/meminfo", encoding="ascii", errors="replace") as fh:
            found = meminfo_available(fh.read())
        if found is not None:
            return found
    except (OSError, ValueError):
        pass
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def host_memory(environ: Mapping[str, str] | None = None) -> MemoryBudget | None:
    """The host's memory budget: ``RONAN_HOST_MEMORY`` when set, else the available RAM
    (None when neither is known)."""
    environ = os.environ if environ is None else environ
    given = environ.get(HOST_MEMORY_ENV, "").strip()
    if given:
        return MemoryBudget(parse_bytes(given), 0, HOST_MEMORY, f"{HOST_MEMORY_ENV}={given}")
    available = host_available_bytes()
    if available is None:
        return None
    return MemoryBudget(available, 0, HOST_MEMORY, "available RAM")


def device_memory(device: Any = None) -> dict[str, int] | None:
    """The device's ``memory_stats()`` (``bytes_limit``, ``bytes_in_use``, ...) where its
    backend reports them (GPU, TPU), else None (CPU)."""
    device = device or jax.local_devices()[0]
    try:
        stats = device.memory_stats()
    except Exception:  # backends without memory statistics
        return None
    if not stats or not stats.get("bytes_limit"):
        return None
    return {k: int(v) for k, v in stats.items() if isinstance(v, int | float)}


def memory_budget(device: Any = None) -> MemoryBudget | None:
    """The memory calls on ``device`` (default: the first local one) are planned in: its
    own where its backend reports it, the host's on CPU, else None."""
    device = device or jax.local_devices()[0]
    stats = device_memory(device)
    if stats is not None:
        return MemoryBudget(stats["bytes_limit"], stats.get("bytes_in_use", 0), DEVICE_MEMORY)
    if device.platform == "cpu":
        return host_memory()
    return None


def _tree_bytes(tree: Any) -> int:
    return sum(
        int(np.prod(leaf.shape)) * jnp.dtype(leaf.dtype).itemsize
        for leaf in jax.tree_util.tree_leaves(tree)
        if hasattr(leaf, "shape") and not jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)
    )


def _step_arguments(
    generator: Generator, config: InversionConfig, images: int
) -> tuple[Any, tuple[Any, ...]]:
    """The program and the abstract arguments of the first ``advance`` call of ``images``
    images, as :func:`ronan_jax.engine.invert.invert` makes it."""
    generator = inversion_generator(generator, config)
    program = compiled_program(generator, config)
    keys = jnp.stack([jax.random.key(i) for i in range(images)])
    warm = program.runs > config.restarts
    state = jax.eval_shape(
        program.initial_state, keys, generator.encoder.params if warm else None,
        jax.ShapeDtypeStruct((images, *generator.output_shape), jnp.float32) if warm else None,
        None if not warm or generator.condition is None
        else jax.eval_shape(lambda: generator.batched_condition(images)),
    )
    runs = images * program.runs  # the step sees one target (and condition) row per run
    targets = jax.ShapeDtypeStruct((runs, *generator.output_shape), jnp.float32)
    cond = None if generator.condition is None else jax.eval_shape(lambda: generator.batched_condition(runs))
    segments = step_segments(config)
    k, measure_last = segments[0], len(segments) == 1
    return program, (state, generator.params, targets, cond, k, measure_last)


def call_bytes(generator: Generator, config: InversionConfig, images: int) -> int:
    """Bytes one inversion call of ``images`` images needs besides the resident
    parameters: the compiled step's memory analysis (arguments, outputs, temporaries) plus
    the run table the call is gathered from. Compiles the step for that shape."""
    program, args = _step_arguments(generator, config, images)
    stats = program.advance.lower(*args).compile().memory_analysis()
    total = (
        stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        - stats.alias_size_in_bytes
        + stats.temp_size_in_bytes
    )
    return max(1, int(total) - _tree_bytes(generator.params) + _tree_bytes(args[0]))


def _aval_bytes(var: Any) -> int:
    aval = getattr(var, "aval", None)
    shape, dtype = getattr(aval, "shape", None), getattr(aval, "dtype", None)
    if shape is None or dtype is None or jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        return 0
    return int(np.prod(shape)) * jnp.dtype(dtype).itemsize


def _sub_jaxprs(params: Mapping[str, Any]) -> list[Any]:
    found = []
    for value in params.values():
        for item in value if isinstance(value, tuple | list) else (value,):
            inner = getattr(item, "jaxpr", item)  # a ClosedJaxpr holds its Jaxpr
            if hasattr(inner, "eqns"):
                found.append(inner)
    return found


def jaxpr_bytes(jaxpr: Any) -> int:
    """Bytes of every array a jaxpr creates, nested programs (jit, scan bodies, remat)
    included, each counted once: more than any buffer assignment of it holds at once."""
    total = 0
    for eqn in jaxpr.eqns:
        total += sum(_aval_bytes(v) for v in eqn.outvars)
        total += sum(jaxpr_bytes(inner) for inner in _sub_jaxprs(eqn.params))
    return total


def traced_bytes(generator: Generator, config: InversionConfig, images: int) -> int:
    """An upper bound of :func:`call_bytes` without compiling: the step's arguments, the
    run table and :data:`TRACED_MARGIN` times every array its traced program creates."""
    program, args = _step_arguments(generator, config, images)
    closed = program.advance.trace(*args).jaxpr
    inputs = sum(_aval_bytes(v) for v in closed.jaxpr.invars) - _tree_bytes(generator.params)
    return max(0, inputs) + _tree_bytes(args[0]) + TRACED_MARGIN * jaxpr_bytes(closed.jaxpr)


def per_image_bytes(generator: Generator, config: InversionConfig, probe: int = 8) -> tuple[int, int]:
    """(fixed bytes, bytes per image) of one call: a line through :func:`call_bytes` at one
    and ``probe`` images (two compiles), so fixed workspace is not counted per image."""
    return line_through(call_bytes(generator, config, 1), call_bytes(generator, config, probe), probe)


def line_through(one: int, many: int, probe: int) -> tuple[int, int]:
    """(fixed bytes, bytes per image) of the line through a call of one image costing
    ``one`` and one of ``probe`` images costing ``many``; the slope is at least one byte and
    the fixed part never negative (then the line lies above both points)."""
    per = max(1, math.ceil((many - one) / (probe - 1)))
    return max(0, one - per), per


def padded_images(n: int, capacity: int) -> int:
    """The images a call of ``n`` images really holds: the engine pads a chunk to the next
    power of two, at most its ``capacity`` (:func:`ronan_jax.engine.invert.invert`)."""
    return _bucket(max(1, int(n)), max(1, int(capacity)))


def _floor_pow2(n: int) -> int:
    return 1 << (max(1, int(n)).bit_length() - 1)


@dataclasses.dataclass(frozen=True)
class CallFit:
    """How many images one call may hold in ``budget``: ``images`` (0: not even one), at
    most the ``limit`` asked about. ``bound`` is the traced bound of a call of ``limit``
    images; ``one``, ``fixed`` and ``per_image`` the compiled figures, None when the bound
    alone showed that ``limit`` fits."""

    images: int
    limit: int
    budget: MemoryBudget
    bound: int
    one: int | None = None
    fixed: int | None = None
    per_image: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """What a run records: the budget and the figures the size came from."""
        out = {**self.budget.to_dict(), "bytes_usable": self.budget.usable,
               "bytes_traced_bound": self.bound}
        if self.per_image is not None:
            out.update(bytes_one_image=self.one, bytes_fixed=self.fixed,
                       bytes_per_image=self.per_image)
        return out

    def refusal(self, restarts: int) -> str:
        """Why not even one image is run (for :attr:`images` 0)."""
        where = ("available host memory" if self.budget.source == HOST_MEMORY
                 else "free device memory")
        how = f", {self.budget.note}" if self.budget.note else ""
        return (
            f"one image alone (one call of {restarts} restart{'s' * (restarts != 1)}) needs an "
            f"estimated {size_text(self.one or self.bound)}, more than the "
            f"{size_text(self.budget.usable)} a call may use ({int(SAFETY * 100)} % of the "
            f"{size_text(self.budget.free)} of {where}{how})"
        )


def gib(n: int) -> str:
    """``n`` bytes as GiB with two decimals."""
    return f"{n / 2**30:.2f} GiB"


def size_text(n: int) -> str:
    """``n`` bytes for a message: GiB with two decimals from 1 GiB up, else MiB with one."""
    return gib(n) if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def fit_call(
    generators: Sequence[Generator], config: InversionConfig, limit: int, budget: MemoryBudget
) -> CallFit:
    """How many images (at most ``limit``) one call of each of ``generators`` may hold in
    ``budget.usable`` bytes, sized for the hungriest (fixed and per-image bytes each the
    largest): ``limit`` when the traced bound fits, else the compiled line's count rounded
    down to a power of two, and 0 when one image alone does not fit."""
    limit = max(1, int(limit))
    usable = budget.usable
    bound = max(traced_bytes(g, config, limit) for g in generators)
    if bound <= usable:
        return CallFit(limit, limit, budget, bound)
    if limit == 1:
        one = max(call_bytes(g, config, 1) for g in generators)
        return CallFit(int(one <= usable), limit, budget, bound, one, 0, one)
    probe = min(8, limit)
    ones = [call_bytes(g, config, 1) for g in generators]
    lines = [line_through(o, call_bytes(g, config, probe), probe) for o, g in zip(ones, generators, strict=True)]
    one = max(ones)
    fixed = max(f for f, _ in lines)
    per = max(p for _, p in lines)
    if one > usable:
        images = 0
    else:
        images = min(limit, _floor_pow2(max(1, (usable - fixed) // per)))
    return CallFit(images, limit, budget, bound, one, fixed, per)

