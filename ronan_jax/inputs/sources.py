r"""Image sources: files, directories, globs, tar streams and list files, as one record stream.

Every source yields `ImageRecord`s in a deterministic order (sorted within directories, glob
matches sorted, tar members in archive order) so two runs over the same inputs see the same
sequence, and a resumed run can skip what is done. Problems reading an input (a missing path,
an unreadable file, a damaged archive, a FIFO or device where a file was expected) become
records with `error` set, never exceptions and never a blocked read: one bad path must not
stop an audit of a million images. Only regular files are ever opened (`_open_regular`).

Paths are reported as absolute, normalised paths (``os.path.abspath``), so a resume from another
working directory finds the same keys. Records carry the raw bytes; decoding happens later, by
content, in `ronan_jax.inputs.decode`.

Names that are not UTF-8. A POSIX file name is bytes; Python hands it over as a str in which
each byte that is not part of valid UTF-8 is a lone surrogate (``surrogateescape``), and such a
str cannot be written as UTF-8 text (SQLite, JSON, a terminal). Sources open files by that real
name, but every record's `path` and `member` (and so its key) is `printable_name(real)`:

* a name that is valid Unicode is reported as it is, unless it already reads like an escaped
  name (below);
* any other name is reported escaped: each undecodable byte as ``\xNN`` (two lower-case hex
  digits, ``80``..``ff``), any other lone surrogate as ``\uNNNN`` (lower-case hex), and each
  backslash as ``\\``. The file ``b"bad\xff\xfename.png"`` is reported as
  ``bad\xff\xfename.png`` (backslash, x, f, f, ...);
* a valid name "reads like an escaped name" when it holds a backslash and every backslash in
  it begins one of those three escapes, e.g. a file literally named ``a\xff.png``; it is
  escaped too (``a\\xff.png``), so it cannot be mistaken for the name with the byte 0xff.
  A backslash that begins no escape (``a\b.png``) leaves a valid name as it is.

So every reported name encodes as UTF-8, two different names never report the same string,
and `real_name(reported)` gives the real name back (to open the file later). Tar member names
are read as UTF-8 with ``surrogateescape`` and follow the same rule; list files are read as
bytes, one name per line, so one line that is not UTF-8 does not spoil the others.
"""

from __future__ import annotations

import codecs
import glob
import lzma
import os
import posixpath
import re
import stat
import tarfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)
"""Extensions (lower case) that mark a file as an image in directories, globs and tar shards."""

TAR_SUFFIXES: tuple[str, ...] = (
    ".tar",
    ".tar.gz",
    ".tgz",
    ".tar.bz2",
    ".tbz2",
    ".tbz",
    ".tar.xz",
    ".txz",
)
LIST_SUFFIXES: tuple[str, ...] = (".txt", ".lst")
_GLOB_CHARS = frozenset("*?[")

# Error kinds a source can put on a record (decode errors have their own kinds).
SOURCE_ERROR_KINDS: tuple[str, ...] = ("not-found", "unreadable", "corrupt-archive", "not-a-file")
"""``not-found``: no such path; ``unreadable``: it exists but cannot be opened or read;
``corrupt-archive``: a tar stream is damaged; ``not-a-file``: a FIFO, socket, device or
directory where a regular file was expected (never opened: reading one could block forever)."""

# Flags for opening an input: never block on a FIFO that slipped in after the stat, never make
# a terminal our controlling one, never leak the descriptor into a child process.
_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_NOCTTY", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)

KeyFilter = Callable[[str, "str | None"], bool]
"""``(path, member) -> bool``: True drops the record before its bytes are read. It is given
the record's own (printable) `path` and `member`, so it can test them against stored keys."""


