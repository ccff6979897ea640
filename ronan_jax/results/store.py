"""Audit results in SQLite: one row per image, resumable, atomic per batch, mergeable.

Three tables, defined once below (`_SCHEMA`), versioned with SQLite's ``user_version``:

* ``runs``: one row per audit invocation -- its id, creation time, the full configuration as
  JSON (model identity, reference identity, profile id, inversion settings, versions, ...) and
  its ``config_key``: the SHA-256 of the canonical JSON of the settings that affect results
  (the configuration minus `NON_KEY_FIELDS`). Runs with equal keys produce interchangeable
  rows, which is what makes resuming and merging shards safe.
* ``results``: one row per (config_key, path, member) -- ``member`` is ``''`` for plain files.
* ``telemetry`` (schema 2): one row per (run_id, batch) -- what each audit batch cost: images,
  the batch size used, steps run against the full budget, images/s, memory in use
  (:mod:`ronan_jax.results.telemetry`). Recorded only; never part of a result.

A version-1 database (no telemetry) is upgraded in place when opened for writing (the table
is added, nothing else changes) and is read as it is when opened read-only and by `merge`.

Writes go in one transaction per batch (a kill mid-batch leaves none of its rows) and are
upserts on that key, so re-running never duplicates. The database uses WAL journalling so a
reader (a progress view, a report) never blocks the writer. A `ResultStore` is meant for one
thread; give each process or thread its own.

The store knows nothing about images or models: rows are plain dicts with the keys in
`ROW_KEYS`; ``path`` and ``verdict`` are required, the rest default to NULL.

Text is always stored as valid UTF-8, by one rule (`escape_text`): an undecodable byte --
what ``os.fsdecode`` turns into a lone surrogate U+DC80..U+DCFF -- is written ``\\xNN``
(its two hex digits), any other lone surrogate ``\\uNNNN``; valid text is unchanged.
``bad\\udcffname.png`` is stored ``bad\\xffname.png``, which names the original bytes. The
rule applies to every TEXT value written (bytes values and bytes paths included), and to
invalid UTF-8 read from a database another tool wrote, so one row's name never costs a
batch and reading never fails on it. The run configuration is JSON: there a lone surrogate
is JSON's own ``\\udcff`` escape and reads back exactly.

A row the store cannot read as a result -- its verdict is NULL, not text or not one of
`VERDICTS`, or it has no path (a hand-edited database, one another tool wrote, rows slipped
past the CHECK constraint) -- is *invalid*, and one rule covers it everywhere: it reads as an
error of kind `INVALID_ROW` naming what was stored (`iter_results`, `checked_row`), counts as
an error (`count_by_verdict`) and is never done (`done_keys`), so an audit judges the image
again and its row replaces the invalid one; a merge copies it as such an error row (a row
without a path cannot be keyed and is left out). Values of the wrong storage class (bytes in
any column, text in a number column) read as text, never as bytes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import enum
import hashlib
import json
import operator
import os
import re
import sqlite3
import urllib.parse
import uuid
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ronan_jax.attribution.verdicts import BELONGING, ERROR, INVALID_ROW, NON_BELONGING, VERDICTS

SCHEMA_VERSION = 4
READABLE_VERSIONS: tuple[int, ...] = (1, 2, 3, 4)
"""Schema versions this code reads; older ones are upgraded when opened for writing."""

NON_KEY_FIELDS: frozenset[str] = frozenset(
    {"versions", "info", "notes", "host", "created", "batch_size", "workers", "prefetch"}
)
"""Top-level configuration entries that are recorded but do not change a result.

