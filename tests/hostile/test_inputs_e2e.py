"""A whole audit over hostile inputs: a FIFO, a name that is not UTF-8, a tar shard with a
repeated member name, a hard link and a symlink, a list file with a non-UTF-8 line. It ends,
stores one row per input next to the good rows, and a second run resumes without rework."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest
from e2e_helpers import BATCH, TinyWorld, db_rows, invoke, png_bytes, write_png

pytestmark = pytest.mark.timeout(300)

BAD = b"bad\xff\xfename.png"


def add(tar: tarfile.TarFile, name: str, data: bytes | None = None, **fields) -> None:
    info = tarfile.TarInfo(name)
    for key, value in fields.items():
        setattr(info, key, value)
    if data is not None:
        info.size = len(data)
    tar.addfile(info, io.BytesIO(data) if data is not None else None)


@pytest.fixture
def inputs(world: TinyWorld, tmp_path: Path) -> Path:
    root = tmp_path / "in"
    write_png(root / "good.png", world.belonging[0])
    with open(os.path.join(os.fsencode(root), BAD), "wb") as f:
        f.write(png_bytes(world.belonging[1]))
    os.mkfifo(root / "pipe.png")
    with tarfile.open(tmp_path / "shard.tar", "w") as tar:
        add(tar, "a.png", png_bytes(world.belonging[2]))
        add(tar, "a.png", png_bytes(world.non_belonging[2]))
        add(tar, "link.png", type=tarfile.LNKTYPE, linkname="a.png")
        add(tar, "sym.png", type=tarfile.SYMTYPE, linkname="a.png")
    other = os.path.join(os.fsencode(tmp_path), b"other")
    os.mkdir(other)
    with open(os.path.join(other, b"caf\xe9.png"), "wb") as f:
        f.write(png_bytes(world.non_belonging[3]))
    (tmp_path / "list.txt").write_bytes(b"other/caf\xe9.png\nin/gone\xe9.png\n")
    return tmp_path


def test_a_hostile_audit_ends_and_stores_every_input(world: TinyWorld, inputs: Path):
    db = inputs / "results.sqlite"
    args = ["audit", inputs / "in", inputs / "shard.tar", inputs / "list.txt",
            "--model", world.model,
            "--profile", world.profile, "--db", db, "--batch-size", BATCH, "--quiet"]
    result = invoke(args)
    assert result.exit_code == 0, result.output
    rows = {(os.path.basename(r["path"]), r["member"]): r for r in db_rows(db)}
    assert {k: r["error_kind"] for k, r in rows.items()} == {
        ("good.png", ""): None,
        ("bad\\xff\\xfename.png", ""): None,
        ("pipe.png", ""): "not-a-file",
        ("shard.tar", "a.png"): None,
        ("shard.tar", "a.png#2"): None,
        ("shard.tar", "link.png"): None,
        ("shard.tar", "sym.png"): "not-a-file",
        ("caf\\xe9.png", ""): None,
        ("gone\\xe9.png", ""): "not-found",
    }
    assert rows[("shard.tar", "link.png")]["sha256"] == rows[("shard.tar", "a.png#2")]["sha256"]
    assert rows[("bad\\xff\\xfename.png", "")]["verdict"] != "error"
    assert "already done" not in result.output

    again = invoke(args)
    assert again.exit_code == 0, again.output
    assert len(db_rows(db)) == len(rows)

    exported = invoke(["export", db, "--format", "csv"])
    assert exported.exit_code == 0, exported.output
    assert "bad\\xff\\xfename.png" in exported.output and "a.png#2" in exported.output
    labels = inputs / "labels.csv"  # ground truth names inputs as the results show them
    labels.write_text("in/good.png,1\nin/bad\\xff\\xfename.png,1\nshard.tar::a.png#2,0\n")
    report = invoke(["report", db, "--labels", labels, "-o", inputs / "report.html"])
    assert report.exit_code == 0, report.output
    assert "bad\\xff\\xfename.png" in (inputs / "report.html").read_text(encoding="utf-8")
