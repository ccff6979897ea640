"""Which run a report shows, and the facts about it the report lists (model, reference,
profile, settings, results key, work done). Reads the store read-only (a report never
changes its database); never imports JAX."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ronan_jax.results.store import ResultStore, RunInfo, escape_text
from ronan_jax.results.telemetry import summarize


class RunSelectionError(ValueError):
    """A database holds no run, or none that matches the requested id or key prefix."""


def pick_run(db: str | os.PathLike[str], run: str | None = None) -> tuple[RunInfo, list[RunInfo]]:
    """The run whose results to show (``run``: an id or results-key prefix; default the
    latest) and every run of the database."""
    with ResultStore(db, readonly=True) as store:
        runs = store.runs()
    if not runs:
        raise RunSelectionError(f"{escape_text(os.fspath(db))} holds no audit runs")
    if run is None:
        return runs[-1], runs
    matches = [r for r in runs if r.run_id.startswith(run) or r.config_key.startswith(run)]
    if not matches:
        raise RunSelectionError(
            f"no run or results key starts with {run!r}; runs: "
            + ", ".join(f"{r.run_id[:12]} (key {r.config_key[:12]})" for r in runs)
        )
    return matches[-1], runs


def work_note(db: str | os.PathLike[str], config_key: str) -> str | None:
    """The telemetry of every run of ``config_key`` in one sentence (None without any)."""
    with ResultStore(db, readonly=True) as store:
        work = summarize(store.iter_telemetry(config_key))
    return work.describe() if work.steps_budget else None


def _mapping(value: Any) -> Mapping[str, Any]:
    """``value`` when it is a mapping, else ``{}`` (a configuration another tool wrote)."""
    return value if isinstance(value, Mapping) else {}


def _identity(value: Any) -> str:
    """A model's name and weights hash as the report lists them."""
    if isinstance(value, Mapping):
        return f"{value.get('name')} ({str(value.get('param_hash'))[:12]})"
    return "unknown" if value is None else str(value)


def run_metadata(db: str | os.PathLike[str], chosen: RunInfo, runs: list[RunInfo]) -> dict[str, Any]:
    """The report's table of facts about ``chosen`` (one of ``runs``, all in ``db``); an
    entry the run's configuration lacks is shown as unknown, never a failure."""
    config = chosen.config
    info = _mapping(config.get("info"))
    ref = config.get("reference")
    meta = {
        "database": str(Path(db).absolute()),
        "model": _identity(config.get("model")),
        "model spec": info.get("model_spec"),
        "reference": "none (uncalibrated)" if not ref else _identity(ref),
        "profile": f"{info.get('profile_path', '')} (id {_mapping(config.get('profile')).get('id')})",
        "settings": config.get("settings"),
        "resize": config.get("resize"),
        "results key": chosen.config_key,
        "runs with these settings": sum(1 for r in runs if r.config_key == chosen.config_key),
        "latest run": f"{chosen.run_id} ({chosen.created})",
        "versions": config.get("versions"),
    }
    work = work_note(db, chosen.config_key)
    if work:
        meta["inversion work"] = work
    return meta


def run_profile(chosen: RunInfo) -> dict[str, Any] | None:
    """The profile a run judged with, as recorded (the whole profile when the run kept it);
    None when the run recorded none."""
    config = chosen.config
    profile = _mapping(config.get("info")).get("profile") or config.get("profile")
    return dict(profile) if isinstance(profile, Mapping) else None
