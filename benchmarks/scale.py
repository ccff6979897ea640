"""Speed at the paper's sizes (issue 17): ronan-jax against the per-image PyTorch loop on
StyleGAN2-ADA CIFAR-10 (the paper's 55.16 s/image), the consistency model at ImageNet-64
(152.83 s/image) and the Stable Diffusion VAE decoder at 512x512 (the LatentTracer setting).

    python -m benchmarks.scale [--quick | --gpu] [--cases stylegan2-cifar10,cm-imagenet64,sd-vae@512]
        [--precisions float32,bfloat16] [--steps S] [--restarts R] [--batches 1,8,max] [--reps N]
        [--verdict-images N] [--verdict-steps S] [--profile-n N] [--out scale.json] [--md scale.md]

Modes (each a table of cases, see :data:`MODES`; the flags override every selected case):

- default, the CPU table: StyleGAN2 (2 timed steps x 8 restarts, float32 and bfloat16), the
  CM at 64x64 (1 step x 1 restart, float32), the SD VAE at 256x256 (1 step x 1 restart,
  float32 and bfloat16) and at 512x512 (1 step x 1 restart, float32). Hours on one busy CPU
  core (XLA:CPU compiles the CM's step for minutes; a 512x512 VAE step takes minutes).
- ``--quick``: StyleGAN2 (1 step x 8 restarts) and the SD VAE at 128x128 (1 step x 1
  restart), float32. About 6 minutes on one busy CPU core.
- ``--gpu``: every model at the paper's size, 8 restarts, batches up to the largest that fits,
  float32 and bfloat16, and for StyleGAN2 the bfloat16 verdicts checked against float32. Run
  it with ``JAX_DEFAULT_MATMUL_PRECISION=highest`` (the engine's float32 programs use
  "highest" anyway; the variable makes every other float32 matmul full float32 too).

What is measured, side by side in ONE process, per model (``case``):

- The pair: the PyTorch module and the Flax generator converted from its random weights
  (:mod:`benchmarks.scale_models`); their outputs must agree to 1e-4 (images in [0, 1], both
  in full float32) before anything is timed.
- Timing: ronan-jax's :func:`~ronan_jax.engine.invert.invert` on B images per call and the
  authors' loop (:class:`benchmarks.torch_baseline.PerImageLoop`: one image at a time, its
  restarts one batch, ``torch.optim.Adam``; bfloat16 under ``torch.autocast``), each at S
  steps x R restarts per image, interleaved rounds, best taken (t). Seconds per image at the
  paper's 1500 steps x 8 restarts = (a + 1500 (t - a) / S) / B x 8 / R, where a is the work a
  call does once, not per step (the final evaluation of the restarts' inputs, and for
  ronan-jax the rendering of each image's winner), timed apart after the rounds at the same
  shapes; the JSON keeps the naive t x 1500 / S / B x 8 / R too (an upper bound). Compile time =
  ronan-jax's cold first call minus its steady time (PyTorch is warmed up by a 1-step
  call of the same shapes).
- FLOPs: XLA's cost analysis of the forward (lowered, per sample) and of one compiled
  optimisation step (per run: forward, input-gradient backward, Adam). The FLOP floor of a
  row = step FLOPs x 8 x 1500 / the machine's peak, the peak being the best rate of a square
  matmul (2048 on CPU, 8192 on GPU) in JAX (float32 at precision "highest") and PyTorch, per
  dtype, measured before each case and after every timing round; "of floor" = floor /
  measured time. PyTorch rows are set against the JAX program's FLOPs.
- Memory: the compiled step's memory analysis at 1 and 2 images x 8 restarts (bytes per
  image and fixed bytes besides the parameters) gives the largest batch that fits the
  device's memory limit (GPU) or the memory available when the case starts (CPU,
  ``MemAvailable``); measured: the process's RSS high-water mark during a timed call and its
  growth during it (CPU), the device's peak (GPU; JAX reports the process's peak so far).
  On CPU a variant whose estimated need exceeds 90 % of what is available is not run (the
  kernel would kill the process): the table says so.
- bfloat16: which convolutions and dots the step asks for in bfloat16 (the lowered HLO) and
  which run in bfloat16 (the compiled HLO), by result type.
- Verdicts (``--verdict-images N``): an uncalibrated float32 profile of ``--profile-n``
  generated images, then N generated + N photo crops judged in float32 and bfloat16 at
  ``--verdict-steps``; agreement, AUC, the largest relative loss change.

JSON (rewritten after every case and timing round, ``"complete": false`` until the end) and
a Markdown table go to ``benchmarks/results/scale-MODE.{json,md}`` unless ``--out``/``--md``.
The last lines print each model's speed-up.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import platform
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import scale_models as sm
from benchmarks.speed import Variant, run_interleaved, write_json
from benchmarks.torch_baseline import torch_device
from ronan_jax.attribution.profile import quantize_8bit
from ronan_jax.engine.config import InversionConfig
from ronan_jax.engine.invert import invert
from ronan_jax.engine.program import compiled_program

PAPER_STEPS = 1500
RESTARTS = 8
LR = 0.1
ATOL = 1e-4
MEMORY_MARGIN = 0.9  # a CPU variant needing more than this share of the free memory is not run
ONCE_REPS = 2  # timings of a call's once-per-call work, best taken (its kernels are warm)
PRECISIONS = ("float32", "bfloat16")
PAPER_S_PER_IMAGE = {"stylegan2-cifar10": 55.16, "cm-imagenet64": 152.83}
RESULTS = Path(__file__).resolve().parent / "results"


@dataclasses.dataclass(frozen=True)
class Case:
    """One model at one size and how it is timed: ``steps`` x ``restarts`` per image, B
    images per ronan-jax call for B in ``batches`` ("max": the largest that fits)."""

    model: str
    size: int
    steps: int
    restarts: int
    batches: tuple[int | str, ...] = (1,)
    precisions: tuple[str, ...] = PRECISIONS
    reps: int = 2
    check_images: int = 1
    verdict_images: int = 0
    verdict_steps: int = 100
    profile_n: int = 20
    max_batch_cap: int = 1024  # "max" is at most this many images

    @property
    def label(self) -> str:
        return f"{self.model}@{self.size}"


F32 = ("float32",)
MODES: dict[str, tuple[Case, ...]] = {
    "quick": (
        Case("stylegan2-cifar10", 32, steps=1, restarts=8, precisions=F32, reps=1, check_images=2),
        Case("sd-vae", 128, steps=1, restarts=1, precisions=F32, reps=1),
    ),
    "full": (
        Case("stylegan2-cifar10", 32, steps=2, restarts=8, reps=2, check_images=2),
        Case("cm-imagenet64", 64, steps=1, restarts=1, precisions=F32, reps=1),
        Case("sd-vae", 256, steps=1, restarts=1, reps=1),
        Case("sd-vae", 512, steps=1, restarts=1, precisions=F32, reps=1),
    ),
    "gpu": (
        Case("stylegan2-cifar10", 32, steps=20, restarts=8, batches=(1, 16, 128, "max"), reps=2,
             check_images=4, verdict_images=20, verdict_steps=100, profile_n=20, max_batch_cap=256),
        Case("cm-imagenet64", 64, steps=3, restarts=8, batches=(1, 8, "max"), reps=2),
        Case("sd-vae", 512, steps=2, restarts=8, batches=(1, "max"), reps=2),
    ),
}


@dataclasses.dataclass(frozen=True)
class Settings:
    """A run: its mode, the cases it times and where it writes."""

    mode: str
    cases: tuple[Case, ...]
    out: Path
    md: Path
    matmul: int  # side of the peak-rate matmul; 0: 2048 on CPU, 8192 on accelerators
    tiny: bool = False


def _ints_or_max(text: str) -> tuple[int | str, ...]:
    out: list[int | str] = []
    for v in (v.strip() for v in text.split(",") if v.strip()):
        if v == "max":
            out.append(v)
        elif v.isdigit() and int(v) > 0:
            out.append(int(v))
        else:
            raise argparse.ArgumentTypeError(f"expected positive integers or 'max', got {text!r}")
    return tuple(out)


def _precisions(text: str) -> tuple[str, ...]:
    values = tuple(v.strip() for v in text.split(",") if v.strip())
    if not values or set(values) - set(PRECISIONS):
        raise argparse.ArgumentTypeError(f"expected some of {','.join(PRECISIONS)}, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="a few minutes on CPU: small sizes, 1 step")
    mode.add_argument("--gpu", action="store_true", help="the paper's sizes at 8 restarts, batches up to the largest that fits")
    ap.add_argument("--cases", default=None,
                    help="comma-separated MODEL[@SIZE] of the mode's table (or other sizes of its models); "
                         f"models: {', '.join(sm.MODELS)}")
    ap.add_argument("--precisions", type=_precisions, default=None, help="float32,bfloat16 (default: the case's)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps S, extrapolated to 1500")
    ap.add_argument("--restarts", type=int, default=None, help="timed restarts R per image, extrapolated to 8")
    ap.add_argument("--batches", type=_ints_or_max, default=None, help="images per ronan-jax call, e.g. 1,8,max")
    ap.add_argument("--reps", type=int, default=None, help="interleaved timing rounds, best taken")
    ap.add_argument("--verdict-images", type=int, default=None, help="belonging and non-belonging images each (0: off)")
    ap.add_argument("--verdict-steps", type=int, default=None)
    ap.add_argument("--profile-n", type=int, default=None)
    ap.add_argument("--matmul", type=int, default=None, help="side of the peak-rate matmul (default 2048 CPU, 8192 GPU)")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/scale-MODE.json)")
    ap.add_argument("--md", default=None, help="Markdown path (default: the JSON path with .md)")
    ap.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # CI: tiny models of each family
    return ap


def _select(table: Sequence[Case], spec: str | None) -> tuple[Case, ...]:
    if spec is None:
        return tuple(table)
    out = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        model, _, size = item.partition("@")
        same = [c for c in table if c.model == model]
        if model not in sm.MODELS or not same:
            raise SystemExit(f"unknown case {item!r}; this mode's: {', '.join(c.label for c in table)}")
        exact = [c for c in same if not size or c.size == int(size)]
        out.append(exact[0] if exact else dataclasses.replace(same[0], size=int(size)))
    return tuple(out)


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    """The command line resolved into :class:`Settings` (the mode's cases, overridden)."""
    args = build_parser().parse_args(argv)
    mode = "quick" if args.quick else "gpu" if args.gpu else "full"
    overrides = {k: v for k, v in dict(
        precisions=args.precisions, steps=args.steps, restarts=args.restarts, batches=args.batches,
        reps=args.reps, verdict_images=args.verdict_images, verdict_steps=args.verdict_steps,
        profile_n=args.profile_n).items() if v is not None}
    if any(overrides.get(k, 1) < 1 for k in ("steps", "restarts", "reps", "verdict_steps")) or any(
            overrides.get(k, 0) < 0 for k in ("verdict_images", "profile_n")):
        raise SystemExit("--steps, --restarts, --reps and --verdict-steps must be >= 1, the others >= 0")
    cases = tuple(dataclasses.replace(c, **overrides) for c in _select(MODES[mode], args.cases))
    out = Path(args.out) if args.out else RESULTS / f"scale-{mode}{'-tiny' if args.tiny else ''}.json"
    md = Path(args.md) if args.md else out.with_suffix(".md")
    return Settings(mode, cases, out, md, args.matmul or (256 if args.tiny else 0), tiny=args.tiny)


# ----------------------------------------------------------------------------- the machine


def cpu_threads() -> int:
    """CPUs this process may run on (``taskset`` respected)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def mem_available() -> int | None:
    """``MemAvailable`` of /proc/meminfo in bytes (None where there is none)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def device_limit() -> int | None:
    """The default JAX device's memory limit (GPU/TPU), None on CPU."""
    try:
        stats = jax.local_devices()[0].memory_stats() or {}
    except Exception:
        return None
    return int(stats["bytes_limit"]) if stats.get("bytes_limit") else None


def capacity() -> tuple[int | None, str]:
    """(bytes a call may use, where the figure comes from)."""
    limit = device_limit()
    if limit:
        return limit, "device bytes_limit"
    return mem_available(), "MemAvailable (CPU)"


def machine_info() -> dict[str, Any]:
    import torch

    dev = jax.devices()[0]
    tdev = torch_device()
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    return {
        "jax": jax.__version__, "backend": jax.default_backend(), "device_kind": dev.device_kind,
        "device_count": jax.device_count(), "cpu_count": os.cpu_count(), "cpu_affinity": cpu_threads(),
        "platform": platform.platform(), "python": platform.python_version(), "loadavg_start": load,
        "mem_available_start": mem_available(), "device_limit": device_limit(),
        "jax_default_matmul_precision": os.environ.get("JAX_DEFAULT_MATMUL_PRECISION"),
        "torch": torch.__version__, "torch_device": str(tdev),
        "torch_device_name": torch.cuda.get_device_name() if tdev.type == "cuda" else platform.processor() or "cpu",
        "torch_threads": torch.get_num_threads(),
        "torch_cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32) if tdev.type == "cuda" else None,
        "torch_matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32) if tdev.type == "cuda" else None,
    }


def _best_of(fn: Callable[[], Any], reps: int, warm: bool = True) -> float:
    """Best wall seconds of ``reps`` calls of ``fn``, after one untimed call if ``warm``."""
    if warm:
        fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def jax_matmul_rate(n: int, precision: str, reps: int = 3) -> float:
    """FLOP/s of an ``n x n`` matmul in JAX (float32 at precision "highest")."""
    dtype = jnp.bfloat16 if precision == "bfloat16" else jnp.float32
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    prec = "highest" if precision == "float32" else None
    dot = jax.jit(functools.partial(jnp.dot, precision=prec))
    return 2.0 * n**3 / _best_of(lambda: dot(a, b).block_until_ready(), reps)


def torch_matmul_rate(n: int, precision: str, reps: int = 3) -> float:
    """FLOP/s of an ``n x n`` matmul in PyTorch on its benchmark device."""
    import torch

    from benchmarks.torch_baseline import synchronize

    dev = torch_device()
    dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)

    def run() -> None:
        torch.mm(a, b)
        synchronize(dev)

    return 2.0 * n**3 / _best_of(run, reps)


