"""Batched input reverse-engineering (SPEC Eq. 1): Adam on the generator's input.

All B images x R restarts are optimised as one ``[B*R, *input_shape]`` array in one compiled
program. The loss is summed over runs; Adam is elementwise and the generator runs in
inference mode, so this is exactly B*R independent optimisations. Strategy "min": an image's
loss is the smallest loss seen over all its restarts and all steps.

The hot path is pure: ``init_state`` and ``inversion_step`` are functions over a small
NamedTuple state (the optax pattern); ``invert`` pads, chunks and drives them.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from ronan_jax.engine.config import InversionConfig
from ronan_jax.engine.generator import ApplyFn, Generator, PriorFn
from ronan_jax.engine.mesh import data_mesh, replicate, round_up, shard_rows
from ronan_jax.engine.metrics import get_metric

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
    steps_run: np.ndarray  # [B, R] optimisation steps each restart actually ran


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


def generate(apply_fn: ApplyFn, compute_dtype: Any, params: Any, z: jax.Array, condition: Any) -> jax.Array:
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
    images = generate(apply_fn, compute_dtype, params, z, condition)
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


def _record_best(state: InversionState, losses: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Strategy "min": fold losses measured at ``state.z`` into the best seen so far.
    Returns (finite mask, best_loss, best_z); non-finite or dead runs never improve."""
    finite = jnp.isfinite(losses) & state.alive
    improved = finite & (losses < state.best_loss)
    best_loss = jnp.where(improved, losses, state.best_loss)
    best_z = jnp.where(_per_run(improved, state.z), state.z, state.best_z)
    return finite, best_loss, best_z


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
    finite, best_loss, best_z = _record_best(state, losses)

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
        if _is_run_leaf(new, alive.shape[0])
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


def default_max_batch(backend: str | None = None) -> int:
    """Runs (images x restarts) per device call when the config says 0: on CPU, beyond ~64
    runs the step gets no faster per run (measured on 2 cores); accelerators want wide
    batches (issue 8 finds the memory limit)."""
    backend = backend or jax.default_backend()
    return 64 if backend == "cpu" else 4096


class _Program(NamedTuple):
    """The compiled pieces of one (generator, settings); jax.jit caches per shape below."""

    start: Callable[..., Any]  # keys[b] -> z0[b*R]
    init: Callable[..., Any]  # z0[n] -> InversionState
    gather: Callable[..., Any]  # (state, targets, cond, run_img, idx) -> (sub_state, t, c)
    advance: Callable[..., Any]  # (sub_state, params, t, c, n_steps, measure_last) -> sub_state
    scatter: Callable[..., Any]  # (state, sub_state, idx) -> state
    reconstruct: Callable[..., Any]  # (params, inputs, cond) -> images


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
) -> _Program:
    optimizer = optax.adam(lr)
    compute_dtype = jnp.bfloat16 if precision == "bfloat16" else jnp.float32

    @jax.jit
    def start(keys: jax.Array) -> jax.Array:
        z0 = jax.vmap(lambda k: prior(k, (restarts, *input_shape)))(keys)
        return z0.reshape((-1, *input_shape)).astype(jnp.float32)

    init = jax.jit(functools.partial(init_state, optimizer))

    @jax.jit
    def gather(state: InversionState, targets: jax.Array, condition: Any, run_img: jax.Array, idx: jax.Array) -> tuple[Any, ...]:
        sub = _map_runs(lambda a: a[idx], state, state.z.shape[0])
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
            last = losses(state.z)
            finite, best_loss, best_z = _record_best(state, last)
            state = state._replace(
                best_loss=best_loss, best_z=best_z, last_loss=jnp.where(finite, last, jnp.inf)
            )
        return state

    advance = jax.jit(advance_impl, static_argnums=(4, 5), donate_argnums=0)

    @functools.partial(jax.jit, donate_argnums=0)
    def scatter(state: InversionState, sub: InversionState, idx: jax.Array) -> InversionState:
        n = state.z.shape[0]
        return jax.tree_util.tree_map(
            lambda full, part: full.at[idx].set(part, mode="drop") if _is_run_leaf(full, n) else part,
            state,
            sub,
        )

    @jax.jit
    def reconstruct(params: Any, inputs: jax.Array, condition: Any) -> jax.Array:
        return generate(apply_fn, compute_dtype, params, inputs, condition)

    return _Program(start, init, gather, advance, scatter, reconstruct)


def _is_run_leaf(leaf: Any, n: int) -> bool:
    return bool(jnp.ndim(leaf)) and leaf.shape[0] == n


def _map_runs(fn: Callable[[jax.Array], jax.Array], state: InversionState, n: int) -> InversionState:
    """Apply ``fn`` to every per-run leaf of the state (Adam's step count is shared)."""
    return jax.tree_util.tree_map(lambda a: fn(a) if _is_run_leaf(a, n) else a, state)


