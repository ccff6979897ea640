"""Data parallelism over this process's devices: a 1-D ``"data"`` mesh and placement helpers.

:func:`data_mesh` is a :class:`jax.sharding.Mesh` over a ``"data"`` axis of the process's
local devices. The driver (:func:`ronan_jax.engine.invert.invert`) pads each run table to a
multiple of the device count, splits its leading axis (images, runs) over the mesh with
:func:`shard_rows`, replicates the parameters (:func:`replicate`) and lets ``jax.jit``
propagate the sharding: each device optimises its own runs. No arithmetic mixes runs (Adam is
elementwise, the loss sum's gradient is per run), so results are those of one device. With
one device the engine runs exactly as it does without this module.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


# -- devices ----------------------------------------------------------------------------------


def device_count(requested: int = 0) -> int:
    """How many local devices to use: ``requested``, or all of this process's when 0.

    Raises ValueError when more are requested than the process has.
    """
    available = jax.local_device_count()
    if requested < 0:
        raise ValueError(f"devices must be >= 0 (0: all), got {requested}")
    if requested > available:
        raise ValueError(
            f"{requested} devices requested, but this process has {available} "
            f"({jax.default_backend()})"
        )
    return requested or available


@functools.lru_cache(maxsize=16)
def _mesh(devices: tuple[Any, ...]) -> Mesh:
    return Mesh(np.array(devices), (DATA_AXIS,))


def data_mesh(requested: int = 0) -> Mesh | None:
    """The 1-D ``"data"`` mesh over the first ``requested`` local devices (0: all), or None
    when that is one device (the engine's single-device path)."""
    n = device_count(requested)
    if n == 1:
        return None
    return _mesh(tuple(jax.local_devices()[:n]))


def round_up(n: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that is >= ``n``."""
    return -(-n // multiple) * multiple


def shard_rows(tree: Any, mesh: Mesh) -> Any:
    """Every leaf of ``tree`` split along its leading axis over the mesh (its length must be
    a multiple of the device count). Every table the driver places has a leading row axis,
    the optimiser state included (one Adam step count per run), so nothing is replicated
    here; a leaf without one is an error. A leaf already placed so is not copied."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec(DATA_AXIS)))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every leaf of ``tree`` copied whole to each device of the mesh (no copy when it is
    already there)."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))
