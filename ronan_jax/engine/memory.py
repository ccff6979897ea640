"""What one inversion call costs in device memory: the compiled step's own memory analysis.

Used to size calls before a run (:func:`ronan_jax.audit.sizing.plan`): the step is compiled
for one and for ``probe`` images and the difference gives the bytes per image.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ronan_jax.engine.config import InversionConfig
from ronan_jax.engine.generator import Generator
from ronan_jax.engine.program import compiled_program, step_segments


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


def _tree_bytes(tree: Any) -> int:
    return sum(
        int(np.prod(leaf.shape)) * jnp.dtype(leaf.dtype).itemsize
        for leaf in jax.tree_util.tree_leaves(tree)
        if hasattr(leaf, "shape") and not jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)
    )


def call_bytes(generator: Generator, config: InversionConfig, images: int) -> int:
    """Device bytes one inversion call of ``images`` images needs besides the resident
    parameters: the compiled step's memory analysis (arguments, outputs, temporaries) plus
    the run table the call is gathered from. Compiles the step for that shape."""
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
    segments = step_segments(config)  # the first advance call, as invert makes it
    k, measure_last = segments[0], len(segments) == 1
    compiled = program.advance.lower(state, generator.params, targets, cond, k, measure_last).compile()
    stats = compiled.memory_analysis()
    total = (
        stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        - stats.alias_size_in_bytes
        + stats.temp_size_in_bytes
    )
    return max(1, int(total) - _tree_bytes(generator.params) + _tree_bytes(state))


def per_image_bytes(generator: Generator, config: InversionConfig, probe: int = 8) -> tuple[int, int]:
    """(fixed bytes, bytes per image) of one call: a line through :func:`call_bytes` at one
    and ``probe`` images (two compiles), so fixed workspace is not counted per image."""
    one = call_bytes(generator, config, 1)
    many = call_bytes(generator, config, probe)
    per = max(1, math.ceil((many - one) / (probe - 1)))
    return max(0, one - per), per
