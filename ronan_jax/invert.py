"""Batched input reverse-engineering (SPEC Eq. 1): Adam on the generator's input.

All B images x R restarts are optimised as one ``[B*R, *input_shape]`` array in one compiled
program. The loss is summed over runs; Adam is elementwise and the generator runs in
inference mode, so this is exactly B*R independent optimisations. Strategy "min": an image's
loss is the smallest loss seen over all its restarts and all steps.

The hot path is pure: ``init_state`` and ``inversion_step`` are functions over a small
NamedTuple state (the optax pattern); ``invert`` pads, chunks and drives them.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ronan_jax.config import InversionConfig
from ronan_jax.generator import ApplyFn, Generator, PriorFn
from ronan_jax.metrics import get_metric

Metric = Callable[[jax.Array, jax.Array], jax.Array]


class InversionState(NamedTuple):
    """Optimiser state of N = B*R runs (flattened, image-major)."""

    z: jax.Array  # [N, *input_shape] float32: current inputs
    opt_state: Any  # optax Adam state (float32)
    best_loss: jax.Array  # [N] float32: smallest finite loss seen (inf if none)
    best_z: jax.Array  # [N, *input_shape]: input that produced best_loss
    last_loss: jax.Array  # [N]: loss at the latest step (inf once diverged)
    alive: jax.Array  # [N] bool: still being optimised (False once diverged)


class InversionResult(NamedTuple):
    """Per-image outcome of :func:`invert` (NumPy arrays, images in input order)."""

    loss: np.ndarray  # [B] best loss over restarts and steps (inf if every restart diverged)
    best_input: np.ndarray  # [B, *input_shape]
    reconstruction: np.ndarray  # [B, H, W, C] generator output at best_input
    restart_losses: np.ndarray  # [B, R] loss of each restart at the last step
    restart_best: np.ndarray  # [B, R] best loss of each restart
    diverged: np.ndarray  # [B] bool: every restart diverged; the image must not be judged


def image_key(seed: int, image: np.ndarray) -> jax.Array:
    """The PRNG key of one image: from the run seed and the image's content only, so its
    result never depends on batch neighbours, batch size, device count or input order."""
    digest = hashlib.sha256(np.ascontiguousarray(image, dtype=np.float32).tobytes()).digest()
    a, b = (int.from_bytes(digest[i : i + 4], "little") for i in (0, 4))
    key = jax.random.key(seed)
    return jax.random.fold_in(jax.random.fold_in(key, a), b)


def _cast_floats(tree: Any, dtype: Any) -> Any:
    return jax.tree_util.tree_map(
        lambda a: a.astype(dtype) if jnp.issubdtype(jnp.result_type(a), jnp.floating) else a,
        tree,
    )


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
    images = apply_fn(_cast_floats(params, compute_dtype), z.astype(compute_dtype), condition)
    images = images.astype(jnp.float32)
    return jax.vmap(metric)(images, targets), images


def init_state(optimizer: optax.GradientTransformation, z0: jax.Array) -> InversionState:
    n = z0.shape[0]
    inf = jnp.full((n,), jnp.inf, jnp.float32)
    return InversionState(
        z=z0,
        opt_state=optimizer.init(z0),
        best_loss=inf,
        best_z=z0,
        last_loss=inf,
        alive=jnp.ones((n,), bool),
    )


def _per_run(mask: jax.Array, like: jax.Array) -> jax.Array:
    return mask.reshape(mask.shape + (1,) * (like.ndim - 1))


def inversion_step(
    loss_fn: Callable[[jax.Array], jax.Array],
    optimizer: optax.GradientTransformation,
    state: InversionState,
) -> InversionState:
    """One Adam step on every run; records the best loss (strategy "min").

    A run whose loss, gradient or next input is not finite is frozen (``alive`` False) at its
    last finite input; its non-finite losses never count as low.
    """

    def total(z: jax.Array) -> tuple[jax.Array, jax.Array]:
        losses = loss_fn(z)
        return jnp.sum(jnp.where(jnp.isfinite(losses), losses, 0.0)), losses

    grads, losses = jax.grad(total, has_aux=True)(state.z)
    finite = jnp.isfinite(losses) & state.alive
    improved = finite & (losses < state.best_loss)
    best_loss = jnp.where(improved, losses, state.best_loss)
    best_z = jnp.where(_per_run(improved, state.z), state.z, state.best_z)

    # optax mixes Python scalars with int32 step counts; allow that inside optax only.
    with jax.numpy_dtype_promotion("standard"):
        updates, opt_state = optimizer.update(grads, state.opt_state, state.z)
    z_next = optax.apply_updates(state.z, updates)
    axes = tuple(range(1, z_next.ndim))
    alive = finite & jnp.all(jnp.isfinite(z_next), axis=axes)
    keep = _per_run(alive, z_next)
    z = jnp.where(keep, z_next, state.z)
    opt_state = jax.tree_util.tree_map(
        lambda new, old: jnp.where(_per_run(alive, new), new, old)
        if jnp.ndim(new) and new.shape[0] == alive.shape[0]
        else new,
        opt_state,
        state.opt_state,
    )
    last_loss = jnp.where(finite, losses, jnp.inf)
    return InversionState(z, opt_state, best_loss, best_z, last_loss, alive)


def resolve_loop(loop: str, backend: str | None = None) -> str:
    """``auto`` picks the step loop measured fastest on the backend: on XLA:CPU a convolution
    inside a ``lax.scan`` body runs much slower than in a jitted chunk driven from the host,
    so CPU uses host-driven unrolled chunks; accelerators use one scan."""
    if loop != "auto":
        return loop
    backend = backend or jax.default_backend()
    return "chunked" if backend == "cpu" else "scan"


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
) -> tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any]]:
    """The three compiled pieces of one (generator, settings): start, advance k steps, finish.

    jax.jit caches per input shape underneath, so one entry here serves every batch of the
    same padded size without recompiling.
    """
    optimizer = optax.adam(lr)
    compute_dtype = jnp.bfloat16 if precision == "bfloat16" else jnp.float32

    def repeat(x: Any) -> Any:
        return None if x is None else jax.tree_util.tree_map(lambda a: jnp.repeat(a, restarts, axis=0), x)

    def loss_fn(params: Any, targets: jax.Array, condition: Any) -> Callable[[jax.Array], jax.Array]:
        return lambda z: run_losses(apply_fn, metric, compute_dtype, params, z, targets, condition)[0]

    @jax.jit
    def start(keys: jax.Array) -> InversionState:
        z0 = jax.vmap(lambda k: prior(k, (restarts, *input_shape)))(keys)
        z0 = z0.reshape((-1, *input_shape)).astype(jnp.float32)
        return init_state(optimizer, z0)

    def advance_impl(state: InversionState, params: Any, targets: jax.Array, condition: Any, n_steps: int) -> InversionState:
        rt, rc = repeat(targets), repeat(condition)
        fn = loss_fn(params, rt, rc)
        step = functools.partial(inversion_step, fn, optimizer)
        if loop == "scan":
            state, _ = jax.lax.scan(lambda s, _: (step(s), None), state, None, length=n_steps, unroll=min(unroll, n_steps))
            return state
        for _ in range(n_steps):  # chunked: unrolled straight-line steps in one program
            state = step(state)
        return state

    advance = jax.jit(advance_impl, static_argnums=4, donate_argnums=0)

    @jax.jit
    def finish(state: InversionState, params: Any, targets: jax.Array, condition: Any) -> tuple[jax.Array, ...]:
        n_img = targets.shape[0]
        # The last update's input was never measured: measure it so no step is wasted.
        last, _ = run_losses(apply_fn, metric, compute_dtype, params, state.z, repeat(targets), repeat(condition))
        finite = jnp.isfinite(last) & state.alive
        better = finite & (last < state.best_loss)
        best_loss = jnp.where(better, last, state.best_loss)
        best_z = jnp.where(_per_run(better, state.z), state.z, state.best_z)
        last_loss = jnp.where(finite, last, jnp.inf)

        per_img = best_loss.reshape(n_img, restarts)
        winner = jnp.argmin(per_img, axis=1)
        zs = best_z.reshape((n_img, restarts, *input_shape))
        best_input = jnp.take_along_axis(zs, winner.reshape((n_img, 1) + (1,) * len(input_shape)), axis=1)[:, 0]
        _, recon = run_losses(apply_fn, metric, compute_dtype, params, best_input, targets, condition)
        return (
            jnp.min(per_img, axis=1),
            best_input,
            recon,
            last_loss.reshape(n_img, restarts),
            per_img,
        )

    return start, advance, finish


def compiled_program(
    generator: Generator, config: InversionConfig, metric: Metric | None = None
) -> tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any]]:
    """The cached (start, advance, finish) jitted functions for a generator and settings."""
    metric_fn = metric if metric is not None else get_metric(config.metric)
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
    )


def _bucket(n: int, capacity: int) -> int:
    """Padded batch size: the next power of two up to ``capacity`` (bounded recompiles)."""
    size = 1
    while size < n:
        size *= 2
    return min(size, capacity)


def invert(
    generator: Generator,
    images: np.ndarray | jax.Array,
    config: InversionConfig | None = None,
    conditions: Any = None,
    metric: Metric | None = None,
) -> InversionResult:
    """Reverse-engineer ``generator``'s input for every image (SPEC Eq. 1).

    Args:
        generator: the model; its output shape must equal the images' shape.
        images: ``[B, H, W, C]`` float in [0, 1].
        config: settings (SPEC defaults when omitted).
        conditions: optional per-image fixed conditioning ``[B, ...]`` (else the generator's).
        metric: a metric function overriding ``config.metric`` (e.g. a perceptual metric).

    Returns per image the best loss, input and reconstruction, and per-restart losses.
    Images are processed in chunks of at most ``config.max_batch // restarts`` images.
    """
    config = config or InversionConfig()
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4:
        raise ValueError(f"images must be [B, H, W, C], got shape {images.shape}")
    if tuple(images.shape[1:]) != tuple(generator.output_shape):
        raise ValueError(
            f"images of shape {images.shape[1:]} do not match generator {generator.name!r} "
            f"output {generator.output_shape}"
        )
    loop = resolve_loop(config.loop)
    start, advance, finish = compiled_program(generator, config, metric)
    n = images.shape[0]
    capacity = max(1, config.max_batch // config.restarts)
    keys = jnp.stack([image_key(config.seed, img) for img in images]) if n else None
    if conditions is None and generator.condition is not None:
        conditions = generator.batched_condition(n)

    parts: list[tuple[np.ndarray, ...]] = []
    for lo in range(0, n, capacity):
        hi = min(lo + capacity, n)
        size = _bucket(hi - lo, capacity)
        pad = size - (hi - lo)
        chunk_keys = _pad(keys[lo:hi], pad)
        chunk_imgs = _pad(jnp.asarray(images[lo:hi]), pad)
        chunk_cond = _slice_tree(conditions, lo, hi, pad)
        state = start(chunk_keys)
        done = 0
        chunk_steps = config.steps if loop == "scan" else config.unroll
        while done < config.steps:
            k = min(chunk_steps, config.steps - done)
            state = advance(state, generator.params, chunk_imgs, chunk_cond, k)
            done += k
        out = finish(state, generator.params, chunk_imgs, chunk_cond)
        parts.append(tuple(np.asarray(o)[: hi - lo] for o in out))

    if not parts:
        r = config.restarts
        empty = np.zeros((0,), np.float32)
        return InversionResult(
            empty,
            np.zeros((0, *generator.input_shape), np.float32),
            np.zeros((0, *generator.output_shape), np.float32),
            np.zeros((0, r), np.float32),
            np.zeros((0, r), np.float32),
            np.zeros((0,), bool),
        )
    loss, best_input, recon, restart_losses, restart_best = (np.concatenate(p) for p in zip(*parts, strict=True))
    return InversionResult(
        loss=loss,
        best_input=best_input,
        reconstruction=recon,
        restart_losses=restart_losses,
        restart_best=restart_best,
        diverged=~np.isfinite(loss),
    )


def _pad(x: jax.Array, pad: int) -> jax.Array:
    """Pad the leading axis with copies of the first row (valid data, results discarded)."""
    if pad == 0:
        return x
    return jnp.concatenate([x, jnp.repeat(x[:1], pad, axis=0)], axis=0)


def _slice_tree(tree: Any, lo: int, hi: int, pad: int) -> Any:
    """Rows ``lo:hi`` of every leaf of a per-image pytree, padded like the images."""
    if tree is None:
        return None
    return jax.tree_util.tree_map(lambda c: _pad(jnp.asarray(c)[lo:hi], pad), tree)
