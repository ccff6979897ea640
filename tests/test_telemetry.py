"""Throughput telemetry: memory probes, step counts, per-batch rows of an audit, and the work
saved by early stopping in the summary, the CLI paragraph and the report."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from e2e_helpers import BATCH, RESTARTS, STEPS, TinyWorld, write_mixed_folder

from ronan_jax.attribution.profile import Profile
from ronan_jax.audit import AuditConfig, AuditPlan, run_audit
from ronan_jax.models.checkpoint import load_generator
from ronan_jax.results.store import ResultStore
from ronan_jax.results.telemetry import (
    MEMORY_RSS,
    WorkSummary,
    memory_in_use,
    step_counts,
    summarize,
)


def test_memory_in_use_falls_back_to_the_process_on_cpu():
    used, peak, source = memory_in_use()
    assert source == MEMORY_RSS  # the CPU backend reports no device memory
    assert 10 * 2**20 < used <= peak  # a Python process with JAX holds tens of MiB at least


def test_memory_in_use_prefers_the_device():
    class Device:
        def memory_stats(self):
            return {"bytes_in_use": 123, "peak_bytes_in_use": 456, "bytes_limit": 1000}

    assert memory_in_use(Device()) == (123, 456, "device")


def test_step_counts_and_summaries():
    class Result:
        def __init__(self, steps_run):
            self.steps_run = np.asarray(steps_run)
            self.loss = np.zeros(len(steps_run))

    model, ref = Result([[10, 5], [10, 10]]), Result([[5, 5], [10, 5]])
    assert step_counts([model, ref], restarts=2, steps=10) == (35 + 25, 80)
    assert step_counts([model, None], restarts=2, steps=10) == (35, 40)
    work = summarize([
        {"images": 2, "steps_run": 60, "steps_budget": 80, "seconds": 1.0, "images_per_call": 4},
        {"images": 2, "steps_run": 60, "steps_budget": 80, "seconds": 3.0, "images_per_call": 2,
         "oom_splits": 1},
    ])
    assert work == WorkSummary(2, 4, 120, 160, 4.0, 2, 1)
    assert work.run_fraction == 0.75 and work.images_per_s == 1.0
    assert work.describe() == (
        "Inversion work: 120 of 160 optimisation steps run (75.0% of the full budget, 25.0% "
        "saved by early stopping), 1.00 images/s in the engine, up to 2 image(s) per device "
        "call (1 call(s) split after running out of memory)."
    )
    full = WorkSummary(1, 1, 80, 80, 2.0, None, 0)
    assert "(the full budget)" in full.describe()
    assert summarize([]).describe() == "No image was inverted."


@pytest.fixture(scope="module")
def folder(world: TinyWorld, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = write_mixed_folder(world, tmp_path_factory.mktemp("telemetry"))
    (root / "broken.png").write_bytes(b"not an image")
    return root


def audit(world, folder, db, profile):
    from ronan_jax.attribution.profile import config_from_profile

    model, reference = load_generator(world.model), load_generator(world.reference)
    with ResultStore(db) as store:
        plan = AuditPlan.from_objects(model, reference, profile, config_from_profile(profile),
                                      AuditConfig(model=model.name, batch_size=BATCH))
        summary = run_audit([str(folder)], plan, store)
        return summary, store.iter_telemetry(run_id=summary.run_id), store.runs()[-1]


def test_every_batch_leaves_a_telemetry_row(world, folder, tmp_path):
    summary, telemetry, run = audit(world, folder, tmp_path / "t.sqlite", Profile.load(world.profile))
    assert summary.processed == 17 and summary.inverted == 16  # the broken file is not inverted
    assert len(telemetry) == summary.batches == 2  # the broken file rides along in a batch
    budget = RESTARTS * STEPS * 2  # per image: restarts x steps on the model and the reference
    assert [t["images"] for t in telemetry] == [8, 8]
    for t in telemetry:
        assert t["steps_budget"] == t["images"] * budget and t["steps_run"] == t["steps_budget"]
        assert t["images_per_call"] == 64 // RESTARTS  # the CPU engine's own size
        assert t["memory_source"] == MEMORY_RSS and t["memory_bytes"] > 10 * 2**20
        assert t["memory_peak_bytes"] >= t["memory_bytes"] and t["oom_splits"] == 0
        assert t["calls"] == 1 and t["seconds"] > 0
        assert t["images_per_s"] == pytest.approx(8 / t["seconds"])
    assert summary.steps_run == summary.steps_budget == 16 * budget
    assert summary.work.run_fraction == 1.0 and summary.work.images_per_s > 0
    sizing = summary.batch_sizing
    assert {k: sizing[k] for k in ("images_per_call", "source", "engine_images_per_call",
                                   "devices", "oom_splits")} == {
        "images_per_call": 32, "source": "engine", "engine_images_per_call": 32, "devices": 1,
        "oom_splits": 0}
    # on CPU the host's memory was looked at, and the engine's size fitted in it
    assert sizing["memory_source"] == "host-memory"
    assert 0 < sizing["bytes_traced_bound"] <= sizing["bytes_usable"] < sizing["bytes_free"]
    assert run.config["info"]["batch_sizing"]["source"] == "engine"


def test_early_stopping_shows_as_steps_saved(world, folder, tmp_path):
    from ronan_jax.attribution.profile import config_from_profile
    from ronan_jax.cli import summary_paragraph
    from ronan_jax.report.metadata import work_note

    base = Profile.load(world.profile)
    # successive halving at half the steps: each image keeps 1 of its 2 restarts after 5 steps
    halving = config_from_profile(base).replace(check_every=5, halving_at=(0.5,))
    profile = dataclasses.replace(base, config=halving.result_settings())
    db = tmp_path / "e.sqlite"
    summary, telemetry, _ = audit(world, folder, db, profile)
    per_image = (STEPS + STEPS // 2) * 2  # restart 1 runs 10 steps, restart 2 5; two models
    assert summary.steps_run == 16 * per_image < summary.steps_budget == 16 * RESTARTS * STEPS * 2
    assert [t["steps_run"] for t in telemetry] == [8 * per_image, 8 * per_image]
    assert summary.work.run_fraction == 0.75
    text = summary_paragraph(summary, "tiny-model", "settings")
    assert "Inversion work: 480 of 640 optimisation steps run (75.0% of the full budget, " \
           "25.0% saved by early stopping)" in text
    assert "images/s in the engine, up to 32 image(s) per device call." in text
    assert work_note(str(db), summary.config_key).startswith("Inversion work: 480 of 640")
