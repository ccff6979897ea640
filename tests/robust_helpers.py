"""Shared by the robust-mode tests: fit only the post-processing parameters, as the engine's
Adam would, to check what the family alone can reach."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


def adam_fit(loss: Callable[[jax.Array], jax.Array], phi: jax.Array, steps: int = 300,
             lr: float = 0.1) -> jax.Array:
    """``phi`` after ``steps`` Adam steps (the engine's lr and moments) on ``loss(phi).sum()``."""

    @jax.jit
    def step(p, m, v, t):
        g = jax.grad(lambda q: loss(q).sum())(p)
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
        mhat, vhat = m / (1 - 0.9**t), v / (1 - 0.999**t)
        return p - lr * mhat / (jnp.sqrt(vhat) + 1e-8), m, v

    m = v = jnp.zeros_like(phi)
    for t in range(1, steps + 1):
        phi, m, v = step(phi, m, v, jnp.float32(t))
    return phi
