"""Results store: schema, resume keys, atomic batches, no duplicates, shard merging."""

import sqlite3
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from ronan_jax.results.merge import merge
from ronan_jax.results.store import (
    SCHEMA_VERSION,
    ResultStore,
    SchemaVersionError,
    ShardMismatchError,
    StoreError,
    make_config_key,
)

CONFIG = {
    "model": {"name": "dcgan-mnist", "params_sha256": "ab12"},
    "reference": {"name": "vae-mnist", "params_sha256": "cd34"},
    "profile": "dcgan-mnist-v1",
    "inversion": {"steps": 100, "restarts": 4, "lr": 0.01},
    "versions": {"ronan_jax": "0.1.0", "jax": "0.5.0"},
}


def row(path: str, verdict: str = "belonging", **extra) -> dict:
    return {"path": path, "verdict": verdict, "loss": 0.1, "z": 1.5, **extra}


def count_rows(db) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT COUNT(*) FROM results").fetchone()[0]


def test_new_database_has_versioned_schema_in_wal_mode(tmp_path):
    db = tmp_path / "r.db"
    ResultStore(db).close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_config_key_ignores_versions_but_not_settings(tmp_path):
    with ResultStore(tmp_path / "r.db") as store:
        a = store.start_run(CONFIG)
        b = store.start_run({**CONFIG, "versions": {"ronan_jax": "0.2.0"}})
        c = store.start_run({**CONFIG, "inversion": {"steps": 200, "restarts": 4, "lr": 0.01}})
        assert a.config_key == b.config_key != c.config_key
        assert a.run_id != b.run_id
        assert a.config_key == make_config_key(dict(reversed(list(CONFIG.items()))))
        runs = store.runs()
    assert [r.run_id for r in runs] == [a.run_id, b.run_id, c.run_id]
    assert runs[0].config == CONFIG


def test_rows_are_written_read_counted_and_resumed(tmp_path):
    with ResultStore(tmp_path / "r.db") as store:
        run = store.start_run(CONFIG)
        written = store.write_batch(
            run.config_key,
            [
                row("/d/a.png", member=None),
                row("/d/s.tar", member="x.png", verdict="non-belonging"),
                row("/d/bad.png", verdict="error", error_kind="truncated", error="cut short"),
            ],
            run_id=run.run_id,
        )
        assert written == 3
        assert store.done_keys(run.config_key) == {
            ("/d/a.png", ""),
            ("/d/s.tar", "x.png"),
            ("/d/bad.png", ""),
        }
        assert ("/d/bad.png", "") not in store.done_keys(run.config_key, include_errors=False)
        assert store.count_by_verdict(run.config_key) == {
            "belonging": 1,
            "non-belonging": 1,
            "error": 1,
        }
        rows = list(store.iter_results(run.config_key))
        assert [r["path"] for r in rows] == ["/d/a.png", "/d/bad.png", "/d/s.tar"]
        assert rows[0]["member"] == "" and rows[0]["run_id"] == run.run_id
        assert rows[0]["z"] == 1.5 and rows[1]["error_kind"] == "truncated"
        assert [r["path"] for r in store.iter_results(verdict="error")] == ["/d/bad.png"]
        assert store.done_keys("another-key") == set()


def test_numpy_values_are_stored_as_plain_numbers(tmp_path):
    with ResultStore(tmp_path / "r.db") as store:
        key = store.start_run(CONFIG).config_key
        store.write_batch(
            key,
            [row("/a", loss=np.float32(0.25), width=np.int64(64), resized=np.bool_(True))],
        )
        (stored,) = store.iter_results(key)
    assert stored["loss"] == 0.25 and stored["width"] == 64 and stored["resized"] is True


def test_rewriting_rows_replaces_them_without_duplicates(tmp_path):
    with ResultStore(tmp_path / "r.db") as store:
        key = store.start_run(CONFIG).config_key
        store.write_batch(key, [row("/a"), row("/b")])
        store.write_batch(key, [row("/a", verdict="non-belonging", loss=0.9)])
        store.write_batch(key, [row("/a", verdict="non-belonging", loss=0.9)])
        rows = {r["path"]: r for r in store.iter_results(key)}
    assert len(rows) == 2 and count_rows(tmp_path / "r.db") == 2
    assert rows["/a"]["verdict"] == "non-belonging" and rows["/a"]["loss"] == 0.9


