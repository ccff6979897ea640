"""Hand-edited rows (a verdict outside the vocabulary, no verdict, no path): one rule everywhere.

Such a row is *invalid*: it reads as an error of kind ``invalid-row``, is counted as an
error, and is never done, so an audit judges the image again and its row replaces it.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from pathlib import Path

import pytest

from ronan_jax.audit.resume import resume_keys
from ronan_jax.results.merge import merge
from ronan_jax.results.store import (
    INVALID_ROW,
    ROW_KEYS,
    TELEMETRY_KEYS,
    ResultStore,
    canonical_json,
)

CONFIG = {"model": {"name": "m"}}


def store_db(path: Path) -> str:
    """A results database with one row of each verdict, then rows a hand edit smuggled in
    past the CHECK constraint (``PRAGMA ignore_check_constraints``)."""
    with ResultStore(path) as store:
        run = store.start_run(CONFIG)
        store.write_batch(run.config_key, [
            {"path": "/d/b.png", "verdict": "belonging"},
            {"path": "/d/n.png", "verdict": "non-belonging"},
            {"path": "/d/e.png", "verdict": "error", "error_kind": "decode"},
            {"path": "/d/div.png", "verdict": "error", "error_kind": "diverged"},
        ], run_id=run.run_id)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA ignore_check_constraints = 1")
    for p, verdict in (("/d/maybe.png", "maybe"), ("/d/upper.png", "BELONGING"),
                       ("/d/empty.png", "")):
        conn.execute("INSERT INTO results (config_key, path, verdict) VALUES (?, ?, ?)",
                     (run.config_key, p, verdict))
    conn.commit()
    conn.close()
    return run.config_key


def other_tool_db(path: Path) -> str:
    """A database another (or an older) tool wrote: the same tables without constraints,
    holding a NULL verdict, a verdict stored as bytes, a row without a path, text in
    number columns."""
    key = "k" * 64
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE runs (run_id, created, config_key, config_json)")
    conn.execute(f"CREATE TABLE results (config_key, {', '.join(ROW_KEYS)})")
    conn.execute(f"CREATE TABLE telemetry (run_id, config_key, {', '.join(TELEMETRY_KEYS)})")
    conn.execute("INSERT INTO runs VALUES ('r1', '2024-01-01', ?, ?)", (key, canonical_json(CONFIG)))
    rows = [
        {"path": "/d/ok.png", "member": "", "verdict": "belonging", "z": 0.5, "calibrated_loss": 1.0},
        {"path": "/d/null.png", "member": "", "verdict": None},
        {"path": "/d/blob.png", "member": "", "verdict": b"belonging"},
        {"path": None, "member": "", "verdict": "belonging"},
        {"path": "/d/text.png", "member": None, "verdict": "non-belonging", "z": "high",
         "calibrated_loss": "n/a", "width": "wide", "resized": "yes"},
    ]
    for r in rows:
        names = ["config_key", *r]
        conn.execute(f"INSERT INTO results ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                     [key, *r.values()])
    conn.execute("INSERT INTO telemetry (run_id, config_key, batch, images, steps_run, "
                 "steps_budget) VALUES ('r1', ?, 0, 'many', x'00', 10)", (key,))
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()
    return key


INVALID = {"/d/maybe.png", "/d/upper.png", "/d/empty.png"}


@pytest.mark.parametrize("readonly", [False, True])
def test_invalid_rows_read_as_errors_of_a_named_kind(tmp_path, readonly):
    db = tmp_path / "r.db"
    key = store_db(db)
    with ResultStore(db, readonly=readonly) as store:
        rows = {r["path"]: r for r in store.iter_results(key)}
        assert len(rows) == 7
        for p in INVALID:
            assert rows[p]["verdict"] == "error" and rows[p]["error_kind"] == INVALID_ROW == "invalid-row"
            assert "verdict" in rows[p]["error"]
        assert "'maybe'" in rows["/d/maybe.png"]["error"]
        assert rows["/d/e.png"]["error_kind"] == "decode"  # a real error keeps its kind


def test_counts_rows_and_done_keys_agree_on_one_rule(tmp_path):
    db = tmp_path / "r.db"
    key = store_db(db)
    with ResultStore(db, readonly=True) as store:
        rows = list(store.iter_results(key))
        counts = store.count_by_verdict(key)
        assert counts == {"belonging": 1, "non-belonging": 1, "error": 5}
        assert counts == {**dict.fromkeys(counts, 0), **Counter(r["verdict"] for r in rows)}
        assert sum(counts.values()) == len(rows)
        assert store.count_by_verdict() == counts
        done = store.done_keys(key)
        assert done == {(r["path"], r["member"]) for r in rows if r["error_kind"] != INVALID_ROW}
        assert not {p for p, _ in done} & INVALID
        assert store.done_keys(key, include_errors=False) == {("/d/b.png", ""), ("/d/n.png", "")}
        errors = {r["path"] for r in store.iter_results(key, verdict="error")}
        assert errors == INVALID | {"/d/e.png", "/d/div.png"}
        assert [r["path"] for r in store.iter_results(key, verdict="belonging")] == ["/d/b.png"]
        # an audit resumed re-judges the invalid rows (and retries errors worth retrying)
        assert resume_keys(store, key) == {("/d/b.png", ""), ("/d/n.png", ""), ("/d/div.png", "")}


def test_judging_an_invalid_row_again_replaces_it(tmp_path):
    db = tmp_path / "r.db"
    key = store_db(db)
    with ResultStore(db) as store:
        store.write_batch(key, [{"path": p, "verdict": "belonging"} for p in INVALID])
        assert store.count_by_verdict(key) == {"belonging": 4, "non-belonging": 1, "error": 2}
        assert len(list(store.iter_results(key))) == 7
        assert {p for p, _ in store.done_keys(key)} >= INVALID


def test_a_database_another_tool_wrote_reads_by_the_same_rule(tmp_path):
    db = tmp_path / "other.db"
    key = other_tool_db(db)
    with ResultStore(db, readonly=True) as store:
        rows = list(store.iter_results(key))
        by_path = {r["path"]: r for r in rows}
        assert store.count_by_verdict(key) == {"belonging": 1, "non-belonging": 1, "error": 3}
        assert store.done_keys(key) == {("/d/ok.png", ""), ("/d/text.png", "")}
        assert {by_path[p]["error_kind"] for p in ("/d/null.png", "/d/blob.png", "")} == {INVALID_ROW}
        assert "path" in by_path[""]["error"]
        assert by_path["/d/text.png"]["member"] == "" and by_path["/d/text.png"]["z"] == "high"
        assert all(isinstance(v, str | int | float | bool | None) for r in rows for v in r.values())
        assert store.iter_telemetry()[0]["images"] == "many"


def test_merge_carries_an_invalid_row_as_an_invalid_row_error(tmp_path):
    shard = tmp_path / "s.db"
    key = store_db(shard)
    merged = tmp_path / "all.db"
    assert merge(merged, [shard]) == 7
    with ResultStore(merged, readonly=True) as store:
        rows = {r["path"]: r for r in store.iter_results(key)}
        assert {rows[p]["error_kind"] for p in INVALID} == {INVALID_ROW}
        assert not {p for p, _ in store.done_keys(key)} & INVALID  # still not done
        assert store.count_by_verdict(key)["error"] == 5
    other = tmp_path / "other.db"
    okey = other_tool_db(other)
    merged2 = tmp_path / "all2.db"
    merge(merged2, [other])  # the row without a path cannot be keyed: it is left out
    with ResultStore(merged2, readonly=True) as store:
        assert store.count_by_verdict(okey) == {"belonging": 1, "non-belonging": 1, "error": 2}
    with sqlite3.connect(merged2) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT COUNT(*) FROM results WHERE verdict NOT IN "
                            "('belonging', 'non-belonging', 'error')").fetchone()[0] == 0
    conn.close()