@dataclasses.dataclass
class Peaks:
    """The machine's peak FLOP/s per dtype: best square-matmul rate seen in this run."""

    n: int
    precisions: tuple[str, ...] = PRECISIONS
    samples: dict[str, list[dict[str, float]]] = dataclasses.field(default_factory=dict)

    def probe(self) -> None:
        """One measurement per dtype, JAX and PyTorch."""
        for p in self.precisions:
            self.samples.setdefault(p, []).append(
                {"jax": jax_matmul_rate(self.n, p), "torch": torch_matmul_rate(self.n, p)})

    def best(self, precision: str) -> float:
        return max(max(s.values()) for s in self.samples[precision])

    def as_dict(self) -> dict[str, Any]:
        return {"matmul_side": self.n, "samples": self.samples,
                "best_flops_per_s": {p: self.best(p) for p in self.samples}}


# ----------------------------------------------------------------------------- the engine's step


def _tree_bytes(tree: Any) -> int:
    return sum(int(np.prod(leaf.shape)) * jnp.dtype(leaf.dtype).itemsize
               for leaf in jax.tree_util.tree_leaves(tree)
               if hasattr(leaf, "shape") and not jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key))


_OP = re.compile(r"=\s*(\w+)\[[^\]]*\](?:\{[^}]*\})?\s+(convolution|dot)\(")