@dataclass(frozen=True)
class ImageRecord:
    """One input image: where it came from and its raw bytes, or why they could not be read.

    `member` is the name inside a tar archive, None for a plain file. `path` and `member` are
    printable names (`printable_name`: always valid UTF-8; `real_name` gives the file's real
    name back). Exactly one of `data` and `error` is set; `error_kind` is one of
    `SOURCE_ERROR_KINDS` when `error` is.
    """

    path: str
    member: str | None = None
    data: bytes | None = None
    error: str | None = None
    error_kind: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        """``(path, member or "")``: the identity the results store uses for resume."""
        return (self.path, self.member or "")


_SURROGATE = re.compile("[\ud800-\udfff]")
# The escapes printable_name writes: a backslash, a byte 80..ff, a surrogate outside dc80..dcff.
_ESCAPE = re.compile(
    r"\\(?:\\|x[89a-f][0-9a-f]|ud[89ab][0-9a-f]{2}|udc[0-7][0-9a-f]|ud[d-f][0-9a-f]{2})"
)


def _reads_escaped(name: str) -> bool:
    """True when `name` holds a backslash and each one begins an `_ESCAPE`."""
    i = name.find("\\")
    if i < 0:
        return False
    while i >= 0:
        m = _ESCAPE.match(name, i)
        if m is None:
            return False
        i = name.find("\\", m.end())
    return True


def _escape_char(ch: str) -> str:
    cp = ord(ch)
    if ch == "\\":
        return "\\\\"
    if 0xDC80 <= cp <= 0xDCFF:  # surrogateescape's stand-in for the byte cp - 0xDC00
        return f"\\x{cp - 0xDC00:02x}"
    if 0xD800 <= cp <= 0xDFFF:
        return f"\\u{cp:04x}"
    return ch


def printable_name(name: str) -> str:
    """The name a record reports for the real (possibly surrogate-escaped) file name `name`.

    Valid Unicode names come back unchanged unless they read like an escaped name; others are
    escaped (see the module docstring). Always encodable as UTF-8, and one-to-one.
    """
    if _SURROGATE.search(name) is None and not _reads_escaped(name):
        return name
    return "".join(_escape_char(ch) for ch in name)


def _unescape(m: re.Match[str]) -> str:
    token = m.group()
    if token == "\\\\":
        return "\\"
    if token[1] == "x":
        return chr(0xDC00 + int(token[2:], 16))
    return chr(int(token[2:], 16))


def real_name(reported: str) -> str:
    """The real file (or member) name that `printable_name` reported as `reported`.

    The inverse of `printable_name`: pass the result to `open` to read the file again.
    """
    if not _reads_escaped(reported):
        return reported
    return _ESCAPE.sub(_unescape, reported)


def _printable_text(text: str) -> str:
    """`text` (an error message) with any surrogate escaped, so it can be stored as UTF-8."""
    if _SURROGATE.search(text) is None:
        return text
    return _SURROGATE.sub(lambda m: _escape_char(m.group()), text)


def has_image_extension(name: str) -> bool:
    """True when `name` ends in one of `IMAGE_EXTENSIONS` (case-insensitive)."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _has_suffix(name: str, suffixes: tuple[str, ...]) -> bool:
    return name.lower().endswith(suffixes)


def _error(path: str, kind: str, message: str, member: str | None = None) -> ImageRecord:
    """An error record for the real `path` (and already printable `member`)."""
    return ImageRecord(
        path=printable_name(path), member=member, error=_printable_text(message), error_kind=kind
    )


class _SourceError(OSError):
    """Why an input could not be opened, as the record's `error_kind` and `error`."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def _describe_mode(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    return f"not a regular file (mode {stat.filemode(mode)})"


def _not_a_file(path: str, mode: int) -> _SourceError:
    return _SourceError("not-a-file", f"not a regular file: {path} is {_describe_mode(mode)}")


def _os_error(path: str, noun: str, e: OSError) -> _SourceError:
    if isinstance(e, FileNotFoundError):
        return _SourceError("not-found", f"no such {noun}: {path}")
    what = "" if noun == "file" else f"{noun} "
    return _SourceError("unreadable", f"cannot read {what}{path}: {e.strerror or e}")


