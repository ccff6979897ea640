"""Sources: directories, globs, list files and tar streams yield the right records in order."""

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from ronan_jax.inputs import sources
from ronan_jax.inputs.sources import (
    DirSource,
    GlobSource,
    ListFileSource,
    TarSource,
    iter_records,
    source_for,
)


def png_bytes(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (2, 2), value).save(buf, "PNG")
    return buf.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def make_tar(path: Path, members: list[tuple[str, bytes]], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "dump"
    write(root / "b.png", png_bytes(1))
    write(root / "a" / "z.jpg", png_bytes(2))  # decoded by content later, not by extension
    write(root / "a" / "c.png", png_bytes(3))
    write(root / "notes.txt", b"not an image")
    write(root / "sub" / "deeper" / "x.PNG", png_bytes(4))
    return root


def rel(records, root: Path) -> list[str]:
    return [os.path.relpath(r.path, root) for r in records]


def test_directory_is_walked_recursively_in_sorted_order_with_image_extensions_only(tree):
    records = list(DirSource(str(tree)))
    assert rel(records, tree) == ["a/c.png", "a/z.jpg", "b.png", "sub/deeper/x.PNG"]
    assert all(r.member is None and r.error is None for r in records)
    assert records[2].data == (tree / "b.png").read_bytes()
    assert all(os.path.isabs(r.path) for r in records)


def test_glob_matches_sorted_and_recursive(tree, monkeypatch):
    monkeypatch.chdir(tree)
    assert rel(GlobSource("*.png"), tree) == ["b.png"]
    assert rel(GlobSource("**/*.png"), tree) == ["a/c.png", "b.png"]
    assert rel(iter_records(["a/*"]), tree) == ["a/c.png", "a/z.jpg"]


def test_glob_without_matches_is_a_not_found_record(tmp_path):
    (record,) = list(iter_records([str(tmp_path / "nothing*.png")]))
    assert record.error_kind == "not-found" and record.data is None


def test_missing_path_is_an_error_record_not_an_exception(tmp_path):
    (record,) = list(iter_records([str(tmp_path / "missing.png")]))
    assert record.error_kind == "not-found"
    assert "missing.png" in record.error


def test_list_file_skips_comments_and_resolves_relative_to_its_folder(tree, tmp_path, monkeypatch):
    listing = tree / "lists" / "inputs.txt"
    write(
        listing,
        b"# images to audit\n\n../b.png\n  ../a/c.png  \n../gone.png\n"
        + str(tree / "sub").encode()
        + b"\n",
    )
    monkeypatch.chdir(tmp_path)  # somewhere else: paths must not depend on the cwd
    for spec in (str(listing), "@" + str(listing)):
        records = list(iter_records([spec]))
        assert rel(records, tree) == ["b.png", "a/c.png", "gone.png", "sub/deeper/x.PNG"]
        assert [r.error_kind for r in records] == [None, None, "not-found", None]
    lst = write(tree / "inputs.lst", b"b.png\n")
    assert isinstance(source_for(str(lst)), ListFileSource)


def test_tar_members_stream_in_archive_order_and_skip_non_images(tmp_path, monkeypatch):
    members = [
        ("s/002.png", png_bytes(2)),
        ("s/002.json", b"{}"),
        ("s/001.png", png_bytes(1)),
        ("s/003.png", b"corrupt member bytes"),  # among good ones: decoding reports it later
        ("s/004.jpg", png_bytes(4)),
    ]
    opened_modes = []
    real_open = tarfile.open

    def spy_open(*args, **kw):
        opened_modes.append(kw.get("mode"))
        return real_open(*args, **kw)

    monkeypatch.setattr(sources.tarfile, "open", spy_open)
    for name, mode in (("shard.tar", "w"), ("shard.tar.gz", "w:gz"), ("shard.tar.xz", "w:xz")):
        with real_open(tmp_path / name, mode) as tar:
            for member, data in members:
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        before = set(os.listdir(tmp_path))
        records = list(iter_records([str(tmp_path / name)]))
        assert set(os.listdir(tmp_path)) == before  # nothing extracted to disk
        assert [r.member for r in records] == ["s/002.png", "s/001.png", "s/003.png", "s/004.jpg"]
        assert {r.path for r in records} == {str(tmp_path / name)}
        assert records[0].data == png_bytes(2)
        assert records[2].data == b"corrupt member bytes" and records[2].error is None
    assert opened_modes and set(opened_modes) == {"r|*"}


def test_tar_is_recognised_by_content_when_the_extension_is_unknown(tmp_path):
    shard = make_tar(tmp_path / "shard.bin", [("a.png", png_bytes(1))])
    assert isinstance(source_for(str(shard)), TarSource)
    assert [r.member for r in iter_records([str(shard)])] == ["a.png"]


def test_truncated_tar_gz_yields_good_members_then_a_corrupt_archive_record(tmp_path):
    good = [(f"{i:03d}.png", os.urandom(40_000)) for i in range(3)]  # incompressible
    shard = make_tar(tmp_path / "shard.tar.gz", good, "w:gz")
    data = shard.read_bytes()
    shard.write_bytes(data[: int(len(data) * 0.6)])
    records = list(iter_records([str(shard)]))
    assert [r.member for r in records[:-1]] == ["000.png"]
    assert records[-1].error_kind == "corrupt-archive"
    assert records[-1].data is None


def test_glob_of_tar_shards_streams_each_shard_in_sorted_order(tmp_path):
    make_tar(tmp_path / "b.tar", [("x.png", png_bytes(1))])
    make_tar(tmp_path / "a.tar", [("y.png", png_bytes(2))])
    records = list(iter_records([str(tmp_path / "*.tar")]))
    assert [(Path(r.path).name, r.member) for r in records] == [
        ("a.tar", "y.png"),
        ("b.tar", "x.png"),
    ]


def test_specs_are_concatenated_in_order_and_skip_key_drops_before_reading(tree):
    specs = [str(tree / "b.png"), str(tree / "a")]
    assert rel(iter_records(specs), tree) == ["b.png", "a/c.png", "a/z.jpg"]
    seen = []

    def skip_key(path, member):
        seen.append((os.path.relpath(path, tree), member))
        return path.endswith("c.png")

    assert rel(iter_records(specs, skip_key=skip_key), tree) == ["b.png", "a/z.jpg"]
    assert seen == [("b.png", None), ("a/c.png", None), ("a/z.jpg", None)]


def test_record_key_uses_empty_string_for_plain_files(tree):
    record = next(iter(DirSource(str(tree))))
    assert record.key == (record.path, "")


def test_io_and_store_import_without_jax():
    code = "import sys, ronan_jax.inputs, ronan_jax.results.store; print('jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
