"""File, member and list-line names that are not UTF-8 give normal records whose path is
printable, lossless and storable; the good inputs around them are unaffected."""

from __future__ import annotations

import io
import os
import random
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from ronan_jax.inputs import printable_name, real_name
from ronan_jax.inputs.batcher import Batcher
from ronan_jax.inputs.sources import ImageRecord, iter_records
from ronan_jax.results.store import ResultStore

pytestmark = pytest.mark.timeout(60)

BAD = b"bad\xff\xfename.png"


def png_bytes(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (2, 2), value).save(buf, "PNG")
    return buf.getvalue()


def put(folder: Path, raw: bytes, data: bytes) -> str:
    """Write `data` under the raw byte name; return the name as Python sees it."""
    path = os.path.join(os.fsencode(folder), raw)
    with open(path, "wb") as f:
        f.write(data)
    return os.fsdecode(path)


def storable(record: ImageRecord) -> None:
    for text in (record.path, record.member or "", record.error or ""):
        text.encode("utf-8")  # must not raise


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "dump"
    root.mkdir()
    put(root, BAD, png_bytes(7))
    (root / "good.png").write_bytes(png_bytes(1))
    return root


def test_the_naming_rule():
    assert printable_name("plain/ünïcode name.png") == "plain/ünïcode name.png"
    assert printable_name("a\\b.png") == "a\\b.png"  # a backslash alone changes nothing
    assert printable_name(os.fsdecode(BAD)) == "bad\\xff\\xfename.png"
    assert printable_name(os.fsdecode(b"x\\\xff")) == "x\\\\\\xff"  # backslash escaped too
    # a valid name that already reads like an escaped one is escaped, so it cannot collide
    assert printable_name("bad\\xff\\xfename.png") == "bad\\\\xff\\\\xfename.png"
    assert printable_name("\ud800.png") == "\\ud800.png"  # a lone surrogate not from bytes
    assert real_name("bad\\xff\\xfename.png") == os.fsdecode(BAD)


def test_the_naming_rule_is_lossless_and_injective_on_random_byte_names():
    rng = random.Random(1234)
    alphabet = [b"\\", b"x", b"u", b"d", b"f", b"8", b"a", b"/", b"\xff", b"\xc3", b"\xa9",
                b"\x80", b"\xdc", b".png", b"#"]
    names = {b"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 8)))
             for _ in range(20000)}
    shown: dict[str, bytes] = {}
    for raw in names:
        name = os.fsdecode(raw)
        out = printable_name(name)
        out.encode("utf-8")
        assert real_name(out) == name
        assert shown.setdefault(out, raw) == raw, (raw, shown[out])
    literal = {printable_name(s) for s in ("\\xff", "\\\\xff", "\\\\", "\\", "\\ud800")}
    assert len(literal) == 5


def test_a_non_utf8_name_in_a_folder_is_a_normal_record(folder):
    records = list(iter_records([str(folder)]))
    assert [os.path.basename(r.path) for r in records] == ["bad\\xff\\xfename.png", "good.png"]
    bad, good = records
    assert bad.error is None and bad.data == png_bytes(7)
    assert good.error is None and good.data == png_bytes(1)
    for r in records:
        storable(r)
    with open(real_name(bad.path), "rb") as f:  # the path still leads to the file
        assert f.read() == png_bytes(7)


def test_non_utf8_names_as_argument_glob_and_missing_file(folder):
    bad = os.path.join(str(folder), os.fsdecode(BAD))
    shown = str(folder / "bad\\xff\\xfename.png")
    (record,) = iter_records([bad])
    assert (record.path, record.data) == (shown, png_bytes(7))
    records = list(iter_records([str(folder / "*.png")]))
    assert [r.path for r in records] == [shown, str(folder / "good.png")]
    (missing,) = iter_records([os.path.join(str(folder), os.fsdecode(b"gone\xff.png"))])
    assert missing.error_kind == "not-found"
    assert missing.path == str(folder / "gone\\xff.png")
    storable(missing)
    assert "gone\\xff.png" in missing.error


def test_names_that_look_alike_stay_apart(tmp_path):
    root = tmp_path / "alike"
    root.mkdir()
    raws = [b"a\xff.png", b"a\\xff.png", b"a\\\\xff.png", b"a\\.png", b"a\\\xff.png"]
    for i, raw in enumerate(raws):
        put(root, raw, png_bytes(i))
    records = list(iter_records([str(root)]))
    assert len(records) == len(raws) == len({r.path for r in records})
    for r in records:
        storable(r)
        with open(real_name(r.path), "rb") as f:
            assert f.read() == r.data
    assert str(root / "a\\.png") in {r.path for r in records}  # an ordinary name: unchanged


