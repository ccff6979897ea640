"""Text that is not valid UTF-8 (undecodable file-name bytes) never costs a batch."""

from __future__ import annotations

import io
import json
import os
import sqlite3

import pytest

from ronan_jax.results.export import export_rows
from ronan_jax.results.merge import merge
from ronan_jax.results.store import ResultStore, StoreError, canonical_json, escape_text

BAD = "bad\udcff\udcfename.png"  # os.fsdecode(b"bad\xff\xfename.png")
BAD_STORED = "bad\\xff\\xfename.png"
CONFIG = {"model": {"name": "m"}}


def test_escape_rule_writes_undecodable_bytes_as_backslash_x():
    assert escape_text(BAD) == BAD_STORED == os.fsencode(BAD).decode("utf-8", "backslashreplace")
    assert escape_text("plain/ünï/名前.png") == "plain/ünï/名前.png"  # valid text unchanged
    assert escape_text("lone \ud800 high") == "lone \\ud800 high"  # not a byte: its code point
    assert escape_text(b"raw\xff.png") == "raw\\xff.png"  # bytes follow the same rule


def test_a_batch_with_one_undecodable_path_keeps_every_row(tmp_path):
    with ResultStore(tmp_path / "r.db") as store:
        run = store.start_run(CONFIG)
        good = {"path": "/d/good.png", "verdict": "belonging"}
        bad = {"path": f"/d/{BAD}", "verdict": "error", "error_kind": "decode",
               "error": f"cannot decode {BAD}"}
        assert store.write_batch(run.config_key, [good, bad], run_id=run.run_id) == 2
        rows = {r["path"]: r for r in store.iter_results(run.config_key)}
        assert set(rows) == {"/d/good.png", f"/d/{BAD_STORED}"}
        assert rows[f"/d/{BAD_STORED}"]["error"] == f"cannot decode {BAD_STORED}"
        # a rerun writes the same key: replaced, not duplicated, and no crash
        assert store.write_batch(run.config_key, [good, bad], run_id=run.run_id) == 2
        assert len(list(store.iter_results(run.config_key))) == 2
        assert (f"/d/{BAD_STORED}", "") in store.done_keys(run.config_key)


@pytest.mark.parametrize("column", ["path", "member", "error", "error_kind", "sha256", "mode",
                                    "started", "finished", "evidence_path", "run_id"])
def test_every_text_column_is_escaped(tmp_path, column):
    with ResultStore(tmp_path / "r.db") as store:
        key = store.start_run(CONFIG).config_key
        row = {"path": "/d/a.png", "verdict": "error", column: BAD}
        store.write_batch(key, [{"path": "/d/ok.png", "verdict": "belonging"}, row])
        (stored,) = [r for r in store.iter_results(key) if r["path"] != "/d/ok.png"]
        assert stored[column] == BAD_STORED


def test_bytes_and_bytes_paths_are_text_by_the_same_rule(tmp_path):
    class BytesPath(os.PathLike):
        def __fspath__(self) -> bytes:
            return b"/d/raw\xfe.png"

    with ResultStore(tmp_path / "r.db") as store:
        key = store.start_run(CONFIG).config_key
        store.write_batch(key, [{"path": BytesPath(), "verdict": "belonging"},
                                {"path": b"/d/b\xff", "member": b"m\xff", "verdict": "belonging"}])
        assert store.done_keys(key) == {("/d/raw\\xfe.png", ""), ("/d/b\\xff", "m\\xff")}


def test_a_configuration_with_undecodable_text_starts_a_run_and_reads_back(tmp_path):
    config = {**CONFIG, "info": {"inputs": [f"/d/{BAD}"]}}
    assert json.loads(canonical_json(config)) == config  # JSON escapes it: lossless
    with ResultStore(tmp_path / "r.db") as store:
        run = store.start_run(config)
        assert run.config == config
        assert store.runs()[0].config == config
        store.write_telemetry(run.run_id, run.config_key, {"batch": 0, "memory_source": BAD})
        assert store.iter_telemetry()[0]["memory_source"] == BAD_STORED


def test_invalid_utf8_written_by_another_tool_reads_escaped(tmp_path):
    db = tmp_path / "r.db"
    with ResultStore(db) as store:
        key = store.start_run(CONFIG).config_key
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO results (config_key, path, member, verdict, error) "
                     "VALUES (?, CAST(x'2f642f62ff2e706e67' AS TEXT), '', 'error', "
                     "CAST(x'6375ff74' AS TEXT))", (key,))
    conn.close()
    with ResultStore(db, readonly=True) as store:
        (row,) = store.iter_results(key)
        assert store.done_keys(key) == {("/d/b\\xff.png", "")}
    assert (row["path"], row["error"]) == ("/d/b\\xff.png", "cu\\xfft")


def test_export_and_merge_carry_escaped_text(tmp_path):
    shard = tmp_path / "s.db"
    with ResultStore(shard) as store:
        key = store.start_run(CONFIG).config_key
        store.write_batch(key, [{"path": BAD, "verdict": "belonging"}])
    merged = tmp_path / "all.db"
    assert merge(merged, [shard]) == 1
    with ResultStore(merged, readonly=True) as store:
        rows = list(store.iter_results(key))
    out = io.StringIO()
    assert export_rows(rows, "csv", out) == 1
    assert BAD_STORED in out.getvalue()
    out = io.StringIO()
    assert export_rows(rows, "jsonl", out) == 1
    assert json.loads(out.getvalue())["path"] == BAD_STORED
    out = io.StringIO()
    export_rows([{"path": BAD, "verdict": "error"}], "jsonl", out)  # rows not from a store
    assert json.loads(out.getvalue())["path"] == BAD_STORED
    out.getvalue().encode("utf-8")


def test_a_wrong_type_still_refuses_the_batch(tmp_path):
    with ResultStore(tmp_path / "r.db") as store:
        key = store.start_run(CONFIG).config_key
        with pytest.raises(StoreError, match="takes text"):
            store.write_batch(key, [{"path": "/a", "verdict": "belonging"},
                                    {"path": "/b", "verdict": "belonging", "mode": 3}])
        assert list(store.iter_results(key)) == []
