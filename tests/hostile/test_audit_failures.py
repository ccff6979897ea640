"""A full disk, a read-only place or a kill never loses work, leaves orphans or a traceback;
identical content is inverted once per run."""

from __future__ import annotations

import errno
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from e2e_helpers import BATCH, TinyWorld, db_rows, invoke, write_mixed_folder

import ronan_jax.audit.evidence as evidence_module


def audit_args(world: TinyWorld, db: Path, *inputs, extra=()) -> list:
    return ["audit", *inputs, "--model", world.model, "--profile", world.profile, "--db", db,
            "--batch-size", BATCH, "--quiet", *extra]


def comparable(rows: list[dict]) -> list[tuple]:
    keys = ("path", "verdict", "error_kind", "loss", "ref_loss", "z", "p_value")
    return sorted(tuple(r[k] for k in keys) for r in rows)


@pytest.fixture(scope="module")
def folder(world: TinyWorld, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mixed_folder(world, tmp_path_factory.mktemp("hostile-audit"))


@pytest.fixture(scope="module")
def undisturbed(world, folder, tmp_path_factory) -> list[dict]:
    db = tmp_path_factory.mktemp("undisturbed") / "r.sqlite"
    result = invoke(audit_args(world, db, folder, extra=("--keep-evidence",)))
    assert result.exit_code == 0, result.output
    return db_rows(db)


def test_disk_full_while_writing_evidence_exits_2_and_a_rerun_completes_cleanly(
    world, folder, undisturbed, tmp_path, monkeypatch
):
    db, ev = tmp_path / "r.sqlite", tmp_path / "ev"
    real = evidence_module.np.savez_compressed
    calls = []

    def fill_up(f, **arrays):
        calls.append(1)
        if len(calls) == BATCH + 3:  # in the middle of the second batch
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(f, **arrays)

    monkeypatch.setattr(evidence_module.np, "savez_compressed", fill_up)
    result = invoke(audit_args(world, db, folder, extra=("--evidence-dir", ev)))
    assert result.exit_code == 2, result.output
    assert "No space left on device" in result.output and "Usage:" not in result.output
    assert "Traceback" not in result.output
    rows = db_rows(db)
    assert len(rows) == BATCH  # the first batch is kept, the second left no row ...
    files = sorted(ev.rglob("*"))
    assert not [f for f in files if f.name.endswith(".tmp")]  # ... no temporary file ...
    kept = {Path(r["evidence_path"]) for r in rows if r["evidence_path"]}
    assert {f for f in files if f.is_file()} == kept  # ... and no evidence without its row
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    monkeypatch.setattr(evidence_module.np, "savez_compressed", real)
    again = invoke(audit_args(world, db, folder, extra=("--evidence-dir", ev)))
    assert again.exit_code == 0, again.output
    assert comparable(db_rows(db)) == comparable(undisturbed)
    assert all(Path(r["evidence_path"]).is_file() for r in db_rows(db) if r["verdict"] != "error")


def test_an_unwritable_evidence_folder_fails_before_any_inversion(world, folder, tmp_path, monkeypatch):
    import ronan_jax.audit.run as run_module

    (tmp_path / "blocker").write_text("a file where a folder must go")
    monkeypatch.setattr(run_module, "judge_batch", lambda *a, **k: pytest.fail("inverted"))
    result = invoke(audit_args(world, tmp_path / "r.sqlite", folder,
                               extra=("--evidence-dir", tmp_path / "blocker" / "ev")))
    assert result.exit_code == 2, result.output
    assert "cannot complete" in result.output and "blocker" in result.output
    assert "Traceback" not in result.output and "Usage:" not in result.output


@pytest.fixture(scope="module")
def finished_db(world, folder, tmp_path_factory) -> Path:
    db = tmp_path_factory.mktemp("finished") / "r.sqlite"
    assert invoke(audit_args(world, db, folder)).exit_code == 0
    return db


@pytest.mark.parametrize("command", ["report", "export", "profile"])
def test_an_unwritable_output_is_a_one_line_exit_2(world, finished_db, tmp_path, command):
    (tmp_path / "blocker").write_text("a file where a folder must go")
    out = tmp_path / "blocker" / "out.file"  # any write there fails (ENOTDIR), as on read-only media
    if command == "profile":
        args = ["profile", "--model", world.model, "--reference", world.reference, "--samples", 4,
                "--steps", 2, "--restarts", 1, "-o", out, "--quiet"]
    else:
        args = [command, finished_db, "-o", out]
    result = invoke(args)
    assert result.exit_code == 2, result.output
    assert "cannot complete" in result.output and "blocker" in result.output
    assert "Traceback" not in result.output and "Usage:" not in result.output


def test_identical_content_under_many_paths_is_inverted_once(world, tmp_path):
    from e2e_helpers import png_bytes

    data = png_bytes(world.belonging[0])
    names = [tmp_path / "imgs" / f"copy-{i}.png" for i in range(5)]
    for p in names:
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(data)
    (tmp_path / "imgs" / "other.png").write_bytes(png_bytes(world.belonging[1]))
    db = tmp_path / "dup.sqlite"
    # copy-1 named a second time under another spelling: still one row (paths are normalised)
    result = invoke(audit_args(world, db, tmp_path / "imgs", str(tmp_path / "imgs" / "." / "copy-1.png")))
    assert result.exit_code == 0, result.output
    rows = db_rows(db)
    assert len(rows) == 6  # every file gets its row
    from ronan_jax.results.store import ResultStore

    with ResultStore(db) as store:
        telemetry = store.iter_telemetry()
    assert sum(t["images"] for t in telemetry) == 2  # but only two contents were inverted
    copies = [r for r in rows if "copy-" in r["path"]]
    assert len({(r["loss"], r["z"], r["verdict"]) for r in copies}) == 1
    assert np.isfinite(copies[0]["z"])


def test_what_a_kill_during_evidence_writing_leaves_is_swept_by_the_rerun(
    world, folder, undisturbed, tmp_path
):
    db, ev = tmp_path / "k.sqlite", tmp_path / "ev"
    first = invoke(audit_args(world, db, folder, extra=("--evidence-dir", ev)))
    assert first.exit_code == 0, first.output
    rows = db_rows(db)
    keyed = Path(rows[0]["evidence_path"]).parent
    # A SIGKILL between writing a batch's evidence and committing its rows leaves evidence
    # files no row points to, and possibly a half-written temporary file:
    victims = [r for r in rows if r["evidence_path"]][-BATCH:]
    for r in victims:
        shutil.copy(r["evidence_path"], keyed / f"{'f' * 64}{r['sha256'][:4]}.npz")
    (keyed / f".{'e' * 64}.npz.123.456.tmp").write_bytes(b"half")
    with sqlite3.connect(db) as conn:  # and the batch's rows were never committed
        conn.executemany("DELETE FROM results WHERE path = ?", [(r["path"],) for r in victims])
    again = invoke(audit_args(world, db, folder, extra=("--evidence-dir", ev)))
    assert again.exit_code == 0, again.output
    final = db_rows(db)
    assert comparable(final) == comparable(undisturbed)
    on_disk = {str(p) for p in keyed.iterdir()}
    assert on_disk == {r["evidence_path"] for r in final if r["evidence_path"]}


def test_a_full_disk_when_the_profile_is_written_keeps_every_measured_loss(world, tmp_path, monkeypatch):
    import pathlib

    out = tmp_path / "p.json"
    args = ["profile", "--model", world.model, "--reference", world.reference, "--samples", 4,
            "--steps", 2, "--restarts", 1, "-o", out, "--quiet"]
    real_write = pathlib.Path.write_text

    def full(self, *a, **k):
        if self.name.endswith(".tmp"):
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real_write(self, *a, **k)

    monkeypatch.setattr(pathlib.Path, "write_text", full)
    result = invoke(args)
    assert result.exit_code == 2 and "No space left on device" in result.output
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))
    monkeypatch.setattr(pathlib.Path, "write_text", real_write)
    import ronan_jax.attribution.build as build

    monkeypatch.setattr(build, "calibrated_losses", lambda *a, **k: pytest.fail("inverted again"))
    assert invoke(args).exit_code == 0 and out.is_file()  # the kept losses make the profile