def _open_regular(path: str, noun: str = "file") -> BinaryIO:
    """Open `path` for binary reading if, and only if, it is a regular file.

    Anything else (FIFO, socket, device, directory) raises `_SourceError` ``not-a-file``
    without being opened: a FIFO would block the reader forever, a device could be endless
    or have side effects. The stat-then-open race (the name swapped for a FIFO in between) is
    closed by opening non-blocking and checking the opened descriptor again with fstat.
    """
    try:
        st = os.stat(path)
    except ValueError:  # an embedded NUL: no file can have that name
        raise _SourceError("not-found", f"no such {noun} (the name holds a NUL): {path}") from None
    except OSError as e:
        raise _os_error(path, noun, e) from None
    if not stat.S_ISREG(st.st_mode):
        raise _not_a_file(path, st.st_mode)
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as e:
        raise _os_error(path, noun, e) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _not_a_file(path, st.st_mode)
        if _OPEN_FLAGS & getattr(os, "O_NONBLOCK", 0):
            os.set_blocking(fd, True)  # no effect on regular files; plain semantics anyway
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _read_file(path: str) -> ImageRecord:
    try:
        with _open_regular(path) as f:
            return ImageRecord(path=printable_name(path), data=f.read())
    except _SourceError as e:
        return _error(path, e.kind, e.message)
    except OSError as e:  # I/O errors while reading
        return _error(path, "unreadable", f"cannot read {path}: {e.strerror or e}")


