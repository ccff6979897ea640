"""Shared test setup: strict dtype promotion, and the tiny world of checkpoints and profiles
(built once per session, :func:`e2e_helpers.tiny_world`) with its loaded engine."""

import jax
import pytest
from e2e_helpers import TinyWorld, load_engine, tiny_world

jax.config.update("jax_numpy_dtype_promotion", "strict")


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> TinyWorld:
    return tiny_world(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def engine(world: TinyWorld):
    """(model, reference, profile, config) of the tiny world, as an audit loads them."""
    return load_engine(world)
