"""FIFOs, sockets, devices and directories where a file is expected become `not-a-file`
records, promptly, without being opened; the images around them still come through."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from ronan_jax.inputs import sources
from ronan_jax.inputs.batcher import Batcher
from ronan_jax.inputs.sources import SOURCE_ERROR_KINDS, ImageRecord, iter_records

pytestmark = pytest.mark.timeout(30)

DEADLINE_S = 10.0


def png_bytes(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (2, 2), value).save(buf, "PNG")
    return buf.getvalue()


def unblock(fifos: list[Path]) -> None:
    """Open each FIFO for writing (non-blocking) so a reader stuck in open() gets EOF."""
    for fifo in fifos:
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def records_within(specs: list[str], fifos: list[Path], **kw) -> list[ImageRecord]:
    """`iter_records(specs)` run in a thread: fails (instead of hanging) past DEADLINE_S."""
    out: list[ImageRecord] = []
    errors: list[BaseException] = []

    def body() -> None:
        try:
            out.extend(iter_records(specs, **kw))
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    thread.join(DEADLINE_S)
    if thread.is_alive():
        unblock(fifos)
        thread.join(2.0)
        pytest.fail(f"iter_records({specs}) did not return within {DEADLINE_S}s (blocked?)")
    if errors:
        raise errors[0]
    return out


@pytest.fixture
def unix_socket() -> Iterator[list[socket.socket]]:
    held: list[socket.socket] = []
    yield held
    for s in held:
        s.close()


def make_socket(path: Path, held: list[socket.socket], monkeypatch) -> Path:
    # Bind by a relative name: tmp_path can exceed the 108-byte limit of a socket address.
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    held.append(s)
    with monkeypatch.context() as m:
        m.chdir(path.parent)
        s.bind(path.name)
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    return path


@pytest.fixture
def dump(tmp_path: Path, unix_socket, monkeypatch) -> Path:
    """good images around a FIFO, a socket, a device link and a dangling link, all named as
    images, plus a FIFO and a FIFO shard that a walk of image names would never read."""
    root = tmp_path / "dump"
    root.mkdir()
    (root / "a_good.png").write_bytes(png_bytes(1))
    os.mkfifo(root / "b_pipe.png")
    make_socket(root / "c_sock.png", unix_socket, monkeypatch)
    (root / "d_null.png").symlink_to("/dev/null")
    (root / "e_gone.png").symlink_to(root / "nowhere.png")
    (root / "f_good.png").write_bytes(png_bytes(2))
    os.mkfifo(root / "pipe")  # no image extension: not an input in a walk
    return root


def kinds(records: list[ImageRecord], root: Path) -> list[tuple[str, str | None]]:
    return [(os.path.relpath(r.path, root), r.error_kind) for r in records]


WALKED = [
    ("a_good.png", None),
    ("b_pipe.png", "not-a-file"),
    ("c_sock.png", "not-a-file"),
    ("d_null.png", "not-a-file"),
    ("e_gone.png", "not-found"),
    ("f_good.png", None),
]


def test_not_a_file_is_a_source_error_kind():
    assert "not-a-file" in SOURCE_ERROR_KINDS


@pytest.mark.parametrize("name", ["b_pipe.png", "pipe", "c_sock.png", "d_null.png"])
def test_special_file_as_an_argument_is_a_not_a_file_record(dump, name):
    fifos = [dump / "b_pipe.png", dump / "pipe"]
    (record,) = records_within([str(dump / name)], fifos)
    assert record.error_kind == "not-a-file" and record.data is None
    assert record.path == str(dump / name)
    assert name in record.error


def test_a_char_device_as_an_argument_is_a_not_a_file_record():
    (record,) = records_within(["/dev/null"], [])
    assert (record.path, record.error_kind) == ("/dev/null", "not-a-file")
    assert "character device" in record.error


def test_special_files_in_a_directory_are_reported_between_the_good_images(dump):
    records = records_within([str(dump)], [dump / "b_pipe.png", dump / "pipe"])
    assert kinds(records, dump) == WALKED
    assert records[0].data == png_bytes(1) and records[-1].data == png_bytes(2)
    assert "FIFO" in records[1].error and "socket" in records[2].error


def test_special_files_matched_by_a_glob_are_reported(dump, tmp_path):
    fifos = [dump / "b_pipe.png", dump / "pipe", dump / "shard.tar"]
    os.mkfifo(dump / "shard.tar")  # a FIFO named like a shard would block the tar reader
    assert kinds(records_within([str(dump / "*.png")], fifos), dump) == WALKED
    records = records_within([str(dump / "*")], fifos)
    assert kinds(records, dump) == [*WALKED, ("shard.tar", "not-a-file")]


def test_fifo_named_like_a_shard_or_a_list_is_not_opened(dump):
    fifos = [dump / "x.tar.gz", dump / "x.txt", dump / "x.bin"]
    for fifo in fifos:
        os.mkfifo(fifo)
    specs = [str(f) for f in fifos] + ["@" + str(dump / "x.txt")]
    records = records_within(specs, fifos)
    assert [r.error_kind for r in records] == ["not-a-file"] * 4


def test_a_directory_given_as_a_list_file_is_a_not_a_file_record(dump):
    (record,) = records_within(["@" + str(dump)], [])
    assert (record.path, record.error_kind) == (str(dump), "not-a-file")
    assert "directory" in record.error


def test_directory_given_where_a_file_is_expected(dump):
    (record,) = list(sources.FileSource(str(dump)))
    assert record.error_kind == "not-a-file"
    (record,) = list(sources.TarSource(str(dump)))
    assert record.error_kind == "not-a-file"


def test_list_file_naming_special_files_reports_each_and_reads_the_rest(dump):
    listing = dump.parent / "inputs.txt"
    listing.write_text("dump/a_good.png\ndump/b_pipe.png\n/dev/null\ndump/pipe\ndump/f_good.png\n")
    records = records_within([str(listing)], [dump / "b_pipe.png", dump / "pipe"])
    assert [r.error_kind for r in records] == [None, "not-a-file", "not-a-file", "not-a-file", None]
    assert records[-1].data == png_bytes(2)


def test_a_fifo_swapped_in_after_the_stat_is_caught_by_fstat(dump, monkeypatch):
    """The race: stat() said "regular file", then the name became a FIFO before open()."""
    fifo = dump / "b_pipe.png"
    regular = os.stat(dump / "a_good.png")
    real_stat = os.stat

    def lying_stat(path, *args, **kw):
        if os.fspath(path) == str(fifo):
            return regular
        return real_stat(path, *args, **kw)

    monkeypatch.setattr(sources.os, "stat", lying_stat)
    monkeypatch.setattr(sources.os.path, "isfile", lambda p: True)  # source_for's sniffing too
    for spec in (str(fifo), "@" + str(fifo)):
        (record,) = records_within([spec], [fifo])
        assert record.error_kind == "not-a-file", spec
    (record,) = list(sources.TarSource(str(fifo)))
    assert record.error_kind == "not-a-file"


def test_skip_key_sees_special_files_like_any_input(dump):
    seen: list[str] = []

    def skip_key(path: str, member: str | None) -> bool:
        seen.append(os.path.relpath(path, dump))
        return path.endswith("b_pipe.png")

    records = records_within([str(dump)], [dump / "b_pipe.png"], skip_key=skip_key)
    assert seen == [name for name, _ in WALKED]
    assert [os.path.relpath(r.path, dump) for r in records] == [
        name for name, _ in WALKED if name != "b_pipe.png"
    ]


def test_batcher_reports_special_files_as_failed_items(dump):
    out: list = []

    def body() -> None:
        with Batcher(iter_records([str(dump)]), batch_size=4, target_hw=(2, 2), channels=1,
                     workers=2) as batcher:
            out.extend(batcher)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    thread.join(DEADLINE_S)
    if thread.is_alive():
        unblock([dump / "b_pipe.png"])
        pytest.fail("the batcher did not finish")
    items = sorted((it for b in out for it in (*b.items, *b.failed)), key=lambda it: it.index)
    assert [(os.path.relpath(it.path, dump), it.error_kind) for it in items] == WALKED