class Source:
    """A deterministic stream of `ImageRecord`s.

    `iter(source)` yields every record; `records(skip_key)` drops records whose
    ``(path, member)`` satisfies `skip_key` before their bytes are read (tar members are
    still read past, as a stream must be).
    """

    def records(self, skip_key: KeyFilter | None = None) -> Iterator[ImageRecord]:
        """Yield the records of this source, leaving out those `skip_key` accepts."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[ImageRecord]:
        return self.records()


@dataclass(frozen=True)
class FileSource(Source):
    """A single file, decoded by content whatever its extension."""

    path: str

    def records(self, skip_key: KeyFilter | None = None) -> Iterator[ImageRecord]:
        """Yield the one record of this file (an error record when it cannot be read)."""
        path = os.path.abspath(self.path)
        if skip_key is not None and skip_key(printable_name(path), None):
            return
        yield _read_file(path)


@dataclass(frozen=True)
class DirSource(Source):
    """Every image-extension file under a directory, recursively, sorted by name per level.

    The walk is depth first with each directory's entries sorted by name (files and
    subdirectories interleaved), which orders records like their sorted relative paths.
    Symlinked directories are not followed (no loops); symlinked files are. An entry with an
    image name that is not a regular file (a FIFO, socket, device, a link to a directory) is a
    ``not-a-file`` record and a dangling link a ``not-found`` one: reported, never opened.
    """

    path: str

    def records(self, skip_key: KeyFilter | None = None) -> Iterator[ImageRecord]:
        """Yield a record for each image file under the directory."""
        yield from self._walk(os.path.abspath(self.path), skip_key)

    def _walk(self, folder: str, skip_key: KeyFilter | None) -> Iterator[ImageRecord]:
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            yield _error(folder, "unreadable", f"cannot list {folder}: {e.strerror or e}")
            return
        for entry in entries:
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                is_dir = False
            if is_dir:
                yield from self._walk(entry.path, skip_key)
            elif has_image_extension(entry.name):  # _read_file reports what is not a file
                if skip_key is not None and skip_key(printable_name(entry.path), None):
                    continue
                yield _read_file(entry.path)


@dataclass(frozen=True)
class TarSource(Source):
    """Image members of a tar archive (WebDataset-style shard), read as a stream.

    Opened with mode ``'r|*'``: plain, gzip, bzip2 or xz, never extracted to disk, so a shard
    can be arbitrarily large. Members are yielded in archive order; members without an image
    extension (``.json``, ``.cls``, ...) and directories are passed over. Every other member
    gets a record:

    * a regular file: its bytes;
    * a hard link: the bytes of the latest earlier member of the name it links to (as
      ``tarfile.extractfile`` reads it), read again from the archive (a plain tar is seeked,
      a compressed one streamed a second time); a link to nothing earlier is ``not-a-file``;
    * a symbolic link, a device, a FIFO: ``not-a-file``, naming what it is (links inside an
      archive are not followed).

    Member names are `printable_name`s. A name met again in the same archive is reported as
    ``NAME#k``, k = 2, 3, ... in archive order (``a.png``, ``a.png#2``, ``a.png#3``), so each
    member has its own key, the same on every run (a resume that skips a member does not
    renumber the rest). No real member can be called ``a.png#2``: that name has no image
    extension. A damaged archive yields an error record at the point of damage and ends.
    """

    path: str

    def records(self, skip_key: KeyFilter | None = None) -> Iterator[ImageRecord]:
        """Yield a record per image member, then stop at the end or at the first damage."""
        path = os.path.abspath(self.path)
        try:
            fileobj = _open_regular(path)
        except _SourceError as e:
            yield _error(path, e.kind, e.message)
            return
        shown = printable_name(path)
        names = _MemberNames()
        targets: dict[str, tarfile.TarInfo] = {}  # name -> latest regular member it gives
        member_name: str | None = None
        try:
            with (
                fileobj,
                _open_tar_stream(fileobj) as tar,
            ):
                for info in tar:
                    member_name = info.name
                    target = _note_target(info, targets)
                    if info.isdir() or not has_image_extension(info.name):
                        continue
                    member = names.unique(printable_name(info.name))
                    if skip_key is not None and skip_key(shown, member):
                        continue  # the stream reads past the member's data by itself
                    if _is_data_member(info):
                        f = tar.extractfile(info)
                        data = f.read() if f is not None else b""
                        yield ImageRecord(path=shown, member=member, data=data)
                    elif info.islnk() and target is not None:
                        yield _hard_link_record(path, tar, member, target)
                    else:
                        yield _error(
                            path, "not-a-file", _member_problem(path, member, info), member=member
                        )
        except _DAMAGE as e:
            # tarfile, gzip, bz2, lzma and zlib raise a mix of these for damaged streams.
            where = f" at member {printable_name(member_name)!r}" if member_name else ""
            yield _error(
                path,
                "corrupt-archive",
                f"damaged tar archive {path}{where}: {type(e).__name__}: {e}",
                member=None,
            )


def _open_tar_stream(fileobj: BinaryIO) -> tarfile.TarFile:
    """A forward-only reader of any tar flavour; names decoded as UTF-8 whatever the locale,
    undecodable bytes kept (``surrogateescape``) for `printable_name`."""
    return tarfile.open(fileobj=fileobj, mode="r|*", encoding="utf-8", errors="surrogateescape")


_DAMAGE = (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError)


class _MemberNames:
    """Gives each member of one archive its own name: repeats become ``NAME#k``."""

    def __init__(self) -> None:
        self._given: set[str] = set()
        self._next: dict[str, int] = {}

    def unique(self, name: str) -> str:
        """`name` the first time; afterwards ``name#k``, the smallest k >= 2 still free."""
        if name not in self._given:
            self._given.add(name)
            return name
        k = self._next.get(name, 2)
        while f"{name}#{k}" in self._given:
            k += 1
        self._next[name] = k + 1
        self._given.add(f"{name}#{k}")
        return f"{name}#{k}"


def _is_data_member(info: tarfile.TarInfo) -> bool:
    """A member whose own bytes are the file: regular, or a type tarfile reads as regular."""
    return info.isreg() or info.type not in tarfile.SUPPORTED_TYPES


