"""Tar members that are not plain files, and member names that repeat: every image-named
member gets its own record with its own key, in archive order, on every run alike."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from ronan_jax.audit.resume import InputFilter
from ronan_jax.inputs.sources import ImageRecord, iter_records

pytestmark = pytest.mark.timeout(60)

MODES = [("shard.tar", "w"), ("shard.tar.gz", "w:gz"), ("shard.tar.bz2", "w:bz2"),
         ("shard.tar.xz", "w:xz")]


def png_bytes(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (2, 2), value).save(buf, "PNG")
    return buf.getvalue()


def regular(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


def make(path: Path, mode: str, members) -> Path:
    with tarfile.open(path, mode) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def table(records: list[ImageRecord]) -> list[tuple[str | None, str | None, bytes | None]]:
    return [(r.member, r.error_kind, r.data) for r in records]


@pytest.mark.parametrize(("name", "mode"), MODES)
def test_links_and_special_members_are_records_not_silence(tmp_path, name, mode):
    shard = make(tmp_path / name, mode, [
        regular("s/a.png", png_bytes(1)),
        regular("s/meta.bin", png_bytes(9)),  # not an image name, yet a hard link's target
        special("s/b.png", tarfile.LNKTYPE, "s/a.png"),
        special("s/c.png", tarfile.SYMTYPE, "a.png"),
        special("s/d.png", tarfile.CHRTYPE),
        special("s/e.png", tarfile.BLKTYPE),
        special("s/f.png", tarfile.FIFOTYPE),
        special("s/g.png", tarfile.LNKTYPE, "s/nowhere.png"),
        special("s/h.png", tarfile.LNKTYPE, "s/meta.bin"),
        special("s/i.png", tarfile.LNKTYPE, "s/b.png"),  # a link to a link
        special("s/j.json", tarfile.LNKTYPE, "s/a.png"),  # not an image name: passed over
        special("s/k.png", tarfile.DIRTYPE),  # a folder: its members speak for it
        regular("s/z.png", png_bytes(3)),
    ])
    records = list(iter_records([str(shard)]))
    assert table(records) == [
        ("s/a.png", None, png_bytes(1)),
        ("s/b.png", None, png_bytes(1)),
        ("s/c.png", "not-a-file", None),
        ("s/d.png", "not-a-file", None),
        ("s/e.png", "not-a-file", None),
        ("s/f.png", "not-a-file", None),
        ("s/g.png", "not-a-file", None),
        ("s/h.png", None, png_bytes(9)),
        ("s/i.png", None, png_bytes(1)),
        ("s/z.png", None, png_bytes(3)),
    ]
    assert {r.path for r in records} == {str(shard)}
    errors = {r.member: r.error for r in records if r.error}
    assert "symbolic link" in errors["s/c.png"] and "'a.png'" in errors["s/c.png"]
    assert "character device" in errors["s/d.png"]
    assert "block device" in errors["s/e.png"]
    assert "FIFO" in errors["s/f.png"]
    assert "hard link" in errors["s/g.png"] and "s/nowhere.png" in errors["s/g.png"]
    assert all(str(shard) in e for e in errors.values())


@pytest.mark.parametrize(("name", "mode"), MODES[:2])
def test_a_hard_link_reads_the_latest_earlier_member_of_that_name(tmp_path, name, mode):
    shard = make(tmp_path / name, mode, [
        regular("a.png", png_bytes(1)),
        special("early.png", tarfile.LNKTYPE, "a.png"),
        regular("a.png", png_bytes(2)),
        special("late.png", tarfile.LNKTYPE, "a.png"),
    ])
    records = list(iter_records([str(shard)]))
    assert table(records) == [
        ("a.png", None, png_bytes(1)),
        ("early.png", None, png_bytes(1)),
        ("a.png#2", None, png_bytes(2)),
        ("late.png", None, png_bytes(2)),
    ]


def test_duplicate_member_names_get_distinct_stable_members(tmp_path):
    shard = make(tmp_path / "dup.tar", "w", [
        regular("x/0.png", png_bytes(0)),
        regular("x/0.png", png_bytes(1)),
        regular("x/0.png#2", png_bytes(2)),  # no image extension: passed over, takes no number
        regular("x/0.png", png_bytes(3)),
        special("x/0.png", tarfile.SYMTYPE, "elsewhere.png"),
        regular("x/0.json", b"{}"),
        regular("x/0.json", b"{}"),
    ])
    records = list(iter_records([str(shard)]))
    assert table(records) == [
        ("x/0.png", None, png_bytes(0)),
        ("x/0.png#2", None, png_bytes(1)),
        ("x/0.png#3", None, png_bytes(3)),
        ("x/0.png#4", "not-a-file", None),
    ]
    assert len({r.key for r in records}) == len(records)
    assert table(list(iter_records([str(shard)]))) == table(records)  # stable across runs

    # skipping a member (resume) does not renumber the ones after it
    seen = []

    def skip_key(path: str, member: str | None) -> bool:
        seen.append(member)
        return member == "x/0.png"

    resumed = list(iter_records([str(shard)], skip_key=skip_key))
    assert seen == [m for m, _, _ in table(records)]
    assert table(resumed) == table(records)[1:]


def test_a_fresh_run_skips_no_duplicate_member_as_already_done(tmp_path):
    shard = make(tmp_path / "dup.tar", "w", [regular("a.png", png_bytes(i)) for i in range(3)])
    keep = InputFilter(done=set())  # what the audit uses on a fresh database
    records = list(iter_records([str(shard)], skip_key=keep))
    assert [r.member for r in records] == ["a.png", "a.png#2", "a.png#3"]
    assert keep.skipped == 0


def test_a_damaged_shard_after_a_hard_link_still_reports_the_damage(tmp_path):
    shard = make(tmp_path / "shard.tar", "w", [
        regular("a.png", png_bytes(1)),
        special("b.png", tarfile.LNKTYPE, "a.png"),
        regular("c.png", bytes(range(256)) * 40),
    ])
    data = shard.read_bytes()
    shard.write_bytes(data[: 512 * 5 + 100])  # cut inside c.png's data
    records = list(iter_records([str(shard)]))
    assert [(r.member, r.error_kind) for r in records] == [
        ("a.png", None), ("b.png", None), (None, "corrupt-archive")
    ]
