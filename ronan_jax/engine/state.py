"""The optimiser state of N runs and one Adam step on all of them (pure functions).

A run is one restart of one image: Adam on the generator's input ``z`` to solve the paper's
Eq. 1, min over z of the loss between G(z) and the image. N = B images x R restarts are one
``[N, *input_shape]`` array. Every leaf of :class:`InversionState`, the optimiser state
included, has that leading run axis by construction: the optimiser is ``jax.vmap``-ed over
runs, so each run has its own Adam step count (all runs still going advance together, so the
counts agree with one shared count). The driver gathers, scatters and freezes runs by
mapping every leaf alike, never by looking at shapes.

Strategy "min": a run's recorded loss is the smallest finite loss it has shown at any step
(:func:`record_best`); an image's loss is the smallest over its restarts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class InversionState(NamedTuple):
    """Optimiser state of N = B*R runs (flattened, image-major); every leaf is ``[N, ...]``."""

    z: jax.Array  # [N, *input_shape] float32: current inputs
    opt_state: Any  # optax state of each run (vmapped init): every leaf [N, ...]
    best_loss: jax.Array  # [N] float32: smallest finite loss seen (inf if none)
    best_z: jax.Array  # [N, *input_shape]: input that produced best_loss
    last_loss: jax.Array  # [N]: loss at the latest step (inf once diverged)
    alive: jax.Array  # [N] bool: still being optimised (False once diverged)


def init_state(optimizer: optax.GradientTransformation, z0: jax.Array) -> InversionState:
    """The state of runs starting at ``z0`` ``[N, *input_shape]``: nothing measured yet."""
    n = z0.shape[0]
    inf = jnp.full((n,), jnp.inf, jnp.float32)
    return InversionState(
        z=z0,
        opt_state=jax.vmap(optimizer.init)(z0),
        best_loss=inf,
        best_z=z0,
        last_loss=inf,
        alive=jnp.ones((n,), bool),
    )


def per_run(mask: jax.Array, like: jax.Array) -> jax.Array:
    """A run mask ``[N]`` reshaped to broadcast against a run leaf ``like`` ``[N, ...]``."""
    return mask.reshape(mask.shape + (1,) * (like.ndim - 1))


def record_best(state: InversionState, losses: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Strategy "min": fold losses measured at ``state.z`` into the best seen so far.

    Returns (finite mask, best_loss, best_z); non-finite losses and dead runs never improve,
    so a diverging run can never count as a low loss.
    """
    finite = jnp.isfinite(losses) & state.alive
    improved = finite & (losses < state.best_loss)
    best_loss = jnp.where(improved, losses, state.best_loss)
    best_z = jnp.where(per_run(improved, state.z), state.z, state.best_z)
    return finite, best_loss, best_z


def measure(state: InversionState, losses: jax.Array) -> InversionState:
    """The state with ``losses`` measured at its current inputs recorded, without a step:
    used after the last step so that its update's input is measured too."""
    finite, best_loss, best_z = record_best(state, losses)
    return state._replace(best_loss=best_loss, best_z=best_z, last_loss=jnp.where(finite, losses, jnp.inf))


def inversion_step(
    loss_fn: Callable[[jax.Array], jax.Array],
    optimizer: optax.GradientTransformation,
    state: InversionState,
) -> InversionState:
    """One optimiser step on every run; records the losses at the inputs it started from.

    ``loss_fn`` maps inputs ``[N, ...]`` to per-run losses ``[N]``; the gradient of their sum
    is each run's own gradient (no term mixes runs). A run whose loss, gradient or next input
    is not finite is frozen (``alive`` False) at its last finite input, its optimiser state
    with it; its non-finite losses never count as low.
    """

    def total(z: jax.Array) -> tuple[jax.Array, jax.Array]:
        losses = loss_fn(z)
        return jnp.sum(jnp.where(jnp.isfinite(losses), losses, 0.0)), losses

    grads, losses = jax.grad(total, has_aux=True)(state.z)
    finite, best_loss, best_z = record_best(state, losses)

    # optax mixes Python scalars with int32 step counts; allow that inside optax only.
    with jax.numpy_dtype_promotion("standard"):
        updates, opt_state = jax.vmap(optimizer.update)(grads, state.opt_state, state.z)
    z_next = optax.apply_updates(state.z, updates)
    axes = tuple(range(1, z_next.ndim))
    alive = finite & jnp.all(jnp.isfinite(z_next), axis=axes)
    z = jnp.where(per_run(alive, z_next), z_next, state.z)
    opt_state = jax.tree_util.tree_map(
        lambda new, old: jnp.where(per_run(alive, new), new, old), opt_state, state.opt_state
    )
    last_loss = jnp.where(finite, losses, jnp.inf)
    return InversionState(z, opt_state, best_loss, best_z, last_loss, alive)