def _note_target(
    info: tarfile.TarInfo, targets: dict[str, tarfile.TarInfo]
) -> tarfile.TarInfo | None:
    """Track which regular member each name stands for; return a hard link's target."""
    key = posixpath.normpath(info.name)
    if _is_data_member(info):
        targets[key] = info
        return None
    if info.islnk():
        target = targets.get(posixpath.normpath(info.linkname))
        if target is not None:
            targets[key] = target  # a link to this link reads the same bytes
        else:
            targets.pop(key, None)
        return target
    targets.pop(key, None)  # a later symlink or device of that name shadows the file
    return None


def _member_problem(path: str, member: str, info: tarfile.TarInfo) -> str:
    where = f"member {member!r} of {path}"
    if info.issym():
        return (
            f"not a regular file: {where} is a symbolic link to {info.linkname!r} "
            "(links inside an archive are not followed)"
        )
    if info.islnk():
        return (
            f"not a regular file: {where} is a hard link to {info.linkname!r}, which no "
            "earlier regular member of the archive provides"
        )
    if info.ischr():
        return f"not a regular file: {where} is a character device"
    if info.isblk():
        return f"not a regular file: {where} is a block device"
    if info.isfifo():
        return f"not a regular file: {where} is a FIFO (named pipe)"
    return f"not a regular file: {where} has tar type {info.type!r}"


def _hard_link_record(
    path: str, tar: tarfile.TarFile, member: str, target: tarfile.TarInfo
) -> ImageRecord:
    """The record of hard-link member `member`: the bytes of `target`, read again."""
    try:
        data = _read_member_again(path, tar, target)
    except _DAMAGE as e:
        return _error(
            path,
            "unreadable",
            f"cannot read member {target.name!r} of {path}, the target of hard link "
            f"{member!r}: {type(e).__name__}: {e}",
            member=member,
        )
    return ImageRecord(path=printable_name(path), member=member, data=data)


def _read_member_again(path: str, tar: tarfile.TarFile, target: tarfile.TarInfo) -> bytes:
    """`target`'s bytes from a second handle on the archive, leaving `tar`'s stream alone.

    A plain tar is read at the member's offset; a compressed one (or a sparse member) is
    streamed again up to it, which costs a pass over the archive per hard link.
    """
    plain = getattr(tar.fileobj, "comptype", None) == "tar"
    with _open_regular(path) as f:
        if plain and not target.issparse():
            f.seek(target.offset_data)
            data = f.read(target.size)
            if len(data) != target.size:
                raise tarfile.ReadError("unexpected end of data")
            return data
        with _open_tar_stream(f) as again:
            for info in again:
                if info.offset_data == target.offset_data and info.name == target.name:
                    member = again.extractfile(info)
                    return member.read() if member is not None else b""
                if info.offset > target.offset:
                    break
    raise tarfile.ReadError(f"member {target.name!r} not found on a second pass")


@dataclass(frozen=True)
class GlobSource(Source):
    """Matches of a glob pattern (``**`` recursive), sorted; each match dispatched by kind.

    Directories expand recursively, tar archives (by extension) stream their members, files
    with an image extension are read; other matches are ignored. No match yields a
    ``not-found`` error record, so a mistyped pattern is visible in the results.
    """

    pattern: str

    def records(self, skip_key: KeyFilter | None = None) -> Iterator[ImageRecord]:
        """Yield the records of every match, in sorted order of the matched paths."""
        matches = sorted(os.path.abspath(m) for m in glob.glob(self.pattern, recursive=True))
        sources: list[Source] = []
        for match in matches:
            if os.path.isdir(match):
                sources.append(DirSource(match))
            elif _has_suffix(match, TAR_SUFFIXES):
                sources.append(TarSource(match))
            elif has_image_extension(match):
                sources.append(FileSource(match))
        if not sources:
            yield _error(
                os.path.abspath(self.pattern), "not-found", f"no image matches {self.pattern!r}"
            )
            return
        for source in sources:
            yield from source.records(skip_key)