def op_dtypes(hlo_text: str) -> dict[str, dict[str, int]]:
    """Convolutions and dots of an HLO module's text, counted by result element type."""
    out: dict[str, dict[str, int]] = {}
    for dtype, op in _OP.findall(hlo_text):
        out.setdefault(op, {}).setdefault(dtype, 0)
        out[op][dtype] += 1
    return out


def step_probe(pair: sm.ModelPair, precision: str, images: int) -> dict[str, Any]:
    """Compile one optimisation step of ``images`` images x 8 restarts (the engine's own
    ``advance``) and read its memory analysis, FLOPs and op dtypes."""
    gen = pair.generator
    program = compiled_program(gen, InversionConfig(restarts=RESTARTS, lr=LR, precision=precision))
    keys = jnp.stack([jax.random.key(i) for i in range(images)])
    state = jax.eval_shape(program.initial_state, keys, None, None, None)
    runs = images * program.runs
    targets = jax.ShapeDtypeStruct((runs, *gen.output_shape), jnp.float32)
    cond = pair.engine_conditions(np.zeros(runs, np.int32))
    cond = jax.eval_shape(lambda: gen.batched_condition(runs)) if cond is None else jax.eval_shape(lambda: cond)
    lowered = program.advance.lower(state, gen.params, targets, cond, 1, False)
    t0 = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = (cost[0] if cost else {}) if isinstance(cost, list | tuple) else cost or {}
    total = mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes + mem.temp_size_in_bytes
    return {
        "images": images, "runs": runs, "compile_s": compile_s,
        "step_flops": float(cost.get("flops", float("nan"))),
        "temp_bytes": int(mem.temp_size_in_bytes), "argument_bytes": int(mem.argument_size_in_bytes),
        "call_bytes": int(total) - _tree_bytes(gen.params) + _tree_bytes(state),
        "ops_lowered": op_dtypes(lowered.as_text(dialect="hlo")), "ops_compiled": op_dtypes(compiled.as_text()),
    }


