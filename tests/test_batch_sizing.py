"""Memory-bounded batching: halving on out-of-memory errors, device-memory sizing, and an
audit that splits its calls giving the rows of one that does not."""

from __future__ import annotations

import math
from pathlib import Path

import jax
import numpy as np
import pytest
from e2e_helpers import (
    BATCH,
    RESTARTS,
    TinyWorld,
    write_mixed_folder,
)

from ronan_jax.attribution.profile import ProfileMismatchError
from ronan_jax.attribution.verdicts import INTERNAL, OUT_OF_MEMORY
from ronan_jax.audit import AuditConfig, AuditPlan, run_audit
from ronan_jax.audit import rows as audit_mod
from ronan_jax.audit.sizing import SAFETY, BatchSizer, is_out_of_memory, plan, run_fitting
from ronan_jax.engine.config import InversionConfig
from ronan_jax.engine.memory import call_bytes, per_image_bytes
from ronan_jax.models.checkpoint import load_generator
from ronan_jax.results.store import ResultStore


def oom() -> Exception:
    return jax.errors.JaxRuntimeError(
        "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1073741824 bytes.\n"
        "BufferAssignment OOM Debugging."
    )


# -- run_fitting on a fake engine -------------------------------------------------------------


def test_out_of_memory_errors_are_recognised():
    assert is_out_of_memory(oom())
    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(RuntimeError("Out of memory allocating 12 bytes"))
    assert not is_out_of_memory(RuntimeError("device fell over"))
    assert not is_out_of_memory(ValueError("RESOURCE_EXHAUSTED"))  # not a runtime error


def test_a_call_that_runs_out_of_memory_is_halved_down_to_what_fits():
    calls: list[tuple[int, int, int]] = []

    def fn(lo: int, hi: int, cfg: InversionConfig) -> list[int]:
        calls.append((lo, hi, cfg.max_batch))
        if hi - lo > 3:
            raise oom()
        return list(range(lo, hi))

    sizer = BatchSizer(engine_images=32, restarts=2)
    pieces = run_fitting(fn, 13, InversionConfig(restarts=2), sizer)
    # 13 (fails) -> 7 (fails) -> 4 (fails) -> 2: then every call holds at most 2 images
    assert sizer.images_per_call == 2 and sizer.cap == 2 and sizer.source == OUT_OF_MEMORY
    assert sizer.oom_splits == 3 and sizer.calls == len(calls) == 3 + 7
    # the halves of each failed call, cut to the size learnt
    assert [(p.lo, p.hi) for p in pieces] == [(0, 2), (2, 4), (4, 6), (6, 7), (7, 9), (9, 11), (11, 13)]
    assert [v for p in pieces for v in p.value] == list(range(13))
    assert all(p.error is None for p in pieces)
    # nothing learnt yet: the config as it is; then max_batch = images x restarts per call
    assert calls[:3] == [(0, 13, 0), (0, 7, 14), (0, 4, 8)]
    assert {mb for lo, hi, mb in calls[3:]} == {4}
    again = run_fitting(fn, 5, InversionConfig(restarts=2), sizer)  # the size is kept
    assert [(p.lo, p.hi) for p in again] == [(0, 2), (2, 4), (4, 5)]


def test_the_first_split_halves_what_the_device_was_given():
    sizer = BatchSizer(engine_images=8, restarts=1)  # the engine takes 8 images per call
    tried: list[int] = []

    def fn(lo: int, hi: int, cfg: InversionConfig) -> int:
        tried.append(hi - lo)
        if sizer.images_per_call > 4:
            raise oom()
        return hi - lo

    pieces = run_fitting(fn, 20, InversionConfig(restarts=1), sizer)
    assert tried == [20, 4, 4, 4, 4, 4] and sizer.cap == 4  # 8 -> 4, not 20 -> 10
    assert sum(p.value for p in pieces) == 20


def test_only_an_image_that_alone_does_not_fit_is_an_error():
    def fn(lo: int, hi: int, cfg: InversionConfig) -> list[int]:
        if 5 in range(lo, hi):
            raise oom()
        if 9 in range(lo, hi):
            raise RuntimeError("device fell over")
        return list(range(lo, hi))

    sizer = BatchSizer(engine_images=64, restarts=8)
    pieces = run_fitting(fn, 12, InversionConfig(), sizer)
    assert [i for p in pieces if p.value for i in p.value] == [0, 1, 2, 3, 4, 6, 7, 8, 10, 11]
    bad = [p for p in pieces if p.error]
    assert [(p.lo, p.hi, p.error_kind) for p in bad] == [(5, 6, OUT_OF_MEMORY), (9, 10, INTERNAL)]
    assert "alone (one call of 8 restarts) does not fit in device memory" in bad[0].error
    assert "RESOURCE_EXHAUSTED" in bad[0].error and "\n" not in bad[0].error
    assert bad[1].error == "RuntimeError: device fell over"
    assert sizer.cap == 1


def test_fatal_errors_propagate():
    def fn(lo: int, hi: int, cfg: InversionConfig) -> None:
        raise ProfileMismatchError("steps differ")

    with pytest.raises(ProfileMismatchError):
        run_fitting(fn, 4, InversionConfig(), BatchSizer(8, 8), fatal=(ProfileMismatchError,))


def test_config_for_splits_the_cap_over_devices():
    config = InversionConfig(restarts=4, max_batch=256)
    sizer = BatchSizer(engine_images=128, restarts=4, devices=2)
    assert sizer.config_for(config) is config
    sizer.shrink(10)
    assert sizer.config_for(config).max_batch == 5 * 4  # 5 images per device, 2 devices
    assert sizer.config_for(config).result_settings() == config.result_settings()
    sizer.shrink(50)  # never grows
    assert sizer.images_per_call == 10


