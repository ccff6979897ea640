"""A report of rows, configurations and database names holding undecodable bytes."""

from __future__ import annotations

import os

from ronan_jax.report import render_report, write_report
from ronan_jax.results.store import ResultStore

BAD = "bad\udcff\udcfename.png"
BAD_SHOWN = "bad\\xff\\xfename.png"
CONFIG = {
    "model": {"name": "m", "param_hash": "ab" * 32},
    "reference": None,
    "profile": {"id": "p"},
    "settings": {"steps": 3},
    "info": {"profile_path": f"/profiles/{BAD}.json", "inputs": [f"/d/{BAD}"]},
}


def test_a_database_with_undecodable_names_is_reported(tmp_path):
    db = tmp_path / f"audit-{BAD}.db"
    with ResultStore(db) as store:
        run = store.start_run(CONFIG)
        store.write_batch(run.config_key, [
            {"path": f"/d/{BAD}", "verdict": "belonging", "calibrated_loss": 0.5, "z": -1.0},
            {"path": "/d/ok.png", "verdict": "non-belonging", "calibrated_loss": 2.0, "z": 3.0},
            {"path": "/d/e.png", "verdict": "error", "error_kind": "decode", "error": BAD},
        ], run_id=run.run_id)
    out, n = write_report(db, tmp_path / "r.html")
    html = out.read_text(encoding="utf-8")  # valid UTF-8 throughout
    assert n == 3
    assert html.count(BAD_SHOWN) >= 4  # row path, error message, profile path, database name


def test_rows_given_directly_are_escaped_too(tmp_path):
    rows = [{"path": f"/d/{BAD}", "verdict": "error", "error_kind": "decode",
             "error": f"cannot open {BAD}"}]
    out = render_report(rows, None, {"note": BAD}, out_path=tmp_path / "r.html")
    assert BAD_SHOWN in out.read_text(encoding="utf-8")
    assert os.path.exists(out)