def memory_line(one: dict[str, Any], two: dict[str, Any], params: int, cap: int | None) -> dict[str, Any]:
    """Bytes per image and fixed bytes from the probes at 1 and 2 images, and the largest
    batch whose call fits ``cap`` bytes besides the resident parameters (0: not even one)."""
    per = max(1, two["call_bytes"] - one["call_bytes"])
    fixed = max(0, one["call_bytes"] - per)
    largest = None if cap is None else max(0, (cap - params - fixed) // per)
    return {"bytes_per_image": per, "fixed_bytes": fixed, "param_bytes": params, "capacity_bytes": cap,
            "largest_batch": largest}


def forward_flops(pair: sm.ModelPair) -> float:
    """XLA's FLOP count of one sample's forward (lowered HLO cost analysis)."""
    gen = pair.generator
    z = jnp.zeros((1, *gen.input_shape), jnp.float32)
    cond = pair.engine_conditions(np.zeros(1, np.int32))
    cond = gen.batched_condition(1) if cond is None else cond
    cost = jax.jit(lambda p, x, c: gen.apply_fn(p, x, c)).lower(gen.params, z, cond).cost_analysis()
    cost = (cost[0] if cost else {}) if isinstance(cost, list | tuple) else cost or {}
    return float(cost.get("flops", float("nan")))


# ----------------------------------------------------------------------------- timing


@dataclasses.dataclass
class Timed(Variant):
    """A timed variant and the work its call does once, not per step (``once``: the final
    evaluation of the restarts' inputs and, for ronan-jax, the rendering of the winners),
    timed separately after the rounds (``once_s``)."""

    once: Callable[[], float] | None = None  # returns the seconds of that work
    once_s: float | None = None

    def time_once(self) -> None:
        if self.once is not None and self.samples:
            self.once_s = self.once()


def paper_seconds(v: Variant, case: Case, naive: bool = False) -> float:
    """Seconds per image at 1500 steps x 8 restarts from a timed call of S steps: the call's
    once-per-call work ``a`` (``Timed.once_s``) plus 1500 times its per-step time
    ``(t - a) / S``, x 8/R; ``naive`` (or ``a`` unknown or not below ``t``): ``t`` x 1500/S
    x 8/R, an upper bound."""
    t, a = v.seconds, getattr(v, "once_s", None)
    if naive or a is None or not 0 <= a < t:
        a = 0.0
    per_call = a + PAPER_STEPS * (t - a) / case.steps
    return per_call / v.n_images * (RESTARTS / case.restarts)


def needed_bytes(mem: dict[str, Any], batch: int, restarts: int) -> int:
    """Estimated bytes of a call of ``batch`` images x ``restarts`` runs (from the 8-run line)."""
    return int(mem["fixed_bytes"] + mem["bytes_per_image"] * batch * restarts / RESTARTS)


def torch_variant(pair: sm.ModelPair, images: np.ndarray, classes: np.ndarray, case: Case,
                  precision: str) -> Timed:
    """The per-image PyTorch loop on one image (bfloat16: under autocast)."""
    import torch

    from benchmarks.torch_baseline import PerImageLoop

    loop = PerImageLoop(pair.torch_net, pair.torch_input_shape, case.restarts, LR,
                        torch.bfloat16 if precision == "bfloat16" else None)
    cond = pair.torch_condition(classes[0])

    def run(steps: int) -> None:
        loop.invert(images[:1], [cond], steps)
        if loop.device.type == "cuda":  # hand the cached blocks back: JAX shares the device
            torch.cuda.empty_cache()

    return Timed(f"torch per-image {_short(precision)}", "torch", functools.partial(run, case.steps), 1,
                 case.steps, warmup=functools.partial(run, 1), warmup_steps=1, precision=precision,
                 once=functools.partial(_best_of, functools.partial(loop.measure_once, images[0], cond),
                                        ONCE_REPS, warm=False))


def jax_variant(pair: sm.ModelPair, images: np.ndarray, classes: np.ndarray, case: Case,
                precision: str, batch: int) -> Timed:
    """ronan-jax's :func:`invert` on ``batch`` images per call (warm-up: the same call)."""
    cfg = InversionConfig(steps=case.steps, restarts=case.restarts, lr=LR, precision=precision,
                          max_batch=batch * case.restarts)
    conds = pair.engine_conditions(classes[:batch])
    return Timed(f"ronan-jax {_short(precision)} B={batch}", "jax",
                 functools.partial(invert, pair.generator, images[:batch], cfg, conds), batch, case.steps,
                 batch=batch, precision=precision, once=jax_once(pair, cfg, classes[:batch]))


def jax_once(pair: sm.ModelPair, cfg: InversionConfig, classes: np.ndarray) -> Callable[[], None]:
    """What :func:`invert` computes once per call besides its steps: the forward of every
    run's final input and the rendering of each image's winner (the program's own
    ``reconstruct``, at the run and image counts of the call)."""
    gen, program = pair.generator, compiled_program(pair.generator, cfg)
    b, r = len(classes), cfg.restarts

    def cond(ids: np.ndarray) -> Any:
        given = pair.engine_conditions(ids)
        return gen.batched_condition(len(ids)) if given is None else given

    runs = (jnp.zeros((b * r, *gen.input_shape), jnp.float32), cond(np.repeat(classes, r)))
    winners = (jnp.zeros((b, *gen.input_shape), jnp.float32), cond(classes))

    def seconds(z: jax.Array, c: Any, compiled: bool) -> float:
        return _best_of(lambda: np.asarray(program.reconstruct(gen.params, z, c)), ONCE_REPS, warm=not compiled)

    def run() -> float:
        # The timed call rendered its winners, so that shape is compiled. With one restart
        # the runs' evaluation has the same shape: it costs the same again.
        rendering = seconds(*winners, compiled=True)
        evaluation = rendering if r == 1 else seconds(*runs, compiled=False)
        return rendering + evaluation

    return run


def _short(precision: str) -> str:
    return "f32" if precision == "float32" else "bf16"


def resolve_batches(case: Case, largest: int | None) -> list[int]:
    """The case's batches with "max" replaced by the largest that fits (capped), deduplicated."""
    out: list[int] = []
    for b in case.batches:
        value = min(largest or 1, case.max_batch_cap) if b == "max" else int(b)
        if value >= 1 and value not in out:
            out.append(value)
    return out


def timing_row(v: Variant, case: Case, label: str, base: Variant | None, flops: float, peak: float) -> dict[str, Any]:
    """One row of the timing table (JSON-ready)."""
    s = paper_seconds(v, case)
    floor = flops * RESTARTS * PAPER_STEPS / peak
    return {
        **v.as_dict(), "case": label, "timed_steps": case.steps, "timed_restarts": case.restarts,
        "once_per_call_s": getattr(v, "once_s", None), "s_per_image_paper": s,
        "s_per_image_paper_naive": paper_seconds(v, case, naive=True), "images_per_s_paper": 1.0 / s,
        "vs_torch": None if base is None or not base.samples else paper_seconds(base, case) / s,
        "compile_s": v.compile_s if v.kind == "jax" else None,
        "floor_s_per_image": floor, "fraction_of_floor": floor / s, "peak_flops_per_s": peak,
    }


# ----------------------------------------------------------------------------- verdicts


def verdict_check(pair: sm.ModelPair, case: Case, batch: int, log: Callable[[str], None]) -> dict[str, Any]:
    """bfloat16 verdicts against float32 on N generated + N photo crops (uncalibrated
    float32 profile of ``case.profile_n`` generated images, ``case.verdict_steps`` steps)."""
    from benchmarks.speed import auc_lower_is_positive, natural_crops, relabelled
    from ronan_jax.attribution.attribute import attribute
    from ronan_jax.attribution.build import build_profile

    n, gen = case.verdict_images, pair.generator
    cfg = InversionConfig(steps=case.verdict_steps, restarts=RESTARTS, lr=LR, max_batch=batch * RESTARTS)
    t0 = time.perf_counter()
    profile = build_profile(gen, None, n=case.profile_n, seed=0, config=cfg)
    z = np.asarray(gen.sample_inputs(jax.random.key(101), n), np.float32)
    classes = pair.classes(2 * n, seed=101)
    belonging = quantize_8bit(pair.jax_images(z, classes[0::2]))
    other = natural_crops(n, pair.size, gen.output_shape[2], seed=3)
    images = np.empty((2 * n, *gen.output_shape), np.float32)
    images[0::2], images[1::2] = belonging, other
    labels = np.arange(2 * n) % 2 == 0
    out: dict[str, Any] = {"n_belonging": n, "n_nonbelonging": n, "steps": case.verdict_steps,
                           "profile": {"n": profile.n, "mu": profile.mu, "sigma": profile.sigma,
                                       "threshold": profile.threshold, "seconds": time.perf_counter() - t0}}
    runs = {}
    for precision in PRECISIONS:
        pcfg = cfg.replace(precision=precision)
        t0 = time.perf_counter()
        try:
            att = attribute(images, gen, None, relabelled(profile, pcfg), pcfg,
                            classes=classes if pair.num_classes else None)
        except Exception as exc:  # bfloat16 the model cannot run: recorded, not judged
            out[precision] = {"error": _error(exc)}
            log(f"  verdicts in {precision}: {out[precision]['error']}")
            continue
        runs[precision] = att
        out[precision] = {"belonging": int(np.sum(att.verdict == "belonging")),
                          "accuracy": float(np.mean((att.verdict == "belonging") == labels)),
                          "auc": auc_lower_is_positive(att.calibrated_loss, labels),
                          "seconds": time.perf_counter() - t0}
    if len(runs) < 2:
        return out
    a, b = runs["float32"], runs["bfloat16"]
    out["agree"] = int(np.sum(a.verdict == b.verdict))
    out["max_rel_loss_change"] = float(np.max(np.abs(b.loss - a.loss) / np.maximum(np.abs(a.loss), 1e-12)))
    log(f"  verdicts at {case.verdict_steps} steps: bf16 agrees with f32 on {out['agree']}/{2 * n}; "
        f"AUC f32 {out['float32']['auc']:.4f}, bf16 {out['bfloat16']['auc']:.4f}; "
        f"largest relative loss change {out['max_rel_loss_change']:.2e}")
    return out


# ----------------------------------------------------------------------------- one case


def _gib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**30:.2f} GiB"


