"""The driver: invert a batch of images through the compiled program, chunk by chunk.

The paper's Eq. 1 for every image x: min over z of the loss between G(z) and x, by Adam on
the generator's input from R random restarts. :func:`invert` cuts the images into chunks of
:func:`~ronan_jax.engine.program.images_per_call`, pads each to a power-of-two bucket (bounded
recompiles), runs the program's step segments on the runs still going, applies the
early-stopping rules (:mod:`ronan_jax.engine.stopping`) between segments and returns NumPy
arrays in input order. Every image's starting inputs come from its own PRNG key
(:func:`image_prng_key`), so its result never depends on what else is in the batch.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from ronan_jax.engine.config import InversionConfig
from ronan_jax.engine.generator import Generator
from ronan_jax.engine.mesh import data_mesh, replicate, round_up, shard_rows
from ronan_jax.engine.metrics import Metric
from ronan_jax.engine.program import (
    Program,
    compiled_program,
    default_max_batch,
    images_per_call,
    step_segments,
)
from ronan_jax.engine.robust import inversion_generator, resized_to, robust_condition
from ronan_jax.engine.stopping import StoppingRules

# default_max_batch lives in ronan_jax.engine.program; it is re-exported here for callers
# that still import it from this module.
__all__ = ["InversionResult", "default_max_batch", "image_prng_key", "invert"]


class InversionResult(NamedTuple):
    """Per-image outcome of :func:`invert` (NumPy arrays, images in input order)."""

    loss: np.ndarray  # [B] best loss over restarts and steps (inf if every restart diverged)
    best_input: np.ndarray  # [B, *input_shape]
    reconstruction: np.ndarray  # [B, H, W, C] generator output at best_input
    restart_losses: np.ndarray  # [B, R] loss of each run at the last step
    restart_best: np.ndarray  # [B, R] best loss of each run
    diverged: np.ndarray  # [B] bool: every run diverged; the image must not be judged
    steps_run: np.ndarray  # [B, R] optimisation steps each run actually ran
    # R is the restarts, plus one with a warm start (column 0, the run from the encoding).
    # [B, 2] int: the (height, width) a robust mode's resample stage resized each image down
    # to and back at best_input (its own size: no resize); (0, 0) without a resample stage.
    resized_to: np.ndarray | None = None


def image_prng_key(seed: int, image: np.ndarray) -> jax.Array:
    """The PRNG key of one image: from the run seed and the image's content only, so its
    result never depends on batch neighbours, batch size, device count or input order."""
    digest = hashlib.sha256(np.ascontiguousarray(image, dtype=np.float32).tobytes()).digest()
    a, b = (int.from_bytes(digest[i : i + 4], "little") for i in (0, 4))
    key = jax.random.key(seed)
    return jax.random.fold_in(jax.random.fold_in(key, a), b)


def invert(
    generator: Generator,
    images: np.ndarray | jax.Array,
    config: InversionConfig | None = None,
    conditions: Any = None,
    metric: Metric | None = None,
    stop_below: np.ndarray | None = None,
    codecs: np.ndarray | None = None,
) -> InversionResult:
    """Reverse-engineer ``generator``'s input for every image: the input whose output is
    closest to the image (the paper's Eq. 1, min over z of the loss between G(z) and x).

    Args:
        generator: the model; its output shape must equal the images' shape.
        images: ``[B, H, W, C]`` float in [0, 1].
        config: settings (``InversionConfig()`` when omitted).
        conditions: optional per-image fixed conditioning ``[B, ...]`` (else the generator's).
        metric: a metric function overriding ``config.metric`` (e.g. a perceptual metric).
        stop_below: optional per-image loss thresholds: an image stops as soon as its best
            loss is below its threshold. Exact for threshold decisions: the best loss only
            falls with more steps, so "below the threshold" can never be undone.
        codecs: optional per-image JPEG specs ``[B, SPEC_SIZE]``
            (:func:`~ronan_jax.engine.jpeg.jpeg_spec`) for a robust mode that re-codes as
            JPEG; None means no image was a JPEG file. Other modes ignore them.

    Returns per image the best loss, input and reconstruction, and per-restart losses and
    steps run. Images go through in chunks of :func:`images_per_call`; inside a chunk only
    runs still going are computed (stopped runs are compacted out, in power-of-two buckets).

    With several devices (``config.devices``, default all local ones) each chunk holds
    ``max_batch // restarts`` images per device and its runs are split over the devices
    (:mod:`ronan_jax.engine.mesh`); tables are padded to a multiple of the device count and the
    padding is never returned. Results equal those of one device.

    With ``config.warm_start`` and an encoder on the generator, every image gets a run
    started at its encoding (column 0 of the per-run arrays) besides its restarts; the
    restarts start where they would without it.
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
    if conditions is None and generator.condition is not None:
        conditions = generator.batched_condition(n)
    conditions = robust_condition(config.robust, conditions, n, codecs, images)
    model, generator = generator, inversion_generator(generator, config)  # robust: [z, phi]
    if stop_below is not None:
        stop_below = np.broadcast_to(np.asarray(stop_below, np.float64), (n,))
    program = compiled_program(generator, config, metric)
    mesh = data_mesh(config.devices)
    per_call = images_per_call(config, 1 if mesh is None else mesh.size, runs=program.runs)
    parts = []
    for lo in range(0, n, per_call):
        hi = min(lo + per_call, n)
        parts.append(
            _invert_chunk(
                program,
                generator,
                images[lo:hi],
                _slice_tree(conditions, lo, hi),
                config,
                None if stop_below is None else stop_below[lo:hi],
                mesh,
            )
        )
    r = program.runs
    if not parts:
        return InversionResult(
            np.zeros((0,), np.float32),
            np.zeros((0, *generator.input_shape), np.float32),
            np.zeros((0, *generator.output_shape), np.float32),
            np.zeros((0, r), np.float32),
            np.zeros((0, r), np.float32),
            np.zeros((0,), bool),
            np.zeros((0, r), np.int32),
            np.zeros((0, 2), np.int32),
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
        resized_to=resized_to(model, config.robust, best_input, conditions),
    )


def _invert_chunk(
    program: Program,
    generator: Generator,
    images: np.ndarray,
    conditions: Any,
    config: InversionConfig,
    stop_below: np.ndarray | None,
    mesh: Mesh | None = None,
) -> tuple[np.ndarray, ...]:
    """Invert up to :func:`images_per_call` images (``mesh.size`` devices); returns
    per-image arrays. With a mesh, every run table is padded to a multiple of its device
    count and split over its devices (the parameters replicated); without one, nothing is
    placed explicitly."""
    b, r = images.shape[0], program.runs
    d = 1 if mesh is None else mesh.size
    b_pad = round_up(_bucket(b, images_per_call(config, d, runs=r)), d)
    place: Callable[[Any], Any] = (lambda x: x) if mesh is None else functools.partial(shard_rows, mesh=mesh)
    params = generator.params if mesh is None else replicate(generator.params, mesh)
    warm = r > config.restarts
    enc_params = None
    if warm:
        enc = generator.encoder
        enc_params = enc.params if mesh is None else replicate(enc.params, mesh)
    keys = jnp.stack([image_prng_key(config.seed, img) for img in images])
    targets = place(_pad(jnp.asarray(images), b_pad - b))
    cond = place(_slice_tree(conditions, 0, b, b_pad - b))
    state = place(program.initial_state(place(_pad(keys, b_pad - b)), enc_params,
                                        targets if warm else None, cond if warm else None))
    n_runs = b * r  # padded images' runs exist in the state but are never scheduled
    run_img = place(jnp.repeat(jnp.arange(b_pad, dtype=jnp.int32), r))
    active = np.ones(n_runs, bool)
    steps_run = np.zeros(n_runs, np.int32)
    rules = StoppingRules.for_chunk(config, stop_below, runs=r)

    done = 0
    segments = step_segments(config)
    for i, k in enumerate(segments):
        idx_active = np.flatnonzero(active)
        if idx_active.size == 0:
            break
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
        if rules.checks_at(done):
            best = np.asarray(state.best_loss)[:n_runs].astype(np.float64)
            active &= np.asarray(state.alive)[:n_runs]
            active = rules.decide(active, best, done)

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


def _bucket(n: int, capacity: int) -> int:
    """Padded batch size: the next power of two up to ``capacity`` (bounded recompiles)."""
    size = 1
    while size < n:
        size *= 2
    return min(size, capacity)
