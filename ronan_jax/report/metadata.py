"""Which run a report shows, and the facts about it the report lists (model, reference,
profile, settings, results key, work done). Reads the store read-only (a report never
changes its database); never imports JAX."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ronan_jax.results.store import ResultStore, RunInfo
from ronan_jax.results.telemetry import summarize


class RunSelectionError(ValueError):
    """A database holds no run, or none that matches the requested id or key prefix."""


def pick_run(db: str | os.PathLike[str], run: str | None = None) -> tuple[RunInfo, list[RunInfo]]:
    """The run whose results to show (``run``: an id or results-key prefix; default the
    latest) and every run of the database."""
    with ResultStore(db, readonly=True) as store:
        runs = store.runs()
    if not runs:
        raise RunSelectionError(f"{db} holds no audit runs")
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


def run_metadata(db: str | os.PathLike[str], chosen: RunInfo, runs: list[RunInfo]) -> dict[str, Any]:
    """The report's table of facts about ``chosen`` (one of ``runs``, all in ``db``)."""
    config = chosen.config
    info = config.get("info") or {}
    ref = config.get("reference")
    meta = {
        "database": str(Path(db).absolute()),
        "model": f"{config['model'].get('name')} ({str(config['model'].get('param_hash'))[:12]})",
        "model spec": info.get("model_spec"),
        "reference": "none (uncalibrated)" if not ref
        else f"{ref.get('name')} ({str(ref.get('param_hash'))[:12]})",
        "profile": f"{info.get('profile_path', '')} (id {config.get('profile', {}).get('id')})",
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
    """The profile a run judged with, as recorded (the whole profile when the run kept it)."""
    config = chosen.config
    return (config.get("info") or {}).get("profile") or config.get("profile")