@pytest.mark.parametrize("content", [b"hello, I am text\n", b"(dp0\nS'a'\np1\nI1\ns.", b""])
def test_convert_refuses_what_is_no_checkpoint_with_exit_2(tmp_path, content):
    src = tmp_path / "x.pth"
    src.write_bytes(content)
    result = invoke(["convert", src, "-o", tmp_path / "out"])
    assert result.exit_code == 2, result.output
    assert "cannot convert" in result.output and "Traceback" not in result.output


def test_sigkill_while_evidence_is_written_then_rerun_leaves_no_orphan(world, tmp_path):
    """A real kill in the window between a batch's evidence files and its rows."""
    import signal
    import time

    from e2e_helpers import count_rows, start_cli, subprocess_env

    images = write_mixed_folder(world, tmp_path / "images", n=24)  # 48 images, 6 batches
    db, ev = tmp_path / "k.sqlite", tmp_path / "ev"
    args = ["audit", images, "--model", world.model, "--profile", world.slow_profile, "--db", db,
            "--batch-size", BATCH, "--quiet", "--evidence-dir", ev]
    proc = start_cli(args, subprocess_env(tmp_path / "jax-cache"), tmp_path / "killed.log")
    caught = False
    deadline = time.monotonic() + 300
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            files = sum(1 for _ in ev.rglob("*.npz")) if ev.exists() else 0
            if files > count_rows(db):  # evidence on disk that no committed row points to yet
                proc.send_signal(signal.SIGKILL)
                caught = True
                break
            time.sleep(0.0005)
    finally:
        if proc.poll() is None and not caught:
            proc.kill()
        proc.wait(60)
    assert caught, "the run ended before a batch's evidence could be caught uncommitted"
    rows_at_kill = count_rows(db)
    assert rows_at_kill < 48
    again = invoke(args)
    assert again.exit_code == 0, again.output
    rows = db_rows(db)
    assert len(rows) == 48
    on_disk = {str(p) for p in ev.rglob("*") if p.is_file()}
    assert on_disk == {r["evidence_path"] for r in rows if r["evidence_path"]}
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