def test_a_failure_mid_batch_writes_nothing(tmp_path):
    with ResultStore(tmp_path / "r.db") as store:
        key = store.start_run(CONFIG).config_key
        store.write_batch(key, [row("/kept")])
        bad_batches = [
            [row("/1"), row("/2"), row("/3", verdict="maybe")],  # CHECK constraint in SQL
            [row("/1"), row("/2"), {"path": "/3", "verdict": "error", "typo": 1}],
            [row("/1"), row("/2"), row("/3", width=3.5)],
        ]
        for rows in bad_batches:
            with pytest.raises(StoreError):
                store.write_batch(key, rows)
        assert [r["path"] for r in store.iter_results(key)] == ["/kept"]
        with pytest.raises(StoreError, match="start_run"):
            store.write_batch("unknown-key", [row("/x")])


def test_a_killed_process_mid_batch_leaves_no_partial_rows(tmp_path):
    db = tmp_path / "r.db"
    script = textwrap.dedent(
        f"""
        import os
        from ronan_jax.results.store import ResultStore

        class Killer(dict):
            def get(self, key, default=None):
                os._exit(3)  # dies inside the open transaction

        store = ResultStore({str(db)!r})
        key = store.start_run({{"model": "m"}}).config_key
        store.write_batch(key, [{{"path": "/done", "verdict": "belonging"}}])
        rows = [{{"path": f"/{{i}}", "verdict": "belonging"}} for i in range(3)]
        store.write_batch(key, [*rows, Killer(path="/x", verdict="error")])
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 3, proc.stderr
    with ResultStore(db) as store:
        assert [r["path"] for r in store.iter_results()] == ["/done"]


def test_merge_combines_shards_and_is_idempotent(tmp_path):
    shards = []
    for i, paths in enumerate((["/a", "/b"], ["/c", "/b"])):
        shard = tmp_path / f"shard{i}.db"
        with ResultStore(shard) as store:
            key = store.start_run({**CONFIG, "versions": {"host": i}}).config_key
            verdict = "error" if i == 1 else "belonging"  # shard1's /b errored
            store.write_batch(key, [row(p, verdict=verdict) for p in paths])
        shards.append(shard)
    dst = tmp_path / "all.db"
    assert merge(dst, shards) == 3  # /b from shard1 is an error: it does not replace a result
    assert merge(dst, shards) == 3  # again: replaced in place, nothing duplicated
    with ResultStore(dst) as store:
        rows = {r["path"]: r["verdict"] for r in store.iter_results()}
        assert rows == {"/a": "belonging", "/b": "belonging", "/c": "error"}
        assert len(store.runs()) == 2


def test_merge_refuses_shards_of_different_configurations(tmp_path):
    shards = []
    for i, steps in enumerate((100, 200)):
        shard = tmp_path / f"shard{i}.db"
        with ResultStore(shard) as store:
            cfg = {**CONFIG, "inversion": {"steps": steps}}
            store.write_batch(store.start_run(cfg).config_key, [row(f"/{i}")])
        shards.append(shard)
    dst = tmp_path / "all.db"
    with pytest.raises(ShardMismatchError, match=r"inversion\.steps \(shard0\.db: 100, shard1\.db: 200\)"):
        merge(dst, shards)
    assert not dst.exists()  # refused before anything was created or written
    merge(dst, shards[:1])
    with pytest.raises(ShardMismatchError):  # dst's own runs count too
        merge(dst, shards[1:])
    assert count_rows(dst) == 1
    with pytest.raises(StoreError, match="no such shard"):
        merge(dst, [tmp_path / "missing.db"])


def test_other_schema_versions_and_foreign_databases_are_refused(tmp_path):
    old = tmp_path / "old.db"
    ResultStore(old).close()
    with sqlite3.connect(old) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(SchemaVersionError):
        ResultStore(old)
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE things (x)")
    with pytest.raises(StoreError, match="not a results database"):
        ResultStore(foreign)


def make_v1_database(path, rows) -> str:
    """A schema-1 database (before telemetry): runs and results only."""
    with ResultStore(path) as store:
        run = store.start_run(CONFIG)
        store.write_batch(run.config_key, rows, run_id=run.run_id)
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE telemetry")
        conn.execute("PRAGMA user_version = 1")
    return run.config_key


def test_telemetry_rows_are_written_read_and_merged(tmp_path):
    record = {"batch": 0, "images": 8, "images_per_call": 4, "calls": 2, "oom_splits": 0,
              "steps_run": np.int64(120), "steps_budget": 160, "seconds": np.float32(2.0),
              "images_per_s": 4.0, "memory_bytes": 1 << 20, "memory_peak_bytes": None,
              "memory_source": "process-rss"}
    shard = tmp_path / "shard.db"
    with ResultStore(shard) as store:
        run = store.start_run(CONFIG)
        store.write_batch(run.config_key, [row("/a.png")], run_id=run.run_id)
        store.write_telemetry(run.run_id, run.config_key, record)
        store.write_telemetry(run.run_id, run.config_key, {**record, "batch": 1, "images": 3})
        store.write_telemetry(run.run_id, run.config_key, {**record, "batch": 1, "images": 5})
        got = store.iter_telemetry(run.config_key)
        with pytest.raises(StoreError, match="unknown"):
            store.write_telemetry(run.run_id, run.config_key, {**record, "speed": 1})
        with pytest.raises(StoreError, match="no batch"):
            store.write_telemetry(run.run_id, run.config_key, {"images": 1})
    assert [(t["batch"], t["images"]) for t in got] == [(0, 8), (1, 5)]  # (run, batch) replaced
    assert got[0]["steps_run"] == 120 and got[0]["seconds"] == 2.0
    assert got[0]["memory_peak_bytes"] is None and got[0]["recorded"]  # filled in
    assert got[0]["run_id"] == run.run_id and got[0]["memory_source"] == "process-rss"
    merged = tmp_path / "all.db"
    merge(merged, [shard])
    merge(merged, [shard])  # again: no duplicates
    with ResultStore(merged) as store:
        assert store.iter_telemetry(run_id=run.run_id) == got


def test_a_schema_1_database_is_read_merged_and_upgraded(tmp_path):
    old = tmp_path / "old.db"
    key = make_v1_database(old, [row("/a.png"), row("/b.png", "non-belonging")])
    merged = tmp_path / "merged.db"
    assert merge(merged, [old]) == 2  # read as it is
    with sqlite3.connect(old) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    with ResultStore(old) as store:  # opened for writing: upgraded, nothing else changes
        assert store.count_by_verdict(key) == {"belonging": 1, "non-belonging": 1, "error": 0}
        assert store.iter_telemetry() == []
        store.write_telemetry(store.runs()[0].run_id, key, {"batch": 0, "images": 2})
    with sqlite3.connect(old) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4


def test_a_schema_2_database_without_class_labels_reads_merges_and_upgrades(tmp_path):
    old = tmp_path / "v2.db"
    with ResultStore(old) as store:
        run = store.start_run(CONFIG)
        store.write_batch(run.config_key, [row("/a.png"), row("/b.png", "non-belonging")],
                          run_id=run.run_id)
    with sqlite3.connect(old) as conn:  # as ronan-jax wrote it before class labels
        for column in ("class_label", "second_pass", "first_loss"):
            conn.execute(f"ALTER TABLE results DROP COLUMN {column}")
        conn.execute("PRAGMA user_version = 2")
    with ResultStore(old, readonly=True) as store:  # read as it is, the new column as NULL
        rows = store.iter_results(run.config_key)
        assert [r["class_label"] for r in rows] == [None, None]
    merged = tmp_path / "merged.db"
    with ResultStore(merged) as store:
        store.write_batch(store.start_run(CONFIG).config_key,
                          [{**row("/c.png"), "class_label": 4}])
    assert merge(merged, [old]) == 2
    with ResultStore(merged) as store:
        labels = {r["path"]: r["class_label"] for r in store.iter_results(run.config_key)}
    assert labels == {"/a.png": None, "/b.png": None, "/c.png": 4}
    with ResultStore(old) as store:  # opened for writing: the column is added
        store.write_batch(run.config_key, [{**row("/d.png"), "class_label": 1}], run_id=run.run_id)
    with sqlite3.connect(old) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 4
        assert conn.execute("SELECT class_label FROM results WHERE path = '/d.png'").fetchone() == (1,)