def check_pair(pair: sm.ModelPair, n: int, log: Callable[[str], None]) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Both frameworks' outputs on the same inputs, in full float32 (no TF32): the
    agreement, and the Flax images (8-bit) with their classes as the images to invert."""
    import torch

    cudnn = torch.backends.cudnn.allow_tf32
    matmul = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    t0 = time.perf_counter()
    try:
        with jax.default_matmul_precision("highest"):
            diff, images, classes = sm.max_forward_diff(pair, n)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn, matmul
    info = {"images": n, "max_abs_diff": diff, "seconds": time.perf_counter() - t0, "atol": ATOL}
    log(f"  forward check: max |flax - torch| = {diff:.2e} over {n} images ({info['seconds']:.0f} s)")
    if not diff < ATOL:
        raise SystemExit(f"{pair.name}: the Flax and PyTorch models disagree by {diff:.2e} (> {ATOL:g})")
    return info, quantize_8bit(images), classes


def _error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def probe_precision(pair: sm.ModelPair, precision: str, params: int, cap: int | None, fwd: float,
                    log: Callable[[str], None]) -> dict[str, Any]:
    """The compiled step at 1 and 2 images: its FLOPs, memory line and op dtypes; or the
    error that compiling it raised (the precision is then not timed for ronan-jax)."""
    try:
        one, two = step_probe(pair, precision, 1), step_probe(pair, precision, 2)
    except Exception as exc:  # a model that cannot run at this precision: say why, go on
        error = _error(exc)
        log(f"  {precision}: ronan-jax's step does not compile: {error}")
        return {"error": error}
    mem = memory_line(one, two, params, cap)
    per_run = one["step_flops"] / one["runs"]
    log(f"  {precision}: step {per_run / 1e9:.1f} GFLOP/run (forward {fwd / 1e9:.1f}); "
        f"{_gib(mem['bytes_per_image'])}/image + {_gib(mem['fixed_bytes'])}, largest batch that fits "
        f"{mem['largest_batch']}; convolutions lowered {one['ops_lowered'].get('convolution')} compiled "
        f"{one['ops_compiled'].get('convolution')} (compile {one['compile_s']:.0f} + {two['compile_s']:.0f} s)")
    return {"probe_1": one, "probe_2": two, "memory": mem, "step_flops_per_run": per_run}


def run_case(case: Case, settings: Settings, peaks: Peaks, log: Callable[[str], None],
             save: Callable[[], None], section: dict[str, Any]) -> None:
    """Measure one case into ``section`` (saved as it fills)."""
    t0 = time.perf_counter()
    pair = sm.build(case.model, case.size, tiny=settings.tiny)
    pair.torch_net.to(torch_device())
    cap, cap_source = capacity()
    label = f"{case.model}@{pair.size}" + (" (tiny)" if settings.tiny else "")
    section.update(case=dataclasses.asdict(case), label=label, facts=pair.facts,
                   image_shape=list(pair.generator.output_shape), input_shape=list(pair.generator.input_shape),
                   build_s=time.perf_counter() - t0, capacity_bytes=cap, capacity_source=cap_source)
    log(f"{label}: {pair.facts['torch_params'] / 1e6:.4g} M parameters, input {pair.facts['input']}; "
        f"timed {case.steps} steps x {case.restarts} restarts; {cap_source} {_gib(cap)}")
    section["check"], images, classes = check_pair(pair, case.check_images, log)
    section["forward_flops"] = forward_flops(pair)
    params = _tree_bytes(pair.generator.params)
    section["precisions"] = {p: probe_precision(pair, p, params, cap, section["forward_flops"], log)
                             for p in case.precisions}
    save()
    variants, skipped = _variants(pair, images, classes, case, section, cap)
    section["not_run"] = skipped
    for note in skipped:
        log(f"  not run: {note}")
    bases = {v.precision: v for v in variants if v.kind == "torch"}

    def rows() -> None:
        section["timing"] = [timing_row(v, case, label, bases.get(v.precision), step_flops(section, v.precision),
                                        peaks.best(v.precision)) for v in variants if v.samples]
        section["peaks"] = peaks.as_dict()
        save()

    if variants:
        log(f"  timing {', '.join(v.name for v in variants)}: {case.reps} interleaved round(s)")
        run_interleaved(variants, case.reps, log, probe=peaks.probe, on_round=rows)
        for v in variants:
            v.time_once()
        log("  once per call: " + ", ".join(f"{v.name} {v.once_s:.2f} s" for v in variants if v.once_s is not None))
    rows()
    _log_rows(section, log)
    if case.verdict_images:
        mem = _memory(section, "float32")
        section["verdicts"] = verdict_check(pair, case, min((mem or {}).get("largest_batch") or 1, 64), log)
    section["wall_s"] = time.perf_counter() - t0
    save()


def step_flops(section: dict[str, Any], precision: str) -> float:
    """FLOPs of one step of one run: the precision's compiled step, else any that compiled."""
    probes = section["precisions"]
    for p in (precision, *probes):
        if "step_flops_per_run" in probes.get(p, {}):
            return probes[p]["step_flops_per_run"]
    return float("nan")


