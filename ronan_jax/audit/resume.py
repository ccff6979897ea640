"""Which inputs a run still has to judge: resuming an earlier run of the same settings,
inputs listed twice, and another process's share."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from ronan_jax.attribution.verdicts import ERROR, NOT_RETRIED
from ronan_jax.audit.shards import ProcessShard
from ronan_jax.inputs import iter_records
from ronan_jax.results.store import ResultStore


def resume_keys(store: ResultStore, config_key: str) -> set[tuple[str, str]]:
    """``(path, member)`` of images a new run of ``config_key`` can skip: every row except
    errors worth retrying (every error kind but those in :data:`NOT_RETRIED`)."""
    done = store.done_keys(config_key)
    retry = {
        (r["path"], r["member"])
        for r in store.iter_results(config_key, verdict=ERROR)
        if r.get("error_kind") not in NOT_RETRIED
    }
    return done - retry


class InputFilter:
    """The batcher's skip predicate: drops inputs another process owns, inputs already done
    and inputs met before in this run, counting the last two as ``skipped`` (of which
    ``repeated``: named twice in this run). Called from the batcher's feeder thread; read the
    counts from any thread."""

    def __init__(self, done: set[tuple[str, str]], shard: ProcessShard | None = None) -> None:
        self._done = done
        self._shard = shard
        self._seen: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self.skipped = 0
        self.repeated = 0

    def __call__(self, path: str, member: str | None) -> bool:
        if self._shard is not None and not self._shard.owns(path, member):
            return True  # another process's input
        key = (path, member or "")
        with self._lock:
            if key in self._done or key in self._seen:
                self.skipped += 1
                self.repeated += key in self._seen
                return True
            self._seen.add(key)
        return False


class _ArchiveFound(Exception):
    """Raised inside a counting walk when a tar member shows up (streams are not counted)."""


def count_pending(
    inputs: Sequence[str], done: set[tuple[str, str]], shard: ProcessShard | None = None
) -> int | None:
    """How many inputs a run will process (not done, duplicates once, owned by ``shard``),
    or None when an input streams a tar archive (counting it would mean reading it twice).

    Walks directories, globs and list files without reading image bytes.
    """
    seen: set[tuple[str, str]] = set()
    count = 0

    def key(path: str, member: str | None) -> bool:
        nonlocal count
        if member is not None:
            raise _ArchiveFound
        k = (path, "")
        if shard is not None and not shard.owns(path):
            return True
        if k not in done and k not in seen:
            seen.add(k)
            count += 1
        return True  # never read the bytes

    try:
        for _record in iter_records(inputs, skip_key=key):
            count += 1  # records the filter never saw: unreadable inputs, damaged archives
    except _ArchiveFound:
        return None
    return count