def compiled_program(generator: Generator, config: InversionConfig, metric: Metric | None = None) -> _Program:
    """The cached compiled pieces for a generator and settings."""
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


def _segments(steps: int, unroll: int, check_every: int, loop: str) -> list[int]:
    """Step counts of the compiled calls: cut at every ``check_every`` boundary (where the
    early-stopping decisions are made) and, for the chunked loop, every ``unroll`` steps."""
    out, done = [], 0
    piece = unroll if loop == "chunked" else check_every
    while done < steps:
        to_check = check_every - done % check_every
        k = min(piece, to_check, steps - done)
        out.append(k)
        done += k
    return out


def invert(
    generator: Generator,
    images: np.ndarray | jax.Array,
    config: InversionConfig | None = None,
    conditions: Any = None,
    metric: Metric | None = None,
    stop_below: np.ndarray | None = None,
) -> InversionResult:
    """Reverse-engineer ``generator``'s input for every image (SPEC Eq. 1).

    Args:
        generator: the model; its output shape must equal the images' shape.
        images: ``[B, H, W, C]`` float in [0, 1].
        config: settings (SPEC defaults when omitted).
        conditions: optional per-image fixed conditioning ``[B, ...]`` (else the generator's).
        metric: a metric function overriding ``config.metric`` (e.g. a perceptual metric).
        stop_below: optional per-image loss thresholds: an image stops as soon as its best
            loss is below its threshold. Exact for threshold decisions: the best loss only
            falls with more steps, so "below the threshold" can never be undone.

    Returns per image the best loss, input and reconstruction, and per-restart losses and
    steps run. Images go through in chunks of ``max_batch // restarts``; inside a chunk only
    runs still going are computed (stopped runs are compacted out, in power-of-two buckets).

    With several devices (``config.devices``, default all local ones) each chunk holds
    ``max_batch // restarts`` images per device and its runs are split over the devices
    (:mod:`ronan_jax.engine.mesh`); tables are padded to a multiple of the device count and the
    padding is never returned. Results equal those of one device.
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
    n = images.shape[0]
    if stop_below is not None:
        stop_below = np.broadcast_to(np.asarray(stop_below, np.float64), (n,))
    if conditions is None and generator.condition is not None:
        conditions = generator.batched_condition(n)
    program = compiled_program(generator, config, metric)
    max_batch = config.max_batch or default_max_batch()
    mesh = data_mesh(config.devices)
    images_per_call = max(1, max_batch // config.restarts) * (1 if mesh is None else mesh.size)
    parts = []
    for lo in range(0, n, images_per_call):
        hi = min(lo + images_per_call, n)
        parts.append(
            _invert_chunk(
                program,
                generator,
                images[lo:hi],
                _slice_tree(conditions, lo, hi),
                config,
                max_batch,
                None if stop_below is None else stop_below[lo:hi],
                mesh,
            )
        )
    r = config.restarts
    if not parts:
        return InversionResult(
            np.zeros((0,), np.float32),
            np.zeros((0, *generator.input_shape), np.float32),
            np.zeros((0, *generator.output_shape), np.float32),
            np.zeros((0, r), np.float32),
            np.zeros((0, r), np.float32),
            np.zeros((0,), bool),
            np.zeros((0, r), np.int32),
        )
    loss, best_input, recon, restart_losses, restart_best, steps_run = (
        np.concatenate(p) for p in zip(*parts, strict=True)
    )
    return InversionResult(
        loss=loss,
        best_input=best_input,
        reconstruction=recon,
        restart_losses=restart_losses,
        restart_best=restart_best,
        diverged=~np.isfinite(loss),
        steps_run=steps_run,
    )


def _invert_chunk(
    program: _Program,
    generator: Generator,
    images: np.ndarray,
    conditions: Any,
    config: InversionConfig,
    max_batch: int,
    stop_below: np.ndarray | None,
    mesh: Mesh | None = None,
) -> tuple[np.ndarray, ...]:
    """Invert up to ``max_batch // restarts`` images (per device of ``mesh``); returns
    per-image arrays. With a mesh, every run table is padded to a multiple of its device
    count and split over its devices (the parameters replicated); without one, nothing is
    placed explicitly."""
    b, r = images.shape[0], config.restarts
    loop = resolve_loop(config.loop)
    d = 1 if mesh is None else mesh.size
    b_pad = round_up(_bucket(b, max(1, max_batch // r) * d), d)
    place: Callable[[Any], Any] = (lambda x: x) if mesh is None else functools.partial(shard_rows, mesh=mesh)
    params = generator.params if mesh is None else replicate(generator.params, mesh)
    keys = jnp.stack([image_key(config.seed, img) for img in images])
    targets = place(_pad(jnp.asarray(images), b_pad - b))
    cond = place(_slice_tree(conditions, 0, b, b_pad - b))
    state = place(program.init(program.start(place(_pad(keys, b_pad - b)))))
    n_runs = b * r  # padded images' runs exist in the state but are never scheduled
    run_img = place(jnp.repeat(jnp.arange(b_pad, dtype=jnp.int32), r))
    active = np.ones(n_runs, bool)
    steps_run = np.zeros(n_runs, np.int32)
    history: dict[int, np.ndarray] = {}
    halving_steps = sorted({_round_to(f * config.steps, config.check_every) for f in config.halving_at})

    done = 0
    segments = _segments(config.steps, config.unroll, config.check_every, loop)
    for i, k in enumerate(segments):
        idx_active = np.flatnonzero(active)
        if idx_active.size == 0:
            break
        # All runs of a chunk fit one call (images_per_call * restarts <= max_batch), so the
        # shared Adam step count advances exactly once per segment.
        # Padding runs repeat the first active run; they are dropped when scattered back.
        size = round_up(_bucket(idx_active.size, b_pad * r), d)
        fill = size - idx_active.size
        gather_idx = np.concatenate([idx_active, np.full(fill, idx_active[0])]).astype(np.int32)
        scatter_idx = np.concatenate([idx_active, np.full(fill, b_pad * r)]).astype(np.int32)
        sub, t, c = program.gather(state, targets, cond, run_img, place(jnp.asarray(gather_idx)))
        sub, t, c = place((sub, t, c))
        sub = program.advance(sub, params, t, c, k, i == len(segments) - 1)
        state = program.scatter(state, sub, place(jnp.asarray(scatter_idx)))
        steps_run[active] += k
        done += k
        if done % config.check_every == 0 and done < config.steps and (
            stop_below is not None or config.early_stopping
        ):
            best = np.asarray(state.best_loss)[:n_runs].astype(np.float64)
            active &= np.asarray(state.alive)[:n_runs]
            active = _stop_decisions(active, best, done, config, history, halving_steps, stop_below, r)

    best = np.asarray(state.best_loss)[:n_runs].reshape(b, r)
    last = np.asarray(state.last_loss)[:n_runs].reshape(b, r)
    best_z = np.asarray(state.best_z)[:n_runs].reshape((b, r, *generator.input_shape))
    winner = np.argmin(best, axis=1)
    best_input = best_z[np.arange(b), winner]
    recon_in = place(_pad(jnp.asarray(best_input), b_pad - b))
    recon = np.asarray(program.reconstruct(params, recon_in, cond))[:b]
    # A run stopped early was last measured at its stop: its last loss is its best.
    last = np.where(steps_run.reshape(b, r) < config.steps, best, last)
    return best.min(axis=1), best_input, recon, last, best, steps_run.reshape(b, r)


def _round_to(x: float, multiple: int) -> int:
    return max(multiple, round(x / multiple) * multiple)


def _stop_decisions(
    active: np.ndarray,
    best: np.ndarray,
    step: int,
    config: InversionConfig,
    history: dict[int, np.ndarray],
    halving_steps: list[int],
    stop_below: np.ndarray | None,
    restarts: int,
) -> np.ndarray:
    """Which runs keep going after ``step`` steps; every rule looks at one image's runs only."""
    active = active.copy()
    per_img = best.reshape(-1, restarts)
    if stop_below is not None:
        decided = per_img.min(axis=1) < stop_below
        active &= ~np.repeat(decided, restarts)
    if config.plateau_window:
        history[step] = best.copy()
        past = history.get(step - config.plateau_window)
        if past is not None:
            with np.errstate(invalid="ignore"):
                stalled = ~(best < past * (1.0 - config.plateau_rtol))
            active &= ~stalled
    if step in halving_steps:
        act = active.reshape(-1, restarts)
        masked = np.where(act, per_img, np.inf)
        order = np.argsort(masked, axis=1, kind="stable")
        keep_n = np.ceil(act.sum(axis=1) / 2).astype(int)
        ranks = np.empty_like(order)
        np.put_along_axis(ranks, order, np.arange(restarts)[None].repeat(len(order), 0), axis=1)
        active &= (ranks < keep_n[:, None]).reshape(-1)
    return active


def _slice_tree(tree: Any, lo: int, hi: int, pad: int = 0) -> Any:
    """Rows ``lo:hi`` of every leaf of a per-image pytree, padded like the images."""
    if tree is None:
        return None
    return jax.tree_util.tree_map(lambda c: _pad(jnp.asarray(c)[lo:hi], pad), tree)


def _pad(x: jax.Array, pad: int) -> jax.Array:
    """Pad the leading axis with copies of the first row (valid data, results discarded)."""
    if pad == 0:
        return x
    return jnp.concatenate([x, jnp.repeat(x[:1], pad, axis=0)], axis=0)
