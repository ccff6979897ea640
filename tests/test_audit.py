"""The audit pipeline as a library: run_audit, resume, stop, errors as rows, export, labels."""

from __future__ import annotations

import dataclasses
import io
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from e2e_helpers import (
    BATCH,
    TinyWorld,
    make_tar,
    png_bytes,
    write_mixed_folder,
)

from ronan_jax.attribution.profile import ProfileMismatchError
from ronan_jax.audit import AuditConfig, AuditPlan, AuditProgress, run_audit
from ronan_jax.audit import rows as audit_mod
from ronan_jax.audit.plan import run_config
from ronan_jax.audit.resume import count_pending, resume_keys
from ronan_jax.models.checkpoint import load_generator
from ronan_jax.results.export import export_rows
from ronan_jax.results.labels import read_labels
from ronan_jax.results.store import ResultStore, make_config_key
from ronan_jax.zoo.demo import save_png_images


@pytest.fixture(scope="module")
def folder(world: TinyWorld, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = write_mixed_folder(world, tmp_path_factory.mktemp("audit-lib"))
    return root


def audit(engine, folder, db, evidence_dir=None, **kwargs):
    model, reference, profile, config = engine
    cfg = AuditConfig(model=model.name, db=str(db), batch_size=BATCH,
                      keep_evidence=evidence_dir is not None,
                      evidence_dir=None if evidence_dir is None else str(evidence_dir))
    plan = AuditPlan.from_objects(model, reference, profile, config, cfg)
    with ResultStore(db) as store:
        return run_audit([str(folder)], plan, store, **kwargs)


def test_progress_stop_and_resume(engine, folder, tmp_path):
    db = tmp_path / "r.sqlite"
    stop = threading.Event()
    reports: list[AuditProgress] = []

    def progress(p: AuditProgress) -> None:
        reports.append(p)
        if p.done:
            stop.set()  # as Ctrl-C would, during the first batch

    first = audit(engine, folder, db, progress=progress, stop=stop)
    assert first.stopped and first.processed == BATCH and first.batches == 1
    assert reports[0].done == 0 and reports[0].total == 16
    assert reports[-1].done == BATCH and reports[-1].images_per_s > 0
    with ResultStore(db) as store:
        assert sum(store.count_by_verdict().values()) == BATCH

    rest = audit(engine, folder, db)
    assert not rest.stopped and rest.skipped == BATCH and rest.processed == 16 - BATCH
    assert sum(rest.totals.values()) == 16 and rest.config_key == first.config_key
    assert rest.belonging >= 0 and rest.judged == rest.processed
    assert rest.to_dict()["judged"] == rest.judged


def test_profile_mismatch_raises_before_anything_is_stored(engine, folder, tmp_path, world):
    model, reference, profile, config = engine
    db = tmp_path / "m.sqlite"
    with ResultStore(db) as store:
        with pytest.raises(ProfileMismatchError, match="steps"):
            AuditPlan.from_objects(model, reference, profile, config.replace(steps=3))
        with pytest.raises(ProfileMismatchError, match="model weights differ"):
            AuditPlan.from_objects(load_generator(world.other), reference, profile, config)
        plan = AuditPlan.from_objects(model, reference, profile, config)
        stale = dataclasses.replace(plan, config=config.replace(steps=3))
        with pytest.raises(ProfileMismatchError, match="steps"):
            run_audit([str(folder)], stale, store)  # a plan edited after it was checked
        assert store.runs() == []


def test_diverged_images_are_error_rows_and_not_retried(engine, folder, tmp_path, monkeypatch):
    real_attribute = audit_mod.attribute

    def diverging(images, model, reference, profile, config, **kw):
        att = real_attribute(images, model, reference, profile, config, **kw)
        verdict = att.verdict.copy()
        verdict[0] = "error"
        diverged = att.model_result.diverged.copy()
        diverged[0] = True
        return att._replace(verdict=verdict, model_result=att.model_result._replace(diverged=diverged))

    monkeypatch.setattr(audit_mod, "attribute", diverging)
    db = tmp_path / "d.sqlite"
    summary = audit(engine, folder, db, evidence_dir=tmp_path / "ev")
    assert summary.errors == 2 and summary.error_kinds == {"diverged": 2}
    with ResultStore(db) as store:
        errors = list(store.iter_results(verdict="error"))
        assert all("diverged" in r["error"] and r["evidence_path"] is None for r in errors)
        assert len(resume_keys(store, summary.config_key)) == 16  # diverged: not retried


def test_a_failing_batch_becomes_internal_error_rows_and_the_run_goes_on(engine, folder, tmp_path, monkeypatch):
    real_attribute = audit_mod.attribute
    calls = []

    def flaky(images, *args, **kw):
        calls.append(len(images))
        if len(calls) == 1:
            raise RuntimeError("device fell over")
        return real_attribute(images, *args, **kw)

    monkeypatch.setattr(audit_mod, "attribute", flaky)
    db = tmp_path / "f.sqlite"
    summary = audit(engine, folder, db)
    assert summary.processed == 16 and summary.error_kinds == {"internal": BATCH}
    with ResultStore(db) as store:
        errors = list(store.iter_results(verdict="error"))
        assert all("device fell over" in r["error"] for r in errors)
        assert len(resume_keys(store, summary.config_key)) == 16 - BATCH  # internal: retried


def test_run_config_key_covers_what_changes_results(engine):
    model, reference, profile, config = engine

    def key_config(model=model, reference=reference, config=config, resize=False, batch_size=8,
                   workers=None, info=None):
        plan = AuditPlan(AuditConfig(model=model.name, resize=resize, workers=workers), model,
                         reference, profile, config)
        return run_config(plan, info or {}, batch_size)

    base = key_config(info={"a": 1})
    same = key_config(batch_size=64, workers=3)
    assert make_config_key(base) == make_config_key(same)
    for other in (
        key_config(resize=True),
        key_config(config=config.replace(seed=1)),
        key_config(reference=None),
    ):
        assert make_config_key(other) != make_config_key(base)
    json.dumps(base)  # storable


def test_count_pending(folder, tmp_path):
    files = sorted(str(p) for p in folder.glob("*.png"))
    assert count_pending([str(folder)], set()) == 16
    assert count_pending([str(folder), str(folder)], set()) == 16  # listed twice: once
    assert count_pending([str(folder), str(tmp_path / "missing.png")], set()) == 17
    assert count_pending([str(folder)], {(files[0], ""), (files[1], "")}) == 14
    tar = make_tar(tmp_path / "x.tar", {"a.png": b"1"})
    assert count_pending([str(folder), str(tar)], set()) is None


def test_read_labels(tmp_path):
    (tmp_path / "sub").mkdir()
    f = tmp_path / "sub" / "labels.csv"
    f.write_text(
        "path,label\n# comment\n\n"
        "a.png,1\n"
        "/abs/b, with comma.png,non-belonging\n"
        "c.png\tbelonging\n"
        "shard.tar::x/d.png,0\n"
        '"e.png",true\n'
    )
    labels = read_labels(f)
    assert labels == {
        str(tmp_path / "sub" / "a.png"): True,
        "/abs/b, with comma.png": False,
        str(tmp_path / "sub" / "c.png"): True,
        str(tmp_path / "sub" / "shard.tar") + "::x/d.png": False,
        str(tmp_path / "sub" / "e.png"): True,
    }
    f.write_text("a.png,1\nb.png,perhaps\n")
    with pytest.raises(ValueError, match=r"labels.csv:2: unknown label 'perhaps'"):
        read_labels(f)
    with pytest.raises(ValueError, match="cannot read"):
        read_labels(tmp_path / "nope.csv")


def test_export_rows_writes_nulls_for_missing_values():
    rows = [
        {"path": "/x/a.png", "member": "", "verdict": "belonging", "loss": 0.5, "z": -1.0},
        {"path": "/x/b.png", "member": "", "verdict": "error", "z": float("nan"),
         "error_kind": "empty", "error": "zero bytes"},
    ]
    out = io.StringIO()
    assert export_rows(rows, "jsonl", out) == 2
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert records[1]["z"] is None and records[1]["error"] == "zero bytes"
    assert list(records[0])[:4] == ["path", "member", "sha256", "verdict"]
    out = io.StringIO()
    export_rows(rows, "csv", out)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("path,member,sha256,verdict,loss,ref_loss,calibrated_loss,z")
    assert lines[2].split(",")[7] == ""  # NaN z -> empty
    with pytest.raises(ValueError):
        export_rows(rows, "xml", io.StringIO())


def test_audit_config():
    cfg = AuditConfig(model="builtin:dcgan-mnist", db="/data/run.sqlite", keep_evidence=True)
    assert cfg.resolved_evidence_dir() == Path("/data/run-evidence")
    assert AuditConfig(model="m").resolved_evidence_dir() is None
    with pytest.raises(ValueError):
        AuditConfig(model="m", batch_size=0)


def test_save_png_images_round_trip(tmp_path):
    from ronan_jax.inputs import decode_image

    imgs = np.random.default_rng(0).random((2, 16, 16, 1)).astype(np.float32)
    paths = save_png_images(imgs, tmp_path, "x")
    assert [p.name for p in paths] == ["x-000.png", "x-001.png"]
    decoded = decode_image(paths[0].read_bytes(), (16, 16), 1, False).array
    np.testing.assert_allclose(decoded, np.rint(imgs[0] * 255) / 255, atol=1e-6)
    assert paths[0].read_bytes() == png_bytes(imgs[0])


def test_default_batch_size_per_device():
    from ronan_jax.audit import default_batch_size
    from ronan_jax.engine.config import InversionConfig

    assert default_batch_size(InversionConfig(), "cpu") == 16
    assert default_batch_size(InversionConfig(max_batch=256, restarts=8), "gpu") == 32
    assert default_batch_size(InversionConfig(max_batch=4, restarts=8), "gpu") == 1


def test_default_batch_size_gives_every_device_a_full_call(monkeypatch):
    import jax

    from ronan_jax.audit import default_batch_size
    from ronan_jax.engine.config import InversionConfig

    monkeypatch.setattr(jax, "local_device_count", lambda backend=None: 4)
    cfg = InversionConfig(max_batch=256, restarts=8)
    assert default_batch_size(cfg, "gpu") == 4 * 32
    assert default_batch_size(cfg.replace(devices=2), "gpu") == 2 * 32
    assert default_batch_size(cfg, "cpu") == 16
