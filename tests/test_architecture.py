"""The layout's import rules (ARCHITECTURE.md), checked by walking every module's imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "ronan_jax"

# Which rooms of ronan_jax each room may import (itself always). Function-level imports count.
ALLOWED: dict[str, set[str]] = {
    "inputs": set(),
    "engine": set(),
    "attribution": {"engine"},
    "results": {"attribution", "inputs"},
    "models": {"engine", "zoo"},
    "zoo": {"engine", "models", "attribution", "inputs"},
    "audit": {"engine", "inputs", "attribution", "results", "models"},
    "report": {"attribution", "results"},
    "cli": {"engine", "inputs", "attribution", "audit", "results", "report", "models", "zoo"},
}
JAX_FREE = ("ronan_jax.attribution.profile", "ronan_jax.attribution.grubbs",
            "ronan_jax.attribution.verdicts", "ronan_jax.attribution.second_chance", "ronan_jax.results", "ronan_jax.report")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, top_level_only: bool = False) -> list[tuple[str, list[str]]]:
    """(module, names) of every import in a file (``import x`` gives names [])."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = []
    for node in nodes:
        if isinstance(node, ast.Import):
            out.extend((a.name, []) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.module, [a.name for a in node.names]))
    return out


def room_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "ronan_jax" and len(parts) > 1 else None


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_lives_in_a_room():
    loose = [p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"]
    assert loose == []
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()} == set(ALLOWED)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_rooms_import_only_the_rooms_below_them(path: Path):
    room = room_of(module_name(path))
    if room is None:  # ronan_jax/__init__.py: the curated API, lazy
        return
    wrong = []
    for module, names in imports(path):
        target = room_of(module)
        if module == "ronan_jax":  # ``from ronan_jax import zoo``
            target = names[0] if names else None
        if target and target != room and target not in ALLOWED[room]:
            wrong.append(module)
    assert wrong == [], f"{room}/ may not import {wrong}"


def test_no_module_outside_the_engine_reaches_a_private_engine_name():
    files = [p for p in [*SOURCES, *ROOT.glob("benchmarks/**/*.py"), *ROOT.glob("tests/*.py")]
             if room_of(module_name(p)) != "engine"]
    private = [
        (str(p.relative_to(ROOT)), module, name)
        for p in files
        for module, names in imports(p)
        if module.startswith("ronan_jax.engine")
        for name in names
        if name.startswith("_")
    ]
    assert private == []


def test_models_take_only_the_engine_s_data_types():
    used = {module for p in (PACKAGE / "models").rglob("*.py") for module, _ in imports(p)
            if room_of(module) == "engine"}
    assert used <= {"ronan_jax.engine.generator", "ronan_jax.engine.config"}


def _source(module: str) -> Path | None:
    path = ROOT / Path(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    return path if path.is_file() else None


def loaded_with(module: str, seen: set[str] | None = None) -> set[str]:
    """The ronan_jax modules importing ``module`` loads: its parent packages and, through
    them, every module-level import."""
    seen = set() if seen is None else seen
    parts = module.split(".")
    for k in range(1, len(parts) + 1):
        name = ".".join(parts[:k])
        path = _source(name)
        if name in seen or path is None:
            continue
        seen.add(name)
        for imported, names in imports(path, top_level_only=True):
            if imported.startswith("ronan_jax"):
                loaded_with(imported, seen)
                for n in names:  # ``from ronan_jax.pkg import module``
                    if _source(f"{imported}.{n}") is not None:
                        loaded_with(f"{imported}.{n}", seen)
    return seen


def _starting_points(module: str) -> list[str]:
    path = ROOT / Path(*module.split("."))
    return sorted(module_name(p) for p in path.rglob("*.py")) if path.is_dir() else [module]


@pytest.mark.parametrize("module", JAX_FREE)
def test_numpy_only_modules_never_import_jax_at_load_time(module: str):
    heavy = sorted(
        (m, name)
        for start in _starting_points(module)
        for m in loaded_with(start)
        for name, _ in imports(_source(m), top_level_only=True)
        if name.split(".")[0] in {"jax", "flax", "optax", "torch"}
    )
    assert heavy == []


def test_cli_modules_import_nothing_heavy_at_load_time():
    heavy = [
        (str(p.relative_to(ROOT)), name)
        for p in (PACKAGE / "cli").glob("*.py")
        for name, _ in imports(p, top_level_only=True)
        if (name.startswith("ronan_jax") and not name.startswith("ronan_jax.cli"))
        or name.split(".")[0] in {"jax", "numpy", "torch", "flax"}
    ]
    assert heavy == []


def test_cli_copies_of_library_constants_equal_the_library_s():
    """The CLI spells a few choices itself (importing the library would slow ``--help``)."""
    from converters.api import CONVERTERS
    from converters.formats import FORMATS
    from ronan_jax.audit import DEFAULT_DB, DEFAULT_MODEL_SPEC
    from ronan_jax.cli import app, demo, profile, results
    from ronan_jax.engine.metrics import METRICS
    from ronan_jax.results.export import EXPORT_FORMATS
    from ronan_jax.zoo.demo import DEMO_N

    assert (app.DEFAULT_DB, app.DEFAULT_MODEL_SPEC) == (DEFAULT_DB, DEFAULT_MODEL_SPEC)
    assert set(profile.METRIC_NAMES) == set(METRICS)
    assert results.EXPORT_FORMATS == EXPORT_FORMATS
    assert demo.DEMO_N == DEMO_N
    assert tuple(CONVERTERS) == FORMATS
    from ronan_jax.engine.config import CLASS_RULES

    assert app.CLASS_RULES == CLASS_RULES
    from ronan_jax.engine.config import ROBUST_MODES

    assert app.ROBUST_MODES == ROBUST_MODES
