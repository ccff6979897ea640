"""SQLite failing under the store (disk full, a lock held elsewhere, a damaged file, a closed
connection) comes out as StoreError naming the database, and a failed batch leaves nothing."""

from __future__ import annotations

import os
import re
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ronan_jax.results.store import ResultStore, StoreError

CONFIG = {"model": {"name": "m"}}
FULL = "database or disk is full"


def rows(n: int, prefix: str = "/d/", text: str = "") -> list[dict[str, Any]]:
    return [{"path": f"{prefix}{i:05d}.png", "verdict": "error", "error_kind": "decode",
             "error": text} for i in range(n)]


class FailingConnection:
    """A connection whose ``execute`` raises ``error`` on the ``nth`` statement matching
    ``pattern`` (counting from 1), passing everything else through."""

    def __init__(self, conn: sqlite3.Connection, pattern: str, nth: int = 1,
                 error: sqlite3.Error | None = None) -> None:
        self._conn, self._pattern, self._nth = conn, re.compile(pattern), nth
        self._error = error or sqlite3.OperationalError(FULL)
        self.seen = 0

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        if self._pattern.search(sql):
            self.seen += 1
            if self.seen == self._nth:
                raise self._error
        return self._conn.execute(sql, params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def integrity(db: Path) -> str:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


def one_line_store_error(db: Path, call: Callable[[], Any], match: str) -> StoreError:
    with pytest.raises(StoreError, match=match) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and db.name in message, message
    assert not isinstance(info.value, sqlite3.Error)
    return info.value


def test_an_injected_failure_mid_batch_writes_none_of_it(tmp_path):
    db = tmp_path / "r.db"
    with ResultStore(db) as store:
        key = store.start_run(CONFIG).config_key
        store.write_batch(key, rows(2, "/kept/"))
        real = store._conn
        store._conn = FailingConnection(real, r"^INSERT INTO results", nth=3)
        one_line_store_error(db, lambda: store.write_batch(key, rows(5)), FULL)
        assert store._conn.seen == 3  # it failed mid-batch, after two rows went in
        store._conn = real
        assert [r["path"] for r in store.iter_results(key)] == ["/kept/00000.png", "/kept/00001.png"]
        assert store.write_batch(key, rows(5)) == 5  # the store is usable afterwards
    assert integrity(db) == "ok"


@pytest.mark.parametrize("statement", [r"^BEGIN", r"^COMMIT"])
def test_a_failure_to_begin_or_commit_is_a_store_error_too(tmp_path, statement):
    db = tmp_path / "r.db"
    with ResultStore(db) as store:
        key = store.start_run(CONFIG).config_key
        real = store._conn
        store._conn = FailingConnection(real, statement)
        one_line_store_error(db, lambda: store.write_batch(key, rows(3)), FULL)
        store._conn = real
        assert not real.in_transaction
        assert list(store.iter_results(key)) == []
    assert integrity(db) == "ok"


def test_injected_failures_in_every_other_operation(tmp_path):
    db = tmp_path / "r.db"
    with ResultStore(db) as store:
        run = store.start_run(CONFIG)
        real = store._conn
        calls: dict[str, Callable[[], Any]] = {
            "start_run": lambda: store.start_run(CONFIG),
            "write_telemetry": lambda: store.write_telemetry(run.run_id, run.config_key,
                                                             {"batch": 0, "images": 1}),
            "runs": store.runs,
            "done_keys": lambda: store.done_keys(run.config_key),
            "iter_results": lambda: list(store.iter_results(run.config_key)),
            "iter_telemetry": store.iter_telemetry,
            "count_by_verdict": store.count_by_verdict,
            "result_keys": store.result_keys,
        }
        for call in calls.values():
            store._conn = FailingConnection(real, ".")
            one_line_store_error(db, call, FULL)
            store._conn = real
            call()  # works again
        assert len(store.runs()) == 2 and store.iter_telemetry()[0]["images"] == 1
    assert integrity(db) == "ok"


def test_a_really_full_database_refuses_the_batch_and_keeps_what_it_had(tmp_path):
    db = tmp_path / "r.db"
    with ResultStore(db) as store:
        run = store.start_run(CONFIG)
        store.write_batch(run.config_key, rows(3, "/kept/"))
        pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
        store._conn.execute(f"PRAGMA max_page_count = {pages}")  # the disk is full now
        big = "x" * 2000
        one_line_store_error(db, lambda: store.write_batch(run.config_key, rows(200, text=big)),
                             "full")
        one_line_store_error(db, lambda: store.start_run({**CONFIG, "notes": big * 50}), "full")
        one_line_store_error(
            db, lambda: [store.write_telemetry(run.run_id, run.config_key,
                                               {"batch": i, "memory_source": big})
                         for i in range(50)], "full")
        assert store.count_by_verdict(run.config_key)["error"] == 3
        assert len(store.runs()) == 1
        store._conn.execute("PRAGMA max_page_count = 1073741823")  # space again
        assert store.write_batch(run.config_key, rows(200, text=big)) == 200
    assert integrity(db) == "ok"


def test_a_lock_held_by_another_process_is_a_store_error(tmp_path):
    db = tmp_path / "r.db"
    with ResultStore(db) as store:
        run = store.start_run(CONFIG)
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another writer mid-transaction
    try:
        with ResultStore(db, timeout=0.05) as store:  # reading is fine under WAL
            assert len(store.runs()) == 1
            one_line_store_error(db, lambda: store.write_batch(run.config_key, rows(2)), "locked")
            one_line_store_error(db, lambda: store.start_run(CONFIG), "locked")
            one_line_store_error(db, lambda: store.write_telemetry(
                run.run_id, run.config_key, {"batch": 0}), "locked")
        fresh = tmp_path / "fresh.db"
        holder = sqlite3.connect(fresh, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            one_line_store_error(fresh, lambda: ResultStore(fresh, timeout=0.05), "locked")
        finally:
            holder.execute("ROLLBACK")
            holder.close()
    finally:
        other.execute("ROLLBACK")
        other.close()
    with ResultStore(db) as store:
        assert list(store.iter_results()) == []
    assert integrity(db) == "ok"


def test_a_damaged_file_fails_only_with_store_errors(tmp_path):
    db = tmp_path / "r.db"
    with ResultStore(db) as store:
        run = store.start_run(CONFIG)
        store.write_batch(run.config_key, rows(400, text="y" * 200))
    size = db.stat().st_size
    with open(db, "r+b") as fh:  # scribble over everything past the first page
        fh.seek(4096)
        fh.write(os.urandom(size - 4096))
    failures = sum(damaged_reads(db, run.config_key, readonly) for readonly in (False, True))
    assert failures > 0  # the damage was met, and every time as a StoreError


def damaged_reads(db: Path, key: str, readonly: bool) -> int:
    """Open `db` and use it; how many steps failed (each only with a StoreError)."""
    try:
        store = ResultStore(db, readonly=readonly)
    except StoreError as e:
        assert db.name in str(e)
        return 1
    failures = 0
    with store:
        calls = [store.runs, store.count_by_verdict, store.result_keys,
                 lambda: store.done_keys(key), lambda: list(store.iter_results()),
                 store.iter_telemetry]
        if not readonly:
            calls.append(lambda: store.write_batch(key, rows(3)))
        for call in calls:
            try:
                call()
            except StoreError as e:
                assert db.name in str(e) and "\n" not in str(e)
                failures += 1
    return failures


def test_a_closed_store_raises_store_errors(tmp_path):
    db = tmp_path / "r.db"
    store = ResultStore(db)
    key = store.start_run(CONFIG).config_key
    store.close()
    store.close()  # idempotent
    one_line_store_error(db, lambda: store.write_batch(key, rows(1)), "closed")
    one_line_store_error(db, store.runs, "closed")
    one_line_store_error(db, lambda: list(store.iter_results()), "closed")


def test_a_merge_that_fails_midway_leaves_the_target_as_it_was(tmp_path):
    shard = tmp_path / "s.db"
    with ResultStore(shard) as store:
        run = store.start_run(CONFIG)
        store.write_batch(run.config_key, rows(4))
        store.write_telemetry(run.run_id, run.config_key, {"batch": 0})
    db = tmp_path / "all.db"
    with ResultStore(db) as store:
        real = store._conn
        store._conn = FailingConnection(real, r"^INSERT OR IGNORE INTO telemetry")
        one_line_store_error(db, lambda: store.copy_from(shard), FULL)
        store._conn = real
        assert store.runs() == [] and list(store.iter_results()) == []
        assert store.copy_from(shard) == 4  # the shard was detached: merging again works
    assert integrity(db) == "ok"
