"""The compiled program of one (generator, settings): its pieces, its calls and their sizes.

:func:`compiled_program` builds (and caches) the jitted pieces the driver calls:
``start`` draws each image's R starting inputs (plus its encoding first, with a warm
start), ``init`` builds the state, ``gather`` takes
the runs still going, ``advance`` runs a segment of steps on them, ``scatter`` puts them
back and ``reconstruct`` renders the winners. :func:`step_segments` says how many steps each
``advance`` call runs, :func:`images_per_call` how many images one call holds. The memory
estimate (:mod:`ronan_jax.engine.memory`) compiles the same pieces, so both agree by
construction.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ronan_jax.engine.config import InversionConfig
from ronan_jax.engine.generator import ApplyFn, EncodeFn, Generator, PriorFn
from ronan_jax.engine.metrics import Metric, get_metric
from ronan_jax.engine.state import InversionState, init_state, inversion_step, measure


def _cast_floats(tree: Any, dtype: Any) -> Any:
    return jax.tree_util.tree_map(
        lambda a: a.astype(dtype) if jnp.issubdtype(jnp.result_type(a), jnp.floating) else a,
        tree,
    )


def forward(apply_fn: ApplyFn, compute_dtype: Any, params: Any, z: jax.Array, condition: Any) -> jax.Array:
    """Images of inputs ``z`` computed in ``compute_dtype``, returned as float32.

    float32 means full float32 on every backend: GPUs would otherwise run convolutions and
    matmuls in TF32, whose rounding made losses move by ~1 % with the batch size (measured on
    an H200) and left the PyTorch reference 2e-3 away.
    """
    full = jnp.dtype(compute_dtype) == jnp.float32
    with jax.default_matmul_precision("highest") if full else contextlib.nullcontext():
        images = apply_fn(_cast_floats(params, compute_dtype), z.astype(compute_dtype), condition)
    return images.astype(jnp.float32)


def run_losses(
    apply_fn: ApplyFn,
    metric: Metric,
    compute_dtype: Any,
    params: Any,
    z: jax.Array,
    targets: jax.Array,
    condition: Any,
) -> tuple[jax.Array, jax.Array]:
    """Per-run losses ``[N]`` (float32) and images of inputs ``z`` against ``targets``."""
    images = forward(apply_fn, compute_dtype, params, z, condition)
    return jax.vmap(metric)(images, targets), images


def resolve_loop(loop: str, backend: str | None = None) -> str:
    """``auto`` picks the step loop measured fastest on the backend: on XLA:CPU a convolution
    inside a ``lax.scan`` body runs much slower than in a jitted chunk driven from the host,
    so CPU uses host-driven unrolled chunks; accelerators use one scan."""
    if loop != "auto":
        return loop
    backend = backend or jax.default_backend()
    return "chunked" if backend == "cpu" else "scan"


def default_max_batch(backend: str | None = None) -> int:
    """Runs (images x restarts) per device call when the config says 0: on CPU, beyond ~64
    runs the step gets no faster per run (measured on 2 cores); accelerators want wide
    batches (the audit's batch sizing finds what fits their memory)."""
    backend = backend or jax.default_backend()
    return 64 if backend == "cpu" else 4096


def images_per_call(config: InversionConfig, devices: int = 1, backend: str | None = None,
                    runs: int | None = None) -> int:
    """Images in one call of the program: ``max_batch // runs`` per device (at least one;
    ``runs`` per image defaults to the restarts), with ``max_batch`` from the config or, when
    it says 0, the backend's default. :func:`ronan_jax.engine.invert.invert` chunks the
    images so."""
    max_batch = config.max_batch or default_max_batch(backend)
    return max(1, max_batch // (runs or config.restarts)) * devices


def warm_applies(generator: Generator, config: InversionConfig) -> bool:
    """Whether ``generator``'s inversions with ``config`` start one run at the encoding."""
    return bool(config.warm_start) and generator.encoder is not None


def step_segments(config: InversionConfig, loop: str | None = None) -> list[int]:
    """Step counts of the successive ``advance`` calls of a run of ``config.steps`` steps.

    Cut at every ``check_every`` boundary (where the early-stopping decisions are made) and,
    for the chunked loop, every ``unroll`` steps. ``loop`` defaults to the config's, resolved
    for the default backend. The last call also measures the input of its last update.
    """
    loop = loop or resolve_loop(config.loop)
    out, done = [], 0
    piece = config.unroll if loop == "chunked" else config.check_every
    while done < config.steps:
        to_check = config.check_every - done % config.check_every
        k = min(piece, to_check, config.steps - done)
        out.append(k)
        done += k
    return out


class Program(NamedTuple):
    """The jitted pieces of one (generator, settings); each caches one compile per shape.

    A run table is an :class:`~ronan_jax.engine.state.InversionState` of N runs, image-major
    (run ``i`` belongs to image ``i // runs``). ``runs`` is the restarts, plus one when the
    program warm-starts (its run 0 of every image then starts at the image's encoding).
    """

    start: Callable[..., Any]  # (keys[b], enc_params, targets[b], cond) -> z0[b*runs]
    init: Callable[..., Any]  # z0[n] -> InversionState
    gather: Callable[..., Any]  # (state, targets, cond, run_img, idx) -> (sub_state, t, c)
    advance: Callable[..., Any]  # (sub_state, params, t, c, n_steps, measure_last) -> sub_state
    scatter: Callable[..., Any]  # (state, sub_state, idx) -> state; idx out of range: dropped
    reconstruct: Callable[..., Any]  # (params, inputs, cond) -> images
    runs: int  # runs per image

    def pieces(self) -> tuple[Callable[..., Any], ...]:
        """The jitted functions (each with its own compile cache)."""
        return (self.start, self.init, self.gather, self.advance, self.scatter, self.reconstruct)

    def initial_state(self, keys: jax.Array, encoder_params: Any = None, targets: Any = None,
                      condition: Any = None) -> InversionState:
        """The run table of images with PRNG keys ``keys`` (and, for a warm start, their
        ``targets`` and conditions, encoded with ``encoder_params``): their starting inputs,
        nothing measured yet (``init`` of ``start``)."""
        return self.init(self.start(keys, encoder_params, targets, condition))


@functools.lru_cache(maxsize=64)
def _program(
    apply_fn: ApplyFn,
    prior: PriorFn,
    metric: Metric,
    input_shape: tuple[int, ...],
    restarts: int,
    lr: float,
    precision: str,
    loop: str,
    unroll: int,
    encode_fn: EncodeFn | None = None,
) -> Program:
    optimizer = optax.adam(lr)
    compute_dtype = jnp.bfloat16 if precision == "bfloat16" else jnp.float32

    @jax.jit
    def start(keys: jax.Array, encoder_params: Any, targets: Any, condition: Any) -> jax.Array:
        # The prior's draws are the same with and without a warm start: the warm run is added.
        z0 = jax.vmap(lambda k: prior(k, (restarts, *input_shape)))(keys).astype(jnp.float32)
        if encode_fn is not None:
            with jax.default_matmul_precision("highest"):
                encoded = encode_fn(encoder_params, targets, condition).astype(jnp.float32)
            z0 = jnp.concatenate([encoded.reshape((-1, 1, *input_shape)), z0], axis=1)
        return z0.reshape((-1, *input_shape))

    init = jax.jit(functools.partial(init_state, optimizer))

    @jax.jit
    def gather(state: InversionState, targets: jax.Array, condition: Any, run_img: jax.Array, idx: jax.Array) -> tuple[Any, ...]:
        sub = jax.tree_util.tree_map(lambda a: a[idx], state)  # every leaf has the run axis
        img = run_img[idx]
        cond = None if condition is None else jax.tree_util.tree_map(lambda c: c[img], condition)
        return sub, targets[img], cond

    def advance_impl(state: InversionState, params: Any, targets: jax.Array, condition: Any, n_steps: int, measure_last: bool) -> InversionState:
        def losses(z: jax.Array) -> jax.Array:
            return run_losses(apply_fn, metric, compute_dtype, params, z, targets, condition)[0]

        step = functools.partial(inversion_step, losses, optimizer)
        if loop == "scan":
            state, _ = jax.lax.scan(lambda s, _: (step(s), None), state, None, length=n_steps, unroll=min(unroll, n_steps))
        else:
            for _ in range(n_steps):  # chunked: unrolled straight-line steps in one program
                state = step(state)
        if measure_last:  # the last update's input is measured too, so no step is wasted
            state = measure(state, losses(state.z))
        return state

    advance = jax.jit(advance_impl, static_argnums=(4, 5), donate_argnums=0)

    @functools.partial(jax.jit, donate_argnums=0)
    def scatter(state: InversionState, sub: InversionState, idx: jax.Array) -> InversionState:
        return jax.tree_util.tree_map(lambda full, part: full.at[idx].set(part, mode="drop"), state, sub)

    @jax.jit
    def reconstruct(params: Any, inputs: jax.Array, condition: Any) -> jax.Array:
        return forward(apply_fn, compute_dtype, params, inputs, condition)

    runs = restarts + (encode_fn is not None)
    return Program(start, init, gather, advance, scatter, reconstruct, runs)


def compiled_program(generator: Generator, config: InversionConfig, metric: Metric | None = None) -> Program:
    """The cached compiled pieces for a generator and settings (``metric`` overrides the
    config's metric, e.g. a perceptual one); equal arguments return the same object. With
    ``config.warm_start`` and an encoder on the generator, the program warm-starts."""
    metric_fn = metric if metric is not None else get_metric(config.metric)
    warm = warm_applies(generator, config)
    return _program(
        generator.apply_fn,
        generator.prior,
        metric_fn,
        tuple(generator.input_shape),
        config.restarts,
        float(config.lr),
        config.precision,
        resolve_loop(config.loop),
        config.unroll,
        generator.encoder.apply_fn if warm else None,
    )
