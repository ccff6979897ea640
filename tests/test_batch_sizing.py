"""Memory-bounded batching: halving on out-of-memory errors, device-memory sizing, host-memory
sizing on CPU with a faked limit (the sizes chosen, the out-of-memory decision), and an audit
that splits its calls giving the rows of one that does not."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import numpy as np
import pytest
from e2e_helpers import (
    BATCH,
    RESTARTS,
    TinyWorld,
    invoke,
    write_mixed_folder,
)

from ronan_jax.attribution import build as build_mod
from ronan_jax.attribution.build import build_profile
from ronan_jax.attribution.profile import ProfileMismatchError
from ronan_jax.attribution.verdicts import INTERNAL, OUT_OF_MEMORY
from ronan_jax.audit import AuditConfig, AuditPlan, run_audit
from ronan_jax.audit import rows as audit_mod
from ronan_jax.audit.sizing import SAFETY, BatchSizer, is_out_of_memory, plan, run_fitting
from ronan_jax.engine.config import InversionConfig
from ronan_jax.engine.memory import (
    DEVICE_MEMORY,
    HOST_MEMORY,
    InsufficientMemoryError,
    MemoryBudget,
    call_bytes,
    host_memory,
    meminfo_available,
    memory_budget,
    parse_bytes,
    per_image_bytes,
    size_text,
    traced_bytes,
)
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
    sizer = plan(model, reference, CFG, memory=lambda: MemoryBudget(free + 1000, 1000, DEVICE_MEMORY))
    assert sizer.source == "device-memory" and sizer.images_per_call == 4
    assert sizer.to_dict()["bytes_per_image"] == per and sizer.to_dict()["bytes_free"] == free
    assert sizer.to_dict()["bytes_fixed"] == fixed
    assert sizer.config_for(CFG).max_batch == 4 * RESTARTS
    roomy = plan(model, reference, CFG, memory=lambda: MemoryBudget(10**12))
    assert roomy.cap is None and roomy.images_per_call == 64 // RESTARTS  # the CPU default
    assert "bytes_per_image" not in roomy.to_dict()  # the traced bound sufficed: no compile
    unknown = plan(model, reference, CFG, memory=lambda: None)  # no memory known: the engine's
    assert unknown.source == "engine" and unknown.cap is None and "bytes_limit" not in unknown.to_dict()
    cpu = plan(model, reference, CFG)  # on CPU: the host's available RAM, plenty for 16x16
    assert cpu.cap is None and cpu.to_dict()["memory_source"] == HOST_MEMORY


# -- host memory (CPU): a faked limit ----------------------------------------------------


def test_host_memory_is_mem_available_or_the_environment_override(monkeypatch):
    meminfo = "MemTotal:       24683000 kB\nMemFree:   1000 kB\nMemAvailable:   20971520 kB\n"
    assert meminfo_available(meminfo) == 20971520 * 1024
    assert meminfo_available("MemTotal: 1 kB\n") is None
    assert host_memory({"RONAN_HOST_MEMORY": "3G"}) == MemoryBudget(
        3 * 2**30, 0, HOST_MEMORY, "RONAN_HOST_MEMORY=3G")
    assert host_memory({"RONAN_HOST_MEMORY": "3G"}).usable == int(SAFETY * 3 * 2**30)
    assert [parse_bytes(t) for t in ("512M", "1.5GiB", "2k", "1073741824", "1 gb")] == [
        512 * 2**20, 3 * 2**29, 2048, 2**30, 2**30]
    for bad in ("lots", "0", "-1G", "1X"):
        with pytest.raises(ValueError):
            parse_bytes(bad)
    monkeypatch.setenv("RONAN_HOST_MEMORY", "5G")
    assert memory_budget() == MemoryBudget(5 * 2**30, 0, HOST_MEMORY, "RONAN_HOST_MEMORY=5G")
    monkeypatch.delenv("RONAN_HOST_MEMORY")
    found = memory_budget()  # this CPU's MemAvailable
    assert found.source == HOST_MEMORY and found.note == "available RAM" and found.limit > 2**28


def test_the_traced_bound_holds_the_compiled_step(world):
    model = load_generator(world.model)
    for images in (1, 4):
        assert traced_bytes(model, CFG, images) >= call_bytes(model, CFG, images)


def test_host_memory_sizes_calls_from_the_compiled_step(world):
    model, reference = load_generator(world.model), load_generator(world.reference)
    fixed, per = per_image_bytes(model, CFG)
    free = math.ceil((fixed + 2.5 * per) / SAFETY)  # room for 2 images, not 3
    sizer = plan(model, reference, CFG, memory=lambda: MemoryBudget(free, 0, HOST_MEMORY, "faked"))
    assert sizer.source == HOST_MEMORY and sizer.cap == 2 and sizer.images_per_call == 2
    assert sizer.config_for(CFG).max_batch == 2 * RESTARTS
    d = sizer.to_dict()
    assert (d["bytes_fixed"], d["bytes_per_image"], d["bytes_usable"]) == (fixed, per, int(SAFETY * free))
    assert d["bytes_one_image"] == call_bytes(model, CFG, 1) and d["memory_note"] == "faked"
    # the audit's batch bounds the calls too: batches of 2 fit, nothing to lower
    assert plan(model, reference, CFG, memory=lambda: MemoryBudget(free, 0, HOST_MEMORY),
                most=2).cap is None


def test_an_image_that_alone_does_not_fit_in_host_memory_is_never_run(world):
    model, reference = load_generator(world.model), load_generator(world.reference)
    one = call_bytes(model, CFG, 1)
    sizer = plan(model, reference, CFG, memory=lambda: MemoryBudget(one, 0, HOST_MEMORY, "faked"))
    assert sizer.cap == 0 and sizer.images_per_call == 0 and sizer.source == HOST_MEMORY
    called: list[int] = []
    pieces = run_fitting(lambda lo, hi, cfg: called.append(hi - lo), 5, CFG, sizer)
    assert called == [] and [(p.lo, p.hi, p.error_kind) for p in pieces] == [(0, 5, OUT_OF_MEMORY)]
    assert f"needs an estimated {size_text(one)}" in pieces[0].error
    assert f"{size_text(int(SAFETY * one))} a call may use" in pieces[0].error
    assert "available host memory, faked" in pieces[0].error
    assert sizer.to_dict()["refusal"] == pieces[0].error
    # a device reports running out of memory itself: there one image is tried
    device = plan(model, reference, CFG, memory=lambda: MemoryBudget(one, 0, DEVICE_MEMORY))
    assert device.cap == 1 and device.source == DEVICE_MEMORY


def test_a_profile_build_sizes_its_calls_from_host_memory_with_the_same_losses(world, monkeypatch):
    model, reference = load_generator(world.model), load_generator(world.reference)
    fixed, per = per_image_bytes(model, CFG)
    room_for_two = MemoryBudget(math.ceil((fixed + 2.5 * per) / SAFETY), 0, HOST_MEMORY)
    sizes: list[int] = []
    real = build_mod.calibrated_losses

    def counted(m, r, images, cfg, **kw):
        sizes.append(len(images))
        return real(m, r, images, cfg, **kw)

    monkeypatch.setattr(build_mod, "calibrated_losses", counted)
    small = build_profile(model, reference, n=5, config=CFG, memory=lambda: room_for_two)
    assert sizes == [2, 2, 1]
    sizes.clear()
    unsized = build_profile(model, reference, n=5, config=CFG, memory=lambda: None)
    assert sizes == [5]
    np.testing.assert_allclose(small.losses, unsized.losses, rtol=1e-5)
    np.testing.assert_allclose(small.ref_losses, unsized.ref_losses, rtol=1e-5)
    with pytest.raises(InsufficientMemoryError, match="cannot build a profile"):
        build_profile(model, reference, n=5, config=CFG,
                      memory=lambda: MemoryBudget(fixed, 0, HOST_MEMORY))


def test_ronan_profile_without_room_for_one_image_exits_2_with_one_line(world, tmp_path, monkeypatch):
    monkeypatch.setenv("RONAN_HOST_MEMORY", "1K")
    out = tmp_path / "p.json"
    result = invoke(["profile", "--model", world.model, "--reference", world.reference,
                     "--samples", 3, "--steps", 2, "--restarts", 1, "--quiet", "-o", out])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "cannot build a profile" in lines[0]
    assert "RONAN_HOST_MEMORY=1K" in lines[0] and "available host memory" in lines[0]
    assert not out.exists()


def test_ronan_profile_says_when_memory_lowers_its_calls_and_keeps_the_losses(world, tmp_path, monkeypatch):
    model, reference = load_generator(world.model), load_generator(world.reference)
    cfg = InversionConfig(steps=2, restarts=1)
    fixed = max(per_image_bytes(g, cfg)[0] for g in (model, reference.for_shape(tuple(model.output_shape))))
    per = max(per_image_bytes(g, cfg)[1] for g in (model, reference.for_shape(tuple(model.output_shape))))
    room_for_two = math.ceil((fixed + 2.5 * per) / SAFETY)
    args = ["profile", "--model", world.model, "--reference", world.reference,
            "--samples", 5, "--steps", 2, "--restarts", 1]
    monkeypatch.setenv("RONAN_HOST_MEMORY", str(room_for_two))
    lowered = invoke([*args, "-o", tmp_path / "lowered.json"])
    assert lowered.exit_code == 0, lowered.output
    text = " ".join(lowered.output.split())  # the console wraps long lines
    assert text.count("Memory:") == 1, lowered.output
    line = text[text.index("Memory:"):].split(").", 1)[0]
    assert line.startswith("Memory: 2 images per engine call (one image's compiled step needs")
    assert f"the most that fit in {size_text(int(SAFETY * room_for_two))}" in line
    assert f"host RAM (RONAN_HOST_MEMORY={room_for_two}" in line
    monkeypatch.delenv("RONAN_HOST_MEMORY")
    free = invoke([*args, "-o", tmp_path / "free.json"])
    assert free.exit_code == 0 and "Memory:" not in free.output, free.output
    a = json.loads((tmp_path / "lowered.json").read_text())
    b = json.loads((tmp_path / "free.json").read_text())
    np.testing.assert_allclose(a["losses"], b["losses"], rtol=1e-5)
    np.testing.assert_allclose(a["ref_losses"], b["ref_losses"], rtol=1e-5)


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


def test_an_audit_without_room_for_one_image_gives_out_of_memory_rows_and_ends_normally(
    engine, folder, tmp_path, monkeypatch
):
    def never(*args, **kw):
        raise AssertionError("no engine call may start")

    monkeypatch.setattr(audit_mod, "attribute", never)
    monkeypatch.setenv("RONAN_HOST_MEMORY", "1K")
    summary, rows, telemetry = audit(engine, folder, tmp_path / "h.sqlite")
    assert summary.processed == 16 and summary.error_kinds == {OUT_OF_MEMORY: 16}
    assert len(rows) == 16 and {r["error_kind"] for r in rows} == {OUT_OF_MEMORY}
    assert all("RONAN_HOST_MEMORY=1K" in r["error"] for r in rows)
    assert summary.batch_sizing["images_per_call"] == 0
    assert summary.batch_sizing["source"] == HOST_MEMORY
    assert [(t["images"], t["calls"]) for t in telemetry] == [(0, 0), (0, 0)]  # nothing inverted
