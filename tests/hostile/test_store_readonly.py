"""Opening a database to read it never changes it: foreign files, damaged headers, read-only media."""

from __future__ import annotations

import hashlib
import io
import os
import re
import sqlite3
import stat
from pathlib import Path

import pytest

import ronan_jax.results.store as store_module
from ronan_jax.results.export import export_rows
from ronan_jax.results.merge import merge
from ronan_jax.results.store import ResultStore, SchemaVersionError, StoreError

CONFIG = {"model": {"name": "m", "param_hash": "ab" * 32}, "settings": {"steps": 3}}


def fingerprint(path: Path) -> tuple[str, int, list[str]]:
    """What a read must not change: the bytes, the mtime and the files beside it."""
    return (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns,
            sorted(p.name for p in path.parent.iterdir()))


def foreign_sqlite(tmp_path: Path) -> Path:
    path = tmp_path / "foreign.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE things (x)")
        conn.execute("INSERT INTO things VALUES (1)")
    conn.close()
    return path


def results_db(path: Path, rows: int = 3) -> str:
    with ResultStore(path) as store:
        run = store.start_run(CONFIG)
        store.write_batch(run.config_key, [
            {"path": f"/d/{i}.png", "verdict": "belonging", "calibrated_loss": 0.1 * i, "z": i}
            for i in range(rows)
        ], run_id=run.run_id)
        store.write_telemetry(run.run_id, run.config_key, {"batch": 0, "images": rows})
    return run.config_key


def hostile_files(tmp_path: Path) -> dict[str, Path]:
    files = {"foreign": foreign_sqlite(tmp_path)}
    files["text"] = tmp_path / "notes.txt"
    files["text"].write_text("these are notes, not a database\n" * 20)
    files["empty"] = tmp_path / "empty.db"
    files["empty"].touch()
    files["noise"] = tmp_path / "noise.db"
    files["noise"].write_bytes(b"SQLite format 3\x00" + os.urandom(4000))  # a damaged header
    files["other-version"] = tmp_path / "v99.db"
    with sqlite3.connect(files["other-version"]) as conn:
        conn.execute("PRAGMA user_version = 99")
        conn.execute("CREATE TABLE whatever (x)")
    conn.close()
    return files


KINDS = ["foreign", "text", "empty", "noise", "other-version"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_read_only_open_refuses_a_non_results_file_and_leaves_it_as_it_was(tmp_path, kind):
    path = hostile_files(tmp_path)[kind]
    before = fingerprint(path)
    with pytest.raises(StoreError, match=re.escape(path.name)) as info:
        ResultStore(path, readonly=True)
    assert "\n" not in str(info.value)
    assert fingerprint(path) == before


@pytest.mark.parametrize("kind", ["foreign", "text", "noise", "other-version"])
def test_a_writable_open_refuses_a_foreign_file_before_changing_it(tmp_path, kind):
    path = hostile_files(tmp_path)[kind]
    before = fingerprint(path)
    with pytest.raises(StoreError, match=re.escape(path.name)):
        ResultStore(path)
    assert fingerprint(path) == before  # its header is not rewritten to WAL


def test_a_missing_file_or_a_folder_is_refused_read_only(tmp_path):
    with pytest.raises(StoreError, match="no such"):
        ResultStore(tmp_path / "missing.db", readonly=True)
    assert not (tmp_path / "missing.db").exists()
    with pytest.raises(StoreError, match="not a file"):
        ResultStore(tmp_path, readonly=True)


def test_a_results_database_reads_read_only_and_refuses_writes(tmp_path):
    db = tmp_path / "r.db"
    key = results_db(db)
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    with ResultStore(db, readonly=True) as store:
        assert store.readonly
        assert [r.config_key for r in store.runs()] == [key]
        assert len(list(store.iter_results(key))) == 3
        assert store.count_by_verdict(key)["belonging"] == 3
        assert store.iter_telemetry(key)[0]["images"] == 3
        for write in (lambda: store.start_run(CONFIG),
                      lambda: store.write_batch(key, [{"path": "/x", "verdict": "error"}]),
                      lambda: store.write_telemetry("r", key, {"batch": 1}),
                      lambda: store.copy_from(db)):
            with pytest.raises(StoreError, match="read-only"):
                write()
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before


def test_a_schema_1_database_reads_read_only_without_an_upgrade(tmp_path):
    db = tmp_path / "old.db"
    key = results_db(db)
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TABLE telemetry")
        conn.execute("PRAGMA user_version = 1")
    conn.close()
    with ResultStore(db, readonly=True) as store:
        assert store.count_by_verdict(key)["belonging"] == 3
        assert store.iter_telemetry() == []
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    conn.close()


def test_another_schema_version_of_a_results_database_is_named(tmp_path):
    db = tmp_path / "r.db"
    results_db(db)
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA user_version = 7")
    conn.close()
    with pytest.raises(SchemaVersionError, match="version 7"):
        ResultStore(db, readonly=True)


@pytest.fixture()
def read_only_media(tmp_path, monkeypatch):
    """A folder holding a results database that this process cannot write.

    Made so with chmod where that binds; running as root it does not, so the store is told
    the folder is not writable, which is what it checks (and what it does on such media)."""
    folder = tmp_path / "media"
    folder.mkdir()
    db = folder / "audit.db"
    key = results_db(db)
    db.chmod(0o444)
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):  # root: chmod does not bind
        monkeypatch.setattr(store_module, "_writable", lambda path: False)
    yield db, key
    folder.chmod(0o755)
    db.chmod(0o644)


def test_a_database_on_read_only_media_is_exported_and_changed_in_nothing(read_only_media):
    db, key = read_only_media
    before = fingerprint(db)
    with ResultStore(db, readonly=True) as store:
        out = io.StringIO()
        assert export_rows(store.iter_results(key), "csv", out) == 3
    assert out.getvalue().count("belonging") == 3
    assert fingerprint(db) == before  # no -wal or -shm beside it


def test_rows_still_in_the_write_ahead_log_are_read_on_read_only_media(tmp_path, monkeypatch):
    db = tmp_path / "live.db"
    key = results_db(db, rows=1)
    writer = ResultStore(db)  # a live audit: its last batch is only in the -wal file
    writer._conn.execute("PRAGMA wal_autocheckpoint = 0")
    writer.write_batch(key, [{"path": "/d/late.png", "verdict": "non-belonging"}])
    assert (tmp_path / "live.db-wal").stat().st_size > 0
    monkeypatch.setattr(store_module, "_writable", lambda path: False)
    try:
        with ResultStore(db, readonly=True) as store:
            assert "/d/late.png" in {r["path"] for r in store.iter_results(key)}
    finally:
        writer.close()


def test_merge_reads_its_shards_read_only(tmp_path, monkeypatch):
    folder = tmp_path / "shards"
    folder.mkdir()
    shard = folder / "s0.db"
    results_db(shard)
    foreign = foreign_sqlite(tmp_path)
    before_foreign = fingerprint(foreign)
    with pytest.raises(StoreError, match=r"foreign\.sqlite"):
        merge(tmp_path / "all.db", [foreign])
    assert fingerprint(foreign) == before_foreign
    before = fingerprint(shard)
    real = store_module._writable
    monkeypatch.setattr(store_module, "_writable",
                        lambda path: real(path) and Path(path).parent != folder)
    assert merge(tmp_path / "all.db", [shard]) == 3
    assert fingerprint(shard) == before
    assert stat.S_ISREG((tmp_path / "all.db").stat().st_mode)
