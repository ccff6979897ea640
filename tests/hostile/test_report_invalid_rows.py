"""A report of a hand-edited database: invalid rows are listed as errors, nothing crashes."""

from __future__ import annotations

import io
import json

from ronan_jax.report import compute_summary, render_report, write_report
from ronan_jax.results.export import export_rows
from ronan_jax.results.store import INVALID_ROW, ResultStore
from tests.hostile.test_store_invalid_rows import other_tool_db, store_db


def test_a_report_shows_invalid_rows_as_errors_of_their_kind(tmp_path):
    db = tmp_path / "r.db"
    store_db(db)
    out, n = write_report(db, tmp_path / "r.html", labels={"/d/b.png": True, "/d/maybe.png": False})
    html = out.read_text()
    assert n == 7 and INVALID_ROW in html and "maybe" in html


def test_a_report_of_a_database_another_tool_wrote(tmp_path):
    db = tmp_path / "other.db"
    other_tool_db(db)
    out, n = write_report(db, tmp_path / "r.html", labels={"/d/ok.png": True, "/d/text.png": False})
    assert n == 5 and INVALID_ROW in out.read_text()


def test_a_run_whose_configuration_lacks_what_a_report_lists(tmp_path):
    db = tmp_path / "r.db"
    with ResultStore(db) as store:
        run = store.start_run({"model": "just a name", "info": "not a dict", "profile": 3})
        store.write_batch(run.config_key, [{"path": "/a", "verdict": "belonging"}])
    with ResultStore(tmp_path / "s.db") as store:
        empty = store.start_run({})
        store.write_batch(empty.config_key, [{"path": "/a", "verdict": "belonging"}])
    assert write_report(db, tmp_path / "r.html")[1] == 1
    assert write_report(tmp_path / "s.db", tmp_path / "s.html")[1] == 1


def test_compute_summary_counts_rows_it_cannot_read_as_invalid_row_errors(tmp_path):
    rows = [{"path": "a.png", "verdict": "maybe"}, {"path": "b.png", "verdict": None},
            {"path": "c.png", "verdict": "belonging", "calibrated_loss": 1.0, "z": 0.1}]
    s = compute_summary(rows, {"a.png": True, "c.png": True})
    assert s.counts == {"belonging": 1, "non-belonging": 0, "error": 2}
    assert s.error_kinds == {INVALID_ROW: 2} and s.n_labelled == 1
    out = render_report(rows, None, {}, out_path=tmp_path / "r.html")
    assert out.read_text().count(INVALID_ROW) >= 2


def test_export_of_invalid_rows(tmp_path):
    db = tmp_path / "other.db"
    key = other_tool_db(db)
    with ResultStore(db, readonly=True) as store:
        buf = io.StringIO()
        assert export_rows(store.iter_results(key), "jsonl", buf) == 5
    records = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert sum(r["error_kind"] == INVALID_ROW for r in records) == 3