# -- device memory ----------------------------------------------------------------------------

CFG = InversionConfig(steps=10, restarts=RESTARTS, loop="chunked", unroll=10)


def test_plan_sizes_calls_from_the_free_device_memory(world):
    model, reference = load_generator(world.model), load_generator(world.reference)
    fixed, per = per_image_bytes(model, CFG)
    # the step's own arrays alone: the 16x16 image target and the runs' inputs and Adam state
    assert per > RESTARTS * (16 * 16 * 4 + 4 * 8 * 4) and fixed >= 0
    assert call_bytes(model, CFG, 4) == pytest.approx(fixed + 4 * per, rel=0.2)
    free = math.ceil((fixed + 5.5 * per) / SAFETY)  # room for 5 images: 4, a power of two
    sizer = plan(model, reference, CFG, memory=lambda: {"bytes_limit": free + 1000, "bytes_in_use": 1000})
    assert sizer.source == "device-memory" and sizer.images_per_call == 4
    assert sizer.to_dict()["bytes_per_image"] == per and sizer.to_dict()["bytes_free"] == free
    assert sizer.to_dict()["bytes_fixed"] == fixed
    assert sizer.config_for(CFG).max_batch == 4 * RESTARTS
    roomy = plan(model, reference, CFG, memory=lambda: {"bytes_limit": 10**12, "bytes_in_use": 0})
    assert roomy.cap is None and roomy.images_per_call == 64 // RESTARTS  # the CPU default
    cpu = plan(model, reference, CFG)  # the CPU reports no memory: the engine's size
    assert cpu.source == "engine" and cpu.cap is None and "bytes_limit" not in cpu.to_dict()


# -- an audit that runs out of memory ------------------------------------------------------


@pytest.fixture(scope="module")
def folder(world: TinyWorld, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = write_mixed_folder(world, tmp_path_factory.mktemp("batching"))
    return root


def audit(engine, folder, db):
    model, reference, profile, config = engine
    with ResultStore(db) as store:
        plan = AuditPlan.from_objects(model, reference, profile, config,
                                      AuditConfig(model=model.name, batch_size=BATCH))
        summary = run_audit([str(folder)], plan, store)
        return summary, list(store.iter_results()), store.iter_telemetry(run_id=summary.run_id)


@pytest.fixture(scope="module")
def unsplit(engine, folder, tmp_path_factory):
    return audit(engine, folder, tmp_path_factory.mktemp("unsplit") / "r.sqlite")


def same_results(a: list[dict], b: list[dict]) -> None:
    assert [(r["path"], r["verdict"]) for r in a] == [(r["path"], r["verdict"]) for r in b]
    for key in ("loss", "ref_loss", "calibrated_loss", "z", "p_value"):
        np.testing.assert_allclose([r[key] for r in a], [r[key] for r in b], rtol=1e-5, err_msg=key)


def test_an_audit_halves_its_calls_on_out_of_memory_and_gets_the_same_results(
    engine, folder, unsplit, tmp_path, monkeypatch
):
    real_attribute = audit_mod.attribute
    seen: list[tuple[int, int]] = []

    def small_device(images, model, reference, profile, config, **kw):
        seen.append((len(images), config.max_batch))
        if len(images) > 2:  # a device that holds 2 images' runs per call
            raise oom()
        return real_attribute(images, model, reference, profile, config, **kw)

    monkeypatch.setattr(audit_mod, "attribute", small_device)
    summary, rows, telemetry = audit(engine, folder, tmp_path / "s.sqlite")
    assert seen[:2] == [(BATCH, 0), (4, 8)]  # 8 fail, 4 fail, then 2s
    assert all(mb == 2 * RESTARTS for n, mb in seen[2:]) and len(seen) == 2 + 4 + 4
    assert summary.processed == 16 and summary.errors == 0 and len(rows) == 16
    assert summary.batch_sizing["images_per_call"] == 2
    assert summary.batch_sizing["source"] == "out-of-memory"
    assert summary.batch_sizing["oom_splits"] == 2 and summary.work.images_per_call == 2
    assert [(t["batch"], t["images_per_call"], t["calls"], t["oom_splits"]) for t in telemetry] == [
        (0, 2, 6, 2),
        (1, 2, 4, 0),
    ]
    same_results(rows, unsplit[1])
    assert summary.steps_run == unsplit[0].steps_run  # the same work, in smaller calls


def test_an_image_that_alone_does_not_fit_is_an_error_row_and_the_audit_goes_on(
    engine, folder, unsplit, world, tmp_path, monkeypatch
):
    real_attribute = audit_mod.attribute
    huge = world.belonging[3]

    def picky_device(images, model, reference, profile, config, **kw):
        if any(np.array_equal(img, huge) for img in images):
            raise oom()
        return real_attribute(images, model, reference, profile, config, **kw)

    monkeypatch.setattr(audit_mod, "attribute", picky_device)
    summary, rows, telemetry = audit(engine, folder, tmp_path / "p.sqlite")
    assert summary.processed == 16 and summary.error_kinds == {OUT_OF_MEMORY: 1}
    errors = [r for r in rows if r["verdict"] == "error"]
    assert [Path(r["path"]).name for r in errors] == ["b-3.png"]
    assert "does not fit in device memory" in errors[0]["error"]
    assert summary.batch_sizing["images_per_call"] == 1 and len(telemetry) == 2
    assert telemetry[0]["images"] == BATCH - 1 and telemetry[1]["images"] == BATCH
    ok = [r for r in unsplit[1] if Path(r["path"]).name != "b-3.png"]
    same_results([r for r in rows if r["verdict"] != "error"], ok)
