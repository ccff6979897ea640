"""The program's sizes (images_per_call, step_segments) and its per-run state (engine.state)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ronan_jax.engine.config import InversionConfig
from ronan_jax.engine.generator import Generator
from ronan_jax.engine.invert import invert
from ronan_jax.engine.program import (
    compiled_program,
    default_max_batch,
    images_per_call,
    step_segments,
)
from ronan_jax.engine.state import init_state, inversion_step


@pytest.mark.parametrize(
    ("config", "devices", "backend", "expected"),
    [
        (InversionConfig(max_batch=64, restarts=8), 1, None, 8),
        (InversionConfig(max_batch=64, restarts=8), 4, None, 32),
        (InversionConfig(max_batch=70, restarts=8), 1, None, 8),  # rounded down
        (InversionConfig(max_batch=5, restarts=8), 1, None, 1),  # at least one image
        (InversionConfig(max_batch=5, restarts=8), 3, None, 3),
        (InversionConfig(restarts=8), 1, "cpu", 64 // 8),  # 0: the backend's default
        (InversionConfig(restarts=3), 1, "cpu", 64 // 3),
        (InversionConfig(restarts=8), 2, "gpu", 4096 // 8 * 2),
    ],
)
def test_images_per_call_is_max_batch_over_restarts_per_device(config, devices, backend, expected):
    assert images_per_call(config, devices, backend) == expected
    max_batch = config.max_batch or default_max_batch(backend)
    assert expected == max(1, max_batch // config.restarts) * devices


@pytest.mark.parametrize(
    ("steps", "unroll", "check_every", "loop", "expected"),
    [
        (25, 10, 10, "chunked", [10, 10, 5]),
        (25, 7, 10, "chunked", [7, 3, 7, 3, 5]),  # cut at unroll and at every check step
        (25, 10, 20, "chunked", [10, 10, 5]),
        (25, 10, 20, "scan", [20, 5]),  # scan: one call per check interval
        (5, 10, 50, "scan", [5]),
    ],
)
def test_step_segments_cut_at_check_steps_and_unroll(steps, unroll, check_every, loop, expected):
    config = InversionConfig(steps=steps, unroll=unroll, check_every=check_every, loop=loop)
    assert step_segments(config, loop) == expected
    assert step_segments(config) == expected  # an explicit loop is the config's own


def _linear_generator() -> Generator:
    w = jax.random.normal(jax.random.key(0), (6, 16)) * 0.5

    def apply(params, z, condition):
        return jax.nn.sigmoid(z @ params["w"]).reshape(z.shape[0], 4, 4, 1)

    return Generator("linear", apply, {"w": w}, (6,), (4, 4, 1))


def _assert_run_axis(state, n: int) -> None:
    leaves = jax.tree_util.tree_leaves(state)
    assert len(leaves) > 6  # the optimiser state is included
    for leaf in leaves:
        assert leaf.ndim >= 1 and leaf.shape[0] == n, leaf.shape


def test_every_leaf_of_the_run_table_has_the_run_axis_through_every_piece():
    gen = _linear_generator()
    config = InversionConfig(steps=4, restarts=3, loop="chunked", unroll=2)
    program = compiled_program(gen, config)
    keys = jnp.stack([jax.random.key(i) for i in range(2)])
    state = program.initial_state(keys)
    _assert_run_axis(state, 6)
    targets = jnp.full((2, 4, 4, 1), 0.5)
    run_img = jnp.repeat(jnp.arange(2, dtype=jnp.int32), 3)
    idx = jnp.array([0, 2, 5, 5], jnp.int32)  # the last one is padding
    sub, t, _ = program.gather(state, targets, None, run_img, idx)
    _assert_run_axis(sub, 4)
    sub = program.advance(sub, gen.params, t, None, 2, False)
    _assert_run_axis(sub, 4)
    np.testing.assert_array_equal(sub.opt_state[0].count, [2, 2, 2, 2])  # one Adam count per run
    state = program.scatter(state, sub, jnp.array([0, 2, 5, 6], jnp.int32))  # 6: dropped
    _assert_run_axis(state, 6)
    np.testing.assert_array_equal(state.opt_state[0].count, [2, 0, 2, 0, 0, 2])


def test_a_diverged_run_is_frozen_optimiser_state_included():
    optimizer = optax.adam(0.1)
    z0 = jnp.array([[1.0, 2.0], [3.0, 4.0]])

    def losses(z):  # run 1's loss is NaN
        return jnp.sum(z**2, axis=1) * jnp.array([1.0, jnp.nan])

    state = inversion_step(losses, optimizer, init_state(optimizer, z0))
    np.testing.assert_array_equal(state.alive, [True, False])
    np.testing.assert_array_equal(state.z[1], z0[1])
    np.testing.assert_array_equal(state.opt_state[0].count, [1, 0])
    assert not np.array_equal(state.z[0], z0[0])


def test_per_run_adam_equals_one_adam_over_the_whole_table():
    # All runs advance together, so each run's own step count equals a shared one: the
    # vmapped optimiser gives, bit for bit, the inputs of optax over the stacked table (both
    # compiled: op-by-op eager arithmetic rounds differently from a fused program).
    optimizer = optax.adam(0.1)
    target = jax.random.normal(jax.random.key(1), (5, 3))
    z0 = jax.random.normal(jax.random.key(2), (5, 3))

    def losses(z):
        return jnp.mean((jnp.tanh(z) - target) ** 2, axis=1)

    @jax.jit
    def shared_step(z, opt_state):
        grads = jax.grad(lambda v: jnp.sum(losses(v)))(z)
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimizer.update(grads, opt_state, z)
        return optax.apply_updates(z, updates), opt_state

    step = jax.jit(lambda s: inversion_step(losses, optimizer, s))
    state = init_state(optimizer, z0)
    z, opt_state = z0, optimizer.init(z0)
    for _ in range(5):
        state = step(state)
        z, opt_state = shared_step(z, opt_state)
    np.testing.assert_array_equal(state.z, z)


def test_invert_chunks_at_images_per_call():
    gen = _linear_generator()
    config = InversionConfig(steps=3, restarts=2, max_batch=4, loop="chunked", unroll=3, seed=11)
    images = np.random.default_rng(0).random((5, 4, 4, 1)).astype(np.float32)
    assert images_per_call(config) == 2
    program = compiled_program(gen, config)
    res = invert(gen, images, config)
    assert res.loss.shape == (5,) and np.all(res.steps_run == 3)
    # Chunks of 2, 2 and 1 images: the ragged last chunk is padded to the bucket of 1 image,
    # so the table was started for 2 and for 1 images and no larger.
    assert program.start._cache_size() == 2
