"""The curated Python API alone runs profile -> audit -> report and gets the CLI's rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from e2e_helpers import (
    BATCH,
    RESTARTS,
    SAMPLES,
    STEPS,
    db_rows,
    invoke,
    write_mixed_folder,
)

import ronan_jax

COMPARED = ("path", "member", "sha256", "verdict", "error_kind", "loss", "ref_loss",
            "calibrated_loss", "z", "critical_value", "p_value")


def test_the_curated_api_names_what_a_python_user_needs():
    for name in ("Generator", "InversionConfig", "invert", "attribute", "Profile",
                 "build_profile", "load_model", "plan_audit", "run_audit", "AuditConfig",
                 "ResultStore", "write_report"):
        assert callable(getattr(ronan_jax, name)), name
    with pytest.raises(AttributeError):
        _ = ronan_jax.no_such_name


def test_profile_audit_report_through_the_python_api_equal_the_cli(world, tmp_path: Path):
    folder = write_mixed_folder(world, tmp_path / "images")
    (folder / "broken.png").write_bytes(b"not an image")
    model = ronan_jax.load_model(str(world.model))
    reference = ronan_jax.load_reference(str(world.reference))
    config = ronan_jax.InversionConfig(steps=STEPS, restarts=RESTARTS)
    profile = ronan_jax.build_profile(model, reference, n=SAMPLES, config=config)
    shipped = ronan_jax.Profile.load(world.profile)  # the CLI-built profile of the same model
    assert profile.calibrated_losses == pytest.approx(shipped.calibrated_losses, rel=1e-6)
    profile_path = profile.save(tmp_path / "profile.json")

    db = tmp_path / "api.sqlite"
    audit = ronan_jax.AuditConfig(model=str(world.model), reference=str(world.reference),
                                  profile=str(profile_path), db=str(db), batch_size=BATCH)
    plan = ronan_jax.plan_audit(audit, [str(folder)])
    with ronan_jax.ResultStore(db) as store:
        summary = ronan_jax.run_audit([str(folder)], plan, store)
    assert summary.processed == 17 and summary.errors == 1
    report, n = ronan_jax.write_report(db, tmp_path / "api.html")
    assert n == 17 and "calibrated loss" in report.read_text().lower()

    cli_db = tmp_path / "cli.sqlite"
    result = invoke(["audit", folder, "--model", world.model, "--reference", world.reference,
                     "--profile", profile_path, "--db", cli_db, "--batch-size", BATCH, "--quiet"])
    assert result.exit_code == 0, result.output
    api_rows = sorted(db_rows(db), key=lambda r: r["path"])
    cli_rows = sorted(db_rows(cli_db), key=lambda r: r["path"])
    assert len(api_rows) == len(cli_rows) == 17
    for a, c in zip(api_rows, cli_rows, strict=True):
        for key in COMPARED:
            if isinstance(a[key], float):
                assert np.isclose(a[key], c[key], rtol=0, atol=0), (key, a["path"])
            else:
                assert a[key] == c[key], (key, a["path"])
    assert [r["verdict"] for r in api_rows].count("error") == 1