def _memory(section: dict[str, Any], precision: str) -> dict[str, Any] | None:
    probes = section["precisions"]
    for p in (precision, *probes):
        if "memory" in probes.get(p, {}):
            return probes[p]["memory"]
    return None


def _variants(pair: sm.ModelPair, images: np.ndarray, classes: np.ndarray, case: Case,
              section: dict[str, Any], cap: int | None) -> tuple[list[Timed], list[str]]:
    """The case's timed variants, and a note for each one left out for memory (CPU)."""
    variants: list[Timed] = []
    skipped: list[str] = []
    cpu = device_limit() is None
    for precision in case.precisions:
        mem = _memory(section, precision)
        error = section["precisions"][precision].get("error")
        batches = resolve_batches(case, None if mem is None else mem["largest_batch"])
        reps = -(-max(batches) // len(images))
        pool, pool_classes = np.concatenate([images] * reps), np.concatenate([classes] * reps)
        candidates = [(1, torch_variant(pair, pool, pool_classes, case, precision))]
        if error:
            skipped.append(f"ronan-jax {_short(precision)}: its step does not compile ({error})")
        else:
            candidates += [(b, jax_variant(pair, pool, pool_classes, case, precision, b)) for b in batches]
        for b, v in candidates:
            need = None if mem is None else needed_bytes(mem, b, case.restarts)
            if cpu and cap is not None and need is not None and need > MEMORY_MARGIN * cap:
                skipped.append(f"{v.name}: needs ~{_gib(need)} (estimated from ronan-jax's compiled step), "
                               f"{_gib(cap)} available")
                continue
            variants.append(v)
    return variants, skipped


def _log_rows(section: dict[str, Any], log: Callable[[str], None]) -> None:
    for r in section.get("timing", []):
        vs = f"{r['vs_torch']:.2f}x" if r["vs_torch"] else "-"
        comp = f", compile {r['compile_s']:.0f} s" if r["compile_s"] is not None else ""
        log(f"  {r['name']:24s} {r['s_per_image_paper']:10.1f} s/image at 1500 x 8  vs torch {vs:>7s}  "
            f"{100 * r['fraction_of_floor']:5.1f} % of the FLOP floor{comp}; peak RSS {_gib(r['peak_rss_bytes'])} "
            f"(+{_gib(r['peak_rss_growth_bytes'])} in the call), device peak {_gib(r['device_peak_bytes'])}")


# ----------------------------------------------------------------------------- the report


def speedups(section: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per precision: the fastest ronan-jax row against the PyTorch loop of the same
    precision and against the float32 PyTorch loop."""
    rows = section.get("timing", [])
    torch_rows = {r["precision"]: r for r in rows if r["kind"] == "torch"}
    out = {}
    for precision in {r["precision"] for r in rows if r["kind"] == "jax"}:
        best = min((r for r in rows if r["kind"] == "jax" and r["precision"] == precision),
                   key=lambda r: r["s_per_image_paper"])
        entry = {"jax": best["name"], "jax_s_per_image": best["s_per_image_paper"]}
        for key, base in (("same_precision", torch_rows.get(precision)), ("float32", torch_rows.get("float32"))):
            if base is not None:
                entry[f"vs_torch_{key}"] = base["s_per_image_paper"] / best["s_per_image_paper"]
        out[precision] = entry
    return out


def markdown(results: dict[str, Any]) -> str:
    """The two tables of a run (models, timing) as Markdown."""
    lines = ["| model | parameters | FLOP/forward (XLA) | step FLOP/run | step / forward | flax vs torch | "
             "precision | bytes/image (8 restarts) | largest batch that fits | convolutions bf16 (lowered / compiled) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for s in results["cases"]:
        for p, d in s.get("precisions", {}).items():
            if "error" in d:
                lines.append(f"| {s['label']} | {s['facts']['torch_params'] / 1e6:.1f} M | {s['forward_flops'] / 1e9:.2f} G | "
                             f"- | - | {s['check']['max_abs_diff']:.1e} | {p} | ronan-jax's step fails: {d['error']} | | |")
                continue
            one = d["probe_1"]
            bf = [str(one[k].get("convolution", {}).get("bf16", 0)) + "/" + str(sum(one[k].get("convolution", {}).values()))
                  for k in ("ops_lowered", "ops_compiled")]
            lines.append(
                f"| {s['label']} | {s['facts']['torch_params'] / 1e6:.1f} M | {s['forward_flops'] / 1e9:.2f} G | "
                f"{d['step_flops_per_run'] / 1e9:.2f} G | {d['step_flops_per_run'] / s['forward_flops']:.2f} | "
                f"{s['check']['max_abs_diff']:.1e} | {p} | {_gib(d['memory']['bytes_per_image'])} | "
                f"{d['memory']['largest_batch']} of {_gib(d['memory']['capacity_bytes'])} | {bf[0]} / {bf[1]} |")
    lines += ["", "| model | variant | timed (steps x restarts x images) | best call s (once/call s) | "
              "s/image at 1500 x 8 (naive) | vs torch | compile s | FLOP floor s/image | of floor | "
              "peak RSS (+ in call) | device peak |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in results["cases"]:
        for r in s.get("timing", []):
            vs = f"{r['vs_torch']:.2f}x" if r["vs_torch"] else "-"
            comp = "-" if r["compile_s"] is None else f"{r['compile_s']:.0f}"
            once = "-" if r["once_per_call_s"] is None else f"{r['once_per_call_s']:.2f}"
            lines.append(
                f"| {s['label']} | {r['name']} | {r['timed_steps']} x {r['timed_restarts']} x {r['n_images_per_call']} | "
                f"{r['best_call_s']:.2f} ({once}) | {r['s_per_image_paper']:.1f} ({r['s_per_image_paper_naive']:.1f}) | "
                f"{vs} | {comp} | {r['floor_s_per_image']:.1f} | "
                f"{100 * r['fraction_of_floor']:.1f} % | {_gib(r['peak_rss_bytes'])} (+{_gib(r['peak_rss_growth_bytes'])}) | "
                f"{_gib(r['device_peak_bytes'])} |")
        for note in s.get("not_run", []):
            lines.append(f"| {s['label']} | not run: {note} | | | | | | | | | |")
    return "\n".join(lines) + "\n"


def summary_lines(results: dict[str, Any]) -> list[str]:
    out = []
    for s in results["cases"]:
        for precision, e in sorted(speedups(s).items()):
            paper = PAPER_S_PER_IMAGE.get(s["case"]["model"])
            ratios = ", ".join(f"{e[k]:.2f}x vs the {'same-precision' if k.endswith('same_precision') else 'float32'} "
                               "PyTorch loop" for k in ("vs_torch_same_precision", "vs_torch_float32") if k in e)
            out.append(f"speed-up {s['label']} {precision}: {ratios or 'no PyTorch timing'} ({e['jax']}, "
                       f"{e['jax_s_per_image']:.1f} s/image at 1500 x 8"
                       + (f"; the paper: {paper} s/image)" if paper else ")"))
    return out


GPU_ENV = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false", "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.6"}


def share_the_gpu() -> dict[str, str]:
    """``--gpu``: JAX allocates on demand and up to 60 % of the device, so the PyTorch loop
    timed beside it has the rest (set before JAX starts its backend; an explicit environment
    wins). The largest batch that fits is then within JAX's share."""
    for key, value in GPU_ENV.items():
        os.environ.setdefault(key, value)
    return {k: os.environ[k] for k in GPU_ENV}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    settings = parse_args(argv)
    gpu_env = share_the_gpu() if settings.mode == "gpu" else None
    if not settings.matmul:
        settings = dataclasses.replace(settings, matmul=2048 if jax.default_backend() == "cpu" else 8192)
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(msg, flush=True)

    import torch

    torch.set_num_threads(cpu_threads())
    results: dict[str, Any] = {
        "command": "python -m benchmarks.scale " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "mode": settings.mode, "tiny": settings.tiny,
        "machine": machine_info(), "gpu_env": gpu_env, "cases": [], "complete": False,
    }
    m = results["machine"]
    log(f"jax {m['jax']} on {m['backend']} ({m['device_kind']}), torch {m['torch']} on {m['torch_device']} "
        f"({m['torch_threads']} threads); {m['cpu_affinity']} of {m['cpu_count']} CPUs, load {' '.join(m['loadavg_start'])}")
    if m["backend"] == "gpu" and m["jax_default_matmul_precision"] != "highest":
        log("note: JAX_DEFAULT_MATMUL_PRECISION is not 'highest' (the engine's float32 programs use it anyway)")
    peaks = Peaks(settings.matmul, tuple(sorted({p for c in settings.cases for p in c.precisions}, key=PRECISIONS.index)))

    def save(final: bool = False) -> None:
        results["complete"] = final
        results["peaks"] = peaks.as_dict() if peaks.samples else None
        write_json(settings.out, results)
        settings.md.parent.mkdir(parents=True, exist_ok=True)
        settings.md.write_text(markdown(results))

    for case in settings.cases:
        peaks.probe()
        section: dict[str, Any] = {}
        results["cases"].append(section)
        run_case(case, settings, peaks, log, save, section)
    results["wall_s"] = time.perf_counter() - t_start
    results["machine"]["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3] if m["loadavg_start"] else []
    results["summary"] = {s["label"]: speedups(s) for s in results["cases"]}
    save(final=True)
    log("peak FLOP/s: " + ", ".join(f"{p} {peaks.best(p) / 1e9:.1f} G" for p in peaks.samples)
        + f" (best {settings.matmul}^2 matmul, JAX and PyTorch, {len(next(iter(peaks.samples.values())))} probes)")
    log(f"wrote {settings.out} and {settings.md}; total wall time {results['wall_s']:.0f} s")
    for line in summary_lines(results):
        log(line)
    return results


if __name__ == "__main__":
    main()