Software versions are among them on purpose: a resume after a patch upgrade should continue the
same run; put a version into the key explicitly (e.g. under ``"engine"``) if it must split runs.
"""

# The results columns after config_key: (name, SQL type and constraints). The one place the
# schema lives; write_batch, iter_results and merge are derived from it.
_RESULT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("path", "TEXT NOT NULL"),
    ("member", "TEXT NOT NULL DEFAULT ''"),
    ("sha256", "TEXT"),
    ("size_bytes", "INTEGER"),
    ("width", "INTEGER"),
    ("height", "INTEGER"),
    ("mode", "TEXT"),
    ("resized", "INTEGER"),
    ("loss", "REAL"),
    ("ref_loss", "REAL"),
    ("calibrated_loss", "REAL"),
    ("z", "REAL"),
    ("critical_value", "REAL"),
    ("p_value", "REAL"),
    ("verdict", "TEXT NOT NULL CHECK (verdict IN ('belonging', 'non-belonging', 'error'))"),
    ("error_kind", "TEXT"),
    ("error", "TEXT"),
    ("started", "TEXT"),
    ("finished", "TEXT"),
    ("seconds", "REAL"),
    ("evidence_path", "TEXT"),
    ("run_id", "TEXT"),
    ("class_label", "INTEGER"),  # schema 3: a conditional model's class (known, or the winner)
    # schema 4, the second chance: 1 if the image was inverted a second time on the model
    # (0 if not, NULL where the profile has none), and then its first-pass model loss
    ("second_pass", "INTEGER"),
    ("first_loss", "REAL"),
)
_ADDED_COLUMNS: dict[str, int] = {"class_label": 3, "second_pass": 4, "first_loss": 4}
"""Result columns added after schema 1, with the version that added them: older databases
read them as NULL, and are given them when opened for writing."""
ROW_KEYS: tuple[str, ...] = tuple(name for name, _ in _RESULT_COLUMNS)
"""Keys a result row may have (``write_batch``); ``path`` and ``verdict`` are required."""
_REQUIRED = ("path", "verdict")

_VERDICT_SET = frozenset(VERDICTS)
_VERDICT_LIST = ", ".join(f"'{v}'" for v in VERDICTS)
# Whether a stored row is a result (NULL-safe: a NULL verdict is invalid, not unknown).
_VALID_SQL = f"(path IS NOT NULL AND COALESCE(verdict IN ({_VERDICT_LIST}), 0))"
_VERDICT_SQL = f"CASE WHEN {_VALID_SQL} THEN verdict ELSE '{ERROR}' END"

# The telemetry columns after (run_id, config_key, batch): name and SQL type.
_TELEMETRY_COLUMNS: tuple[tuple[str, str], ...] = (
    ("recorded", "TEXT"),
    ("images", "INTEGER"),
    ("images_per_call", "INTEGER"),
    ("calls", "INTEGER"),
    ("oom_splits", "INTEGER"),
    ("steps_run", "INTEGER"),
    ("steps_budget", "INTEGER"),
    ("seconds", "REAL"),
    ("images_per_s", "REAL"),
    ("memory_bytes", "INTEGER"),
    ("memory_peak_bytes", "INTEGER"),
    ("memory_source", "TEXT"),
)
TELEMETRY_KEYS: tuple[str, ...] = ("batch", *(name for name, _ in _TELEMETRY_COLUMNS))
"""Keys a telemetry record may have (``write_telemetry``); ``batch`` is required."""
_TELEMETRY_LIST = ", ".join(("run_id", "config_key", *TELEMETRY_KEYS))
_TELEMETRY_SCHEMA = f"""
CREATE TABLE telemetry (
    run_id TEXT NOT NULL,
    config_key TEXT NOT NULL,
    batch INTEGER NOT NULL,
    {", ".join(f"{name} {decl}" for name, decl in _TELEMETRY_COLUMNS)},
    PRIMARY KEY (run_id, batch)
);
CREATE INDEX telemetry_config_key ON telemetry (config_key);
"""
_KEY_COLUMNS = ("config_key", "path", "member")

_SCHEMA = f"""
CREATE TABLE runs (
    run_id TEXT PRIMARY KEY,
    created TEXT NOT NULL,
    config_key TEXT NOT NULL,
    config_json TEXT NOT NULL
);
CREATE INDEX runs_config_key ON runs (config_key);
CREATE TABLE results (
    config_key TEXT NOT NULL,
    {", ".join(f"{name} {decl}" for name, decl in _RESULT_COLUMNS)},
    UNIQUE (config_key, path, member)
);
CREATE INDEX results_verdict ON results (config_key, verdict);
""" + _TELEMETRY_SCHEMA


def _execute_script(conn: sqlite3.Connection, script: str) -> None:
    """Statement by statement: executescript would COMMIT the open transaction."""
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


class StoreError(Exception):
    """A results-database operation that cannot be done (bad row, unknown run, bad file)."""


class SchemaVersionError(StoreError):
    """The database was written by another schema version of ronan-jax."""


class ShardMismatchError(StoreError):
    """Shards to merge hold results of different configurations (config keys)."""


@dataclass(frozen=True)
class RunInfo:
    """A run: its id, its results key, when it started and its full configuration."""

    run_id: str
    config_key: str
    created: str = ""
    config: dict[str, Any] = field(default_factory=dict, compare=False)


def utc_now() -> str:
    """The current UTC time as ISO 8601 text (the store's timestamp format)."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds")


_SURROGATE = re.compile("[\ud800-\udfff]")


def _escape_surrogate(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"


def escape_text(text: str | bytes) -> str:
    """`text` as valid UTF-8 text, by the store's one escaping rule (see the module
    docstring): undecodable bytes (lone surrogates U+DC80..U+DCFF, or invalid UTF-8 in
    bytes) become ``\\xNN``, other lone surrogates ``\\uNNNN``; valid text is unchanged."""
    if isinstance(text, bytes):
        return text.decode("utf-8", "backslashreplace")
    if text.isascii():
        return text
    return _SURROGATE.sub(_escape_surrogate, text)


def _text_arg(value: Any) -> Any:
    """An id or key argument bound as text: escaped when it is a string."""
    return escape_text(value) if isinstance(value, str) else value


def _decode_text(raw: bytes) -> str:
    """Text read from SQLite: invalid UTF-8 (written by another tool) by the same rule."""
    return raw.decode("utf-8", "backslashreplace")


def _json_default(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, set | frozenset):
        return sorted(obj)
    if hasattr(obj, "tolist"):  # NumPy scalars and arrays, without importing NumPy
        return obj.tolist()
    raise TypeError(f"cannot store {type(obj).__name__} in a run configuration")


def _json_surrogate(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def _config(text: str | None) -> dict[str, Any]:
    """A stored run configuration; ``{}`` for one that is not a JSON object."""
    try:
        config = json.loads(text) if text else {}
    except ValueError:
        return {}
    return config if isinstance(config, dict) else {}


def canonical_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys, no whitespace, no NaN; dataclasses become dicts.

    A lone surrogate (an undecodable file-name byte) is written as a JSON ``\\uNNNN``
    escape, so the text is valid UTF-8 and ``json.loads`` gives the same object back."""
    try:
        text = json.dumps(
            obj,
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
            default=_json_default,
        )
    except (TypeError, ValueError) as e:
        raise StoreError(f"configuration is not JSON-serialisable: {e}") from e
    return text if text.isascii() else _SURROGATE.sub(_json_surrogate, text)


def make_config_key(
    config: Mapping[str, Any], non_key_fields: Collection[str] = NON_KEY_FIELDS
) -> str:
    """SHA-256 (hex) of the canonical JSON of `config` without its `non_key_fields` entries."""
    settings = {k: v for k, v in config.items() if k not in non_key_fields}
    return hashlib.sha256(canonical_json(settings).encode("utf-8")).hexdigest()


def _coerce(name: str, decl: str, value: Any) -> Any:
    """Plain Python values for sqlite3 (it refuses NumPy float32, for instance)."""
    if value is None:
        return None
    kind = decl.split()[0]
    if kind == "INTEGER":
        if getattr(getattr(value, "dtype", None), "kind", None) == "b":
            return int(bool(value))  # NumPy bool has no __index__
        return int(operator.index(value))  # bools and NumPy ints; a float here is a bug
    if kind == "REAL":
        return float(value)
    if isinstance(value, _dt.datetime):
        return value.isoformat()
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str | bytes):
        raise TypeError(f"column {name} takes text, got {type(value).__name__}")
    return escape_text(value)


def _row_values(config_key: str, row: Mapping[str, Any], run_id: str | None) -> list[Any]:
    unknown = set(row) - set(ROW_KEYS)
    if unknown:
        raise StoreError(f"unknown result field(s) {sorted(unknown)}; expected {ROW_KEYS}")
    missing = [k for k in _REQUIRED if row.get(k) is None]
    if missing:
        raise StoreError(f"result row lacks {missing}: {dict(row)}")
    values: list[Any] = [config_key]
    for name, decl in _RESULT_COLUMNS:
        value = row.get(name)
        if name == "member" and value is None:
            value = ""
        elif name == "run_id" and value is None:
            value = run_id
        try:
            values.append(_coerce(name, decl, value))
        except (TypeError, ValueError) as e:
            raise StoreError(f"bad value for {name!r} in row for {row.get('path')}: {e}") from e
    return values


_COLUMN_LIST = ", ".join(("config_key", *ROW_KEYS))


def _read_expr(name: str, decl: str) -> str:
    """How a results column is read: text columns as text, bytes in a number column as
    text; the verdict as stored, so `checked_row` sees exactly what is there."""
    if name == "verdict":
        return name
    if decl.split()[0] == "TEXT":
        return f"CAST({name} AS TEXT)"
    return f"CASE WHEN typeof({name}) = 'blob' THEN CAST({name} AS TEXT) ELSE {name} END"


def _read_list(present: set[str]) -> str:
    """The SELECT list of a results table holding the columns ``present`` (a column added
    by a later schema reads as NULL)."""
    return ", ".join(
        ["CAST(config_key AS TEXT)",
         *(_read_expr(name, decl) if name in present else "NULL"
           for name, decl in _RESULT_COLUMNS)]
    )


def _columns(conn: sqlite3.Connection, schema: str = "main") -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA {schema}.table_info(results)")}
_TELEMETRY_READ = ", ".join(
    _read_expr(name, decl)
    for name, decl in (("run_id", "TEXT"), ("config_key", "TEXT"), ("batch", "INTEGER"),
                       *_TELEMETRY_COLUMNS)
)
# An invalid row as merge copies it: an error of kind INVALID_ROW, worded as checked_row does.
_COPY_EXPR = {
    "member": "COALESCE(CAST(member AS TEXT), '')",
    "verdict": _VERDICT_SQL,
    "error_kind": f"CASE WHEN {_VALID_SQL} THEN error_kind ELSE '{INVALID_ROW}' END",
    "error": f"CASE WHEN {_VALID_SQL} THEN error ELSE 'invalid row: verdict ' || "
    f"quote(verdict) || ' is not one of {', '.join(VERDICTS)}' || "
    "COALESCE(' (stored error: ' || error || ')', '') END",
}


def _copy_list(present: set[str]) -> str:
    """The SELECT list that copies a shard's results table holding the columns ``present``."""
    return ", ".join(
        ["config_key", *(_COPY_EXPR.get(name, name) if name in present else "NULL"
                         for name in ROW_KEYS)]
    )


def _sql_quote(value: Any) -> str:
    """A stored value as SQLite's ``quote()`` shows it (NULL, 'text', X'hex', a number)."""
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        return f"X'{value.hex().upper()}'"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return str(value)


def checked_row(row: Mapping[str, Any]) -> Mapping[str, Any]:
    """`row` as a result: one the store cannot read as one (a verdict that is not one of
    `VERDICTS`, no path) becomes an error of kind `INVALID_ROW` whose message names what was
    stored; any other row is returned as it is. `iter_results` and the report apply it."""
    verdict, path = row.get("verdict"), row.get("path")
    if path is not None and isinstance(verdict, str) and verdict in VERDICTS:
        return row
    reasons = [] if path is not None else ["no path"]
    if not (isinstance(verdict, str) and verdict in VERDICTS):
        reasons.append(f"verdict {_sql_quote(verdict)} is not one of {', '.join(VERDICTS)}")
    error = row.get("error")
    return {
        **row,
        "path": "" if path is None else path,
        "verdict": ERROR,
        "error_kind": INVALID_ROW,
        "error": "invalid row: " + "; ".join(reasons)
        + (f" (stored error: {error})" if error else ""),
    }


_UPSERT_TAIL = "ON CONFLICT (config_key, path, member) DO UPDATE SET " + ", ".join(
    f"{name} = excluded.{name}" for name in ROW_KEYS if name not in _KEY_COLUMNS
)
_UPSERT = (
    f"INSERT INTO results ({_COLUMN_LIST}) VALUES ({', '.join('?' * (len(ROW_KEYS) + 1))}) "
    + _UPSERT_TAIL
)


_SQLITE_MAGIC = b"SQLite format 3\x00"


def _uri(path: str, **params: str) -> str:
    """An SQLite URI naming `path` exactly (any byte in its name, ``?`` and ``#`` too)."""
    uri = "file:" + urllib.parse.quote(os.fsencode(os.path.abspath(path)))
    return uri + ("?" + urllib.parse.urlencode(params) if params else "")


def _writable(path: str) -> bool:
    """Whether this process may write `path` and its folder (where SQLite puts -wal/-shm)."""
    folder = os.path.dirname(os.path.abspath(path))
    return os.access(path, os.W_OK) and os.access(folder, os.W_OK)


def readonly_uri(path: str | os.PathLike[str]) -> str:
    """The SQLite URI that reads `path` and writes nothing: ``mode=ro``, plus ``immutable=1``
    where this process cannot write the file or its folder (read-only media: no lock, no
    -wal or -shm file) -- unless a non-empty -wal file is there, whose rows immutable would
    skip. Where the folder is writable SQLite may create the -wal/-shm companions of a WAL
    database, as for any reader; the database file itself is never written."""
    path = os.fspath(path)
    wal = path + "-wal"
    if _writable(path) or (os.path.isfile(wal) and os.path.getsize(wal) > 0):
        return _uri(path, mode="ro")
    return _uri(path, mode="ro", immutable="1")


def _reason(exc: BaseException) -> str:
    """An exception's message on one line."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _check_file(path: str, name: str) -> None:
    """Refuse, without opening it in SQLite, what cannot be a results database."""
    if os.path.isdir(path):
        raise StoreError(f"{name} is a folder, not a file")
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(_SQLITE_MAGIC))
    except FileNotFoundError:
        raise StoreError(f"no such results database: {name}") from None
    except OSError as e:
        raise StoreError(f"cannot read results database {name}: {_reason(e)}") from e
    if not head:
        raise StoreError(f"{name} is an empty file, not a results database")
    if head != _SQLITE_MAGIC:
        raise StoreError(f"{name} is not an SQLite file, so not a results database")


def _connect(target: str, timeout: float) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), URIs understood (so
    ATTACH can open a shard read-only), invalid UTF-8 read by the escaping rule, waiting
    up to `timeout` seconds for another process's lock."""
    conn = sqlite3.connect(target, isolation_level=None, timeout=timeout, uri=True)
    conn.text_factory = _decode_text
    conn.execute(f"PRAGMA busy_timeout = {max(0, int(timeout * 1000))}")
    return conn


def _rollback(conn: sqlite3.Connection) -> None:
    """Undo the open transaction, if SQLite has not already (it does after a full disk);
    never masks the failure being handled."""
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _schema_version(conn: sqlite3.Connection, name: str, tables: set[str]) -> int:
    """The results schema version of an open database, refusing one that is not a results
    database or is of a version this code does not read."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == 0 or not {"runs", "results"} <= tables:
        raise StoreError(f"{name} is an SQLite file but not a results database")
    if version not in READABLE_VERSIONS:
        raise SchemaVersionError(
            f"{name} has results schema version {version}; this ronan-jax reads version "
            f"{SCHEMA_VERSION}"
        )
    return version


class ResultStore:
    """A results database (created on first use); use as a context manager.

    ``with ResultStore("audit.db") as store: run = store.start_run(config); ...``

    ``readonly=True`` opens an existing database to read it (``ronan report``, ``ronan
    export``, merge's shards) and changes nothing: no journal-mode switch, no tables created
    or upgraded, SQLite's ``mode=ro`` (``immutable=1`` on read-only media, see
    `readonly_uri`); a file that is not a results database is refused with StoreError
    naming it, and writing methods raise StoreError. A writable open also checks the file
    before it changes anything (it switches a new database to WAL only after that).
    ``timeout``: seconds to wait for a lock another process holds.

    Every failure of SQLite underneath (disk full, a lock held too long, a damaged file, a
    closed store) comes out as StoreError with a one-line reason naming the database, never
    as ``sqlite3.Error``; a batch that fails leaves none of its rows.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, readonly: bool = False, timeout: float = 30.0
    ) -> None:
        self.path = os.fspath(path)
        self.readonly = readonly
        self._name = escape_text(self.path)
        memory = self.path == ":memory:"
        if readonly or (not memory and os.path.exists(self.path)
                        and (os.path.isdir(self.path) or os.path.getsize(self.path) > 0)):
            _check_file(self.path, self._name)
        conn = None
        try:
            if readonly:
                conn = _connect(readonly_uri(self.path), timeout)
                tables = _tables(conn)
                _schema_version(conn, self._name, tables)
            else:
                conn = _connect(self.path if memory else _uri(self.path), timeout)
                tables = self._ensure_schema(conn)
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")  # with WAL: atomic, still durable
        except BaseException as e:
            if conn is not None:
                conn.close()
            if isinstance(e, sqlite3.Error):
                raise StoreError(
                    f"cannot open results database {self._name}: {_reason(e)}"
                ) from e
            raise
        self._conn = conn
        self._has_telemetry = "telemetry" in tables
        self._read_list = _read_list(_columns(conn))

    def _ensure_schema(self, conn: sqlite3.Connection) -> set[str]:
        """Create the tables of a new database, or upgrade an older schema; return the
        tables. Nothing is written to a file that turns out not to be a results database,
        and a current one is only read (no write lock taken)."""
        tables = _tables(conn)
        if {"runs", "results", "telemetry"} <= tables and _schema_version(
            conn, self._name, tables
        ) == SCHEMA_VERSION:
            return tables
        conn.execute("BEGIN IMMEDIATE")
        try:
            tables = _tables(conn)
            if conn.execute("PRAGMA user_version").fetchone()[0] == 0 and not tables:
                _execute_script(conn, _SCHEMA)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif _schema_version(conn, self._name, tables) < SCHEMA_VERSION or (
                "telemetry" not in tables
            ):  # schema 2 adds the telemetry table, 3 and 4 result columns
                if "telemetry" not in tables:
                    _execute_script(conn, _TELEMETRY_SCHEMA)
                present = _columns(conn)
                for name, decl in _RESULT_COLUMNS:
                    if name in _ADDED_COLUMNS and name not in present:
                        conn.execute(f"ALTER TABLE results ADD COLUMN {name} {decl}")
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise
        return _tables(conn)

    @contextlib.contextmanager
    def _failing(self, what: str) -> Iterator[None]:
        """Turn an SQLite failure of `what` into StoreError naming this database."""
        try:
            yield
        except (sqlite3.Error, UnicodeEncodeError) as e:
            # UnicodeEncodeError: a key or id argument that is not valid text
            raise StoreError(f"{what} ({self._name}): {_reason(e)}") from e

    def _require_writable(self) -> None:
        if self.readonly:
            raise StoreError(f"{self._name} was opened read-only")

    # -- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._failing("cannot close the results database"):
            self._conn.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- runs ------------------------------------------------------------------------------
    def start_run(
        self,
        config: Mapping[str, Any],
        *,
        non_key_fields: Collection[str] = NON_KEY_FIELDS,
        run_id: str | None = None,
    ) -> RunInfo:
        """Record a new run of `config` and return its id and results key.

        A run with the same result-affecting settings as an earlier one gets the same
        `config_key`, so `done_keys` of that key tells it what is already done.
        """
        self._require_writable()
        config_json = canonical_json(config)
        key = make_config_key(config, non_key_fields)
        run_id = uuid.uuid4().hex if run_id is None else _text_arg(run_id)
        info = RunInfo(run_id, key, utc_now(), json.loads(config_json))
        with self._failing("run not recorded"):
            try:
                self._conn.execute(
                    "INSERT INTO runs (run_id, created, config_key, config_json) "
                    "VALUES (?, ?, ?, ?)",
                    (info.run_id, info.created, key, config_json),
                )
            except sqlite3.IntegrityError as e:
                raise StoreError(f"run id {info.run_id!r} already exists") from e
        return info

    def runs(self) -> list[RunInfo]:
        """Every run in the database, oldest first (a configuration that is not a JSON
        object, as a hand edit may leave, reads as ``{}``)."""
        with self._failing("cannot read the runs"):
            rows = self._conn.execute(
                "SELECT CAST(run_id AS TEXT), CAST(config_key AS TEXT), CAST(created AS TEXT), "
                "CAST(config_json AS TEXT) FROM runs ORDER BY created, rowid"
            ).fetchall()
        return [RunInfo(r[0] or "", r[1] or "", r[2] or "", _config(r[3])) for r in rows]

    def result_keys(self) -> set[str]:
        """Every results key that has result rows (with or without a run)."""
        sql = "SELECT DISTINCT CAST(config_key AS TEXT) FROM results WHERE config_key IS NOT NULL"
        with self._failing("cannot read the results keys"):
            return {k for (k,) in self._conn.execute(sql)}

    def _require_run(self, config_key: str) -> None:
        found = self._conn.execute(
            "SELECT 1 FROM runs WHERE config_key = ? LIMIT 1", (config_key,)
        ).fetchone()
        if found is None:
            raise StoreError(f"no run with config key {config_key!r}; call start_run first")

    # -- results ---------------------------------------------------------------------------
    def done_keys(self, config_key: str, *, include_errors: bool = True) -> set[tuple[str, str]]:
        """``(path, member)`` of every image with a row under `config_key` (for resume);
        never an invalid row (see `INVALID_ROW`), so an audit judges that image again.

        With ``include_errors=False`` error rows do not count as done, so a resume retries them.
        """
        sql = (
            "SELECT CAST(path AS TEXT), COALESCE(CAST(member AS TEXT), '') FROM results "
            f"WHERE config_key = ? AND {_VALID_SQL} AND error_kind IS NOT '{INVALID_ROW}'"
        )
        if not include_errors:
            sql += f" AND verdict != '{ERROR}'"
        with self._failing("cannot read the done images"):
            return {(p, m) for p, m in self._conn.execute(sql, (config_key,))}

    def evidence_paths(self, config_key: str) -> set[str]:
        """The evidence files the rows of `config_key` point to."""
        sql = ("SELECT CAST(evidence_path AS TEXT) FROM results "
               "WHERE config_key = ? AND evidence_path IS NOT NULL")
        with self._failing("cannot read the evidence paths"):
            return {p for (p,) in self._conn.execute(sql, (config_key,))}

    def write_batch(
        self,
        config_key: str,
        rows: Iterable[Mapping[str, Any]],
        *,
        run_id: str | None = None,
    ) -> int:
        """Write `rows` under `config_key` in one transaction; return how many were written.

        All or nothing: if any row is bad (unknown key, missing path/verdict, a value of the
        wrong type, a verdict outside `VERDICTS`) or SQLite fails (disk full, locked) none is
        written and StoreError is raised. Text that is not valid UTF-8 is escaped, never a
        failure (see the module docstring). A row for an image already stored replaces it
        (no duplicates). `run_id` fills rows that do not name their run.
        """
        self._require_writable()
        rows = list(rows)
        if not rows:
            return 0
        conn = self._conn
        with self._failing("batch not written"):
            self._require_run(config_key)
            conn.execute("BEGIN IMMEDIATE")
            try:
                for row in rows:
                    conn.execute(_UPSERT, _row_values(config_key, row, run_id))
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
        return len(rows)

    def iter_results(
        self, config_key: str | None = None, *, verdict: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """Result rows as dicts (``config_key`` plus `ROW_KEYS`), ordered by key and path,
        optionally of one verdict; an invalid row reads as an error (`checked_row`)."""
        where, params = [], []
        if config_key is not None:
            where.append("config_key = ?")
            params.append(config_key)
        if verdict == ERROR:
            where.append(f"NOT {_VALID_SQL} OR verdict = '{ERROR}'")
        elif verdict is not None:
            if verdict not in VERDICTS:
                raise StoreError(f"verdict must be one of {VERDICTS}, got {verdict!r}")
            where.append("verdict = ? AND path IS NOT NULL")
            params.append(verdict)
        sql = f"SELECT {self._read_list} FROM results"
        if where:
            sql += " WHERE " + " AND ".join(f"({w})" for w in where)
        sql += " ORDER BY config_key, path, member"  # the table's columns: its unique index
        names = ("config_key", *ROW_KEYS)
        with self._failing("cannot read the results"):
            cursor = self._conn.execute(sql, params)
            while chunk := cursor.fetchmany(1024):
                for values in chunk:
                    row = dict(zip(names, values, strict=True))
                    if row["resized"] is not None:
                        row["resized"] = bool(row["resized"])
                    if row["verdict"] not in _VERDICT_SET or row["path"] is None:
                        row = dict(checked_row(row))  # an invalid row (or bytes verdict)
                    if row["member"] is None:
                        row["member"] = ""
                    yield row

    # -- telemetry -------------------------------------------------------------------------
    def write_telemetry(self, run_id: str, config_key: str, record: Mapping[str, Any]) -> None:
        """Store what one batch of run ``run_id`` cost (keys in `TELEMETRY_KEYS`; ``batch``
        required); a record for the same (run, batch) replaces it."""
        self._require_writable()
        unknown = set(record) - set(TELEMETRY_KEYS)
        if unknown or record.get("batch") is None:
            raise StoreError(
                f"bad telemetry record {dict(record)}: unknown {sorted(unknown)} or no batch"
            )
        values: list[Any] = [_text_arg(run_id), _text_arg(config_key)]
        for name, decl in (("batch", "INTEGER"), *_TELEMETRY_COLUMNS):
            value = utc_now() if name == "recorded" and record.get(name) is None else record.get(name)
            try:
                values.append(_coerce(name, decl, value))
            except (TypeError, ValueError) as e:
                raise StoreError(f"bad telemetry value for {name!r}: {e}") from e
        with self._failing("telemetry not written"):
            self._conn.execute(
                f"INSERT OR REPLACE INTO telemetry ({_TELEMETRY_LIST}) "
                f"VALUES ({', '.join('?' * len(values))})",
                values,
            )

    def iter_telemetry(
        self, config_key: str | None = None, *, run_id: str | None = None
    ) -> list[dict[str, Any]]:
        """Telemetry rows (``run_id``, ``config_key`` plus `TELEMETRY_KEYS`) in the order
        they were recorded, optionally of one results key or one run (none in a
        schema-1 database opened read-only)."""
        if not self._has_telemetry:
            return []
        where, params = [], []
        for name, value in (("config_key", config_key), ("run_id", run_id)):
            if value is not None:
                where.append(f"{name} = ?")
                params.append(value)
        sql = f"SELECT {_TELEMETRY_READ} FROM telemetry"
        if where:
            sql += " WHERE " + " AND ".join(where)
        names = ("run_id", "config_key", *TELEMETRY_KEYS)
        with self._failing("cannot read the telemetry"):
            rows = self._conn.execute(sql + " ORDER BY rowid", params).fetchall()
        return [dict(zip(names, r, strict=True)) for r in rows]

    def count_by_verdict(self, config_key: str | None = None) -> dict[str, int]:
        """Number of rows per verdict (every verdict present, zero if none); an invalid row
        counts as an error, as `iter_results` reads it."""
        sql = "SELECT verdict, COUNT(*), SUM(path IS NULL) FROM results"
        params: tuple[str, ...] = ()
        if config_key is not None:
            sql += " WHERE config_key = ?"
            params = (config_key,)
        counts = dict.fromkeys(VERDICTS, 0)
        with self._failing("cannot count the verdicts"):
            groups = self._conn.execute(sql + " GROUP BY verdict", params).fetchall()
        for verdict, n, no_path in groups:
            valid = isinstance(verdict, str) and verdict in _VERDICT_SET
            counts[verdict if valid else ERROR] += n - (no_path if valid else 0)
            counts[ERROR] += no_path if valid else 0
        return counts

    def copy_from(self, src: str | os.PathLike[str]) -> int:
        """Copy the runs, results and telemetry of the database ``src`` into this one in one
        transaction; return the result rows written. A row for an image already present
        replaces it unless that would replace a real verdict with an error; an invalid row
        is copied as an error of kind `INVALID_ROW` (one without a path is left out). ``src``
        is read read-only (`readonly_uri`). Callers check first that both hold the same
        settings (:func:`ronan_jax.results.merge.merge`)."""
        self._require_writable()
        conn = self._conn
        src = os.fspath(src)
        _check_file(src, escape_text(src))
        with self._failing(f"merging {escape_text(src)} failed"):
            conn.execute("ATTACH DATABASE ? AS shard", (readonly_uri(src),))
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    copied = self._copy_shard(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    _rollback(conn)
                    raise
            finally:
                with contextlib.suppress(sqlite3.Error):  # fails only if already detached
                    conn.execute("DETACH DATABASE shard")
        return copied

    @staticmethod
    def _copy_shard(conn: sqlite3.Connection) -> int:
        """The statements of `copy_from`, inside its transaction."""
        conn.execute(
            "INSERT OR IGNORE INTO runs (run_id, created, config_key, config_json) "
            "SELECT run_id, created, config_key, config_json FROM shard.runs"
        )
        before = conn.total_changes
        conn.execute(
            f"INSERT INTO results ({_COLUMN_LIST}) "
            f"SELECT {_copy_list(_columns(conn, 'shard'))} FROM shard.results "
            "WHERE config_key IS NOT NULL AND path IS NOT NULL "
            + _UPSERT_TAIL
            + f" WHERE NOT (excluded.verdict = '{ERROR}' "
            f"AND results.verdict IN ('{BELONGING}', '{NON_BELONGING}'))"
        )
        copied = conn.total_changes - before
        has_telemetry = conn.execute(
            "SELECT 1 FROM shard.sqlite_master WHERE name = 'telemetry'"
        ).fetchone()
        if has_telemetry:  # a version-1 shard has none
            conn.execute(
                f"INSERT OR IGNORE INTO telemetry ({_TELEMETRY_LIST}) "
                f"SELECT {_TELEMETRY_LIST} FROM shard.telemetry"
            )
        return copied