@dataclass(frozen=True)
class ListFileSource(Source):
    r"""A text file naming one input per line.

    Blank lines and lines starting with ``#`` are skipped; relative paths are resolved against
    the list file's folder (not the working directory), so a list travels with its data.
    Entries are literal paths (no glob expansion, no nested lists): a directory expands, a tar
    archive streams, anything else is read as an image. Lines are file names as bytes
    (``\n``, ``\r\n`` or ``\r`` ends one), decoded one by one like names from the file
    system, so a line that is not UTF-8 names its file like any other; a leading UTF-8 byte
    order mark is dropped. A list holding NUL bytes (UTF-16, a binary file) is not a list.
    """

    path: str

    def entries(self) -> list[str]:
        """The absolute paths the list names, in file order (real names, for opening)."""
        path = os.path.abspath(self.path)
        folder = os.path.dirname(path)
        with _open_regular(path, "list file") as f:
            data = f.read()
        if b"\0" in data:
            raise _SourceError(
                "unreadable",
                f"list file {path} is not a text file: it holds NUL bytes (UTF-16?); "
                "write it as UTF-8, one path per line",
            )
        if data.startswith(codecs.BOM_UTF8):
            data = data[len(codecs.BOM_UTF8) :]
        out = []
        for line in data.splitlines():
            entry = _decode_name(line).strip()
            if not entry or entry.startswith("#"):
                continue
            out.append(os.path.normpath(os.path.join(folder, os.path.expanduser(entry))))
        return out

    def records(self, skip_key: KeyFilter | None = None) -> Iterator[ImageRecord]:
        """Yield the records of each listed entry, in list order."""
        path = os.path.abspath(self.path)
        try:
            entries = self.entries()
        except _SourceError as e:
            yield _error(path, e.kind, e.message)
            return
        except (OSError, UnicodeDecodeError) as e:
            yield _error(path, "unreadable", f"cannot read list file {path}: {e}")
            return
        for entry in entries:
            yield from _literal_source(entry).records(skip_key)


def _decode_name(raw: bytes) -> str:
    """A file name read as bytes, as `os.listdir` would give it (undecodable bytes kept)."""
    try:
        return os.fsdecode(raw)
    except UnicodeDecodeError:  # a platform whose file system encoding is strict
        return raw.decode("utf-8", "surrogateescape")


def _is_tar(path: str) -> bool:
    if _has_suffix(path, TAR_SUFFIXES):
        return True
    if has_image_extension(path) or _has_suffix(path, LIST_SUFFIXES):
        return False
    try:
        with _open_regular(path) as f:  # never tarfile's own open: it would block on a FIFO
            return tarfile.is_tarfile(f)
    except (OSError, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError):
        return False


def _literal_source(path: str) -> Source:
    if os.path.isdir(path):
        return DirSource(path)
    if os.path.isfile(path) and _is_tar(path):
        return TarSource(path)
    return FileSource(path)  # a missing path becomes a not-found record when read


def source_for(spec: str) -> Source:
    """Pick the source for one command-line input.

    In order: ``@list`` is a list file; an existing directory is walked; an existing tar
    archive (by extension, or by content for unknown extensions) is streamed; an existing
    ``.txt``/``.lst`` file is a list file; a missing path containing ``*?[`` is a glob;
    anything else is one file (a missing one yields a ``not-found`` record).
    """
    if spec.startswith("@"):
        return ListFileSource(spec[1:])
    if os.path.isdir(spec):
        return DirSource(spec)
    if os.path.isfile(spec):
        if _is_tar(spec):
            return TarSource(spec)
        if _has_suffix(spec, LIST_SUFFIXES):
            return ListFileSource(spec)
        return FileSource(spec)
    if _GLOB_CHARS.intersection(spec):
        return GlobSource(spec)
    return FileSource(spec)


def iter_records(
    specs: Iterable[str], *, skip_key: KeyFilter | None = None
) -> Iterator[ImageRecord]:
    """Yield the records of every input spec, in spec order (see `source_for`).

    `skip_key(path, member)` returning True drops a record before its bytes are read; use it
    to resume cheaply from the store's done keys.
    """
    for spec in specs:
        yield from source_for(spec).records(skip_key)