def test_a_folder_with_a_non_utf8_name(tmp_path):
    raw_dir = os.path.join(os.fsencode(tmp_path), b"d\xe9j\xe0")
    os.mkdir(raw_dir)
    put(Path(os.fsdecode(raw_dir)), b"x.png", png_bytes(3))
    (record,) = iter_records([str(tmp_path)])
    assert record.path == str(tmp_path / "d\\xe9j\\xe0" / "x.png")
    assert record.data == png_bytes(3)


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_a_non_utf8_tar_member_is_a_normal_record(tmp_path, fmt):
    shard = tmp_path / "shard.tar"
    with tarfile.open(shard, "w", format=fmt, encoding="utf-8", errors="surrogateescape") as tar:
        for name, data in ((os.fsdecode(b"s/" + BAD), png_bytes(7)), ("s/good.png", png_bytes(1))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    records = list(iter_records([str(shard)]))
    assert [r.member for r in records] == ["s/bad\\xff\\xfename.png", "s/good.png"]
    assert [r.data for r in records] == [png_bytes(7), png_bytes(1)]
    for r in records:
        storable(r)


def test_a_tar_with_a_non_utf8_name_streams_its_members(tmp_path):
    shard = os.path.join(os.fsencode(tmp_path), b"sh\xffrd.tar")
    with tarfile.open(os.fsdecode(shard), "w") as tar:
        info = tarfile.TarInfo("a.png")
        info.size = len(png_bytes(1))
        tar.addfile(info, io.BytesIO(png_bytes(1)))
    (record,) = iter_records([os.fsdecode(shard)])
    assert (record.path, record.member) == (str(tmp_path / "sh\\xffrd.tar"), "a.png")
    assert record.data == png_bytes(1)


def test_a_list_file_with_a_non_utf8_line_judges_every_line(folder):
    listing = folder.parent / "inputs.txt"
    listing.write_bytes(b"dump/good.png\r\ndump/" + BAD + b"\n# caf\xe9 comment\n"
                        b"dump/gone\xe9.png\n  dump/good.png  \n")
    records = list(iter_records([str(listing)]))
    assert [(os.path.relpath(r.path, folder), r.error_kind) for r in records] == [
        ("good.png", None),
        ("bad\\xff\\xfename.png", None),
        ("gone\\xe9.png", "not-found"),
        ("good.png", None),
    ]
    assert records[1].data == png_bytes(7)
    for r in records:
        storable(r)


def test_a_list_file_with_a_byte_order_mark_reads_its_first_line(folder):
    listing = folder.parent / "bom.lst"
    listing.write_bytes(b"\xef\xbb\xbfdump/good.png\ndump/good.png\n")
    records = list(iter_records([str(listing)]))
    assert [r.error_kind for r in records] == [None, None]


def test_a_list_file_that_is_not_text_is_one_error_record(folder):
    listing = folder.parent / "utf16.txt"
    listing.write_bytes("dump/good.png\n".encode("utf-16"))
    (record,) = iter_records([str(listing)])
    assert (record.path, record.error_kind) == (str(listing), "unreadable")
    assert "NUL" in record.error


def test_non_utf8_names_reach_the_store_with_the_good_rows(folder, tmp_path):
    listing = tmp_path / "l.txt"
    listing.write_bytes(b"dump/" + BAD + b"\ndump/missing\xff.png\n")
    specs = [str(folder), str(listing)]
    with Batcher(iter_records(specs), batch_size=8, target_hw=(2, 2), channels=1,
                 workers=1) as batcher:
        items = [it for b in batcher for it in (*b.items, *b.failed)]
    rows = []
    for i, it in enumerate(items):
        row = it.row_fields()
        row["path"] = row["path"] + f"#{i}"  # the folder and the list name one file twice
        rows.append({**row, "verdict": "error" if row.get("error_kind") else "belonging"})
    with ResultStore(tmp_path / "r.db") as store:
        run = store.start_run({"model": "m"})
        assert store.write_batch(run.config_key, rows, run_id=run.run_id) == 4
        stored = sorted(os.path.basename(r["path"]) for r in store.iter_results(run.config_key))
    assert stored == ["bad\\xff\\xfename.png#0", "bad\\xff\\xfename.png#2", "good.png#1",
                      "missing\\xff.png#3"]


def test_a_labels_file_naming_raw_non_utf8_files_matches_the_reported_names(tmp_path):
    from ronan_jax.inputs.sources import printable_name
    from ronan_jax.results.labels import read_class_labels, read_labels

    raw = b"bad\xff\xfename.png"
    labels = tmp_path / "labels.csv"
    labels.write_bytes(b"path,label\n" + raw + b",1\n" + b"good.png,0\n"
                       + b"escaped\\xff.png,1\n")  # the form `ronan export` writes
    got = read_labels(labels)
    reported = printable_name(os.fsdecode(os.path.join(os.fsencode(tmp_path), raw)))
    assert got[reported] is True and reported.encode("utf-8")
    assert got[str(tmp_path / "good.png")] is False
    assert got[str(tmp_path / "escaped\\xff.png")] is True  # taken as written
    (tmp_path / "classes.csv").write_bytes(b"\xef\xbb\xbf" + raw + b",2\n")  # with a BOM
    assert read_class_labels(tmp_path / "classes.csv") == {reported: 2}
