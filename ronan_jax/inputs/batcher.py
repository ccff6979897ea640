"""Prefetching batcher: decode records in background threads, hand out model-ready batches.

A feeder thread walks the record stream (which must be read in order: tar shards are
streams), drops records the `skip` predicate accepts, and submits the rest to a thread pool
for decoding. Futures go through a bounded queue, so at most ``prefetch`` records (their bytes
and decoded pixels) are in flight however large the input: memory is bounded and the decoders
stay ahead of the device. The consumer takes futures in submission order, so batches come out
in input order whatever order the decoders finish in.

Failures (unreadable files, undecodable images) are `Item`s with an error kind, delivered in
`Batch.failed` next to the good images of the same stretch of the stream, so the caller
writes their error rows and the run goes on.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from ronan_jax.inputs.decode import (
    DEFAULT_MAX_PIXELS,
    ImageDecodeError,
    JpegCoding,
    check_target,
    decode_image,
    sha256,
)
from ronan_jax.inputs.sources import ImageRecord

_POLL_S = 0.1  # how often blocked threads look at the stop flag


@dataclass(frozen=True)
class Item:
    """One input's outcome: its identity, what the file was, and the error if it failed.

    `index` is the record's position in the input stream (skipped records count), so the
    caller can restore the total order of `Batch.items` and `Batch.failed`. `error_kind` is a
    source kind (`ronan_jax.inputs.sources.SOURCE_ERROR_KINDS`), a decode kind
    (`ronan_jax.inputs.decode.ERROR_KINDS`) or ``internal`` for an unexpected failure.
    """

    index: int
    path: str
    member: str | None
    sha256: str | None = None
    size_bytes: int | None = None
    width: int | None = None
    height: int | None = None
    mode: str | None = None
    resized: bool = False
    error_kind: str | None = None
    error: str | None = None
    jpeg: JpegCoding | None = None  # the file's JPEG coding, when its pixels are the array's

    @property
    def ok(self) -> bool:
        """True when the image decoded."""
        return self.error_kind is None

    @property
    def key(self) -> tuple[str, str]:
        """``(path, member or "")``, the results store's identity of an image."""
        return (self.path, self.member or "")

    def row_fields(self) -> dict[str, Any]:
        """The results-row fields the inputs know: identity, file facts and, for an input
        that failed, ``error_kind`` and ``error`` (the audit adds the verdict)."""
        row: dict[str, Any] = {
            "path": self.path,
            "member": self.member or "",
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "width": self.width,
            "height": self.height,
            "mode": self.mode,
            "resized": self.resized,
        }
        if not self.ok:
            row.update(error_kind=self.error_kind, error=self.error)
        return row


@dataclass(frozen=True)
class Batch:
    """Up to ``batch_size`` decoded images, plus the failures and skips met on the way.

    ``images[i]`` belongs to ``items[i]``; `images` is float32 ``[B, H, W, C]`` (B may be 0).
    `skipped` counts records the skip predicate dropped since the previous batch.
    """

    items: list[Item]
    images: np.ndarray
    failed: list[Item]
    skipped: int = 0


SkipPredicate = Callable[[ImageRecord], bool]


def _decode_one(
    index: int,
    record: ImageRecord,
    target_hw: tuple[int, int],
    channels: int,
    resize: bool,
    max_pixels: int,
) -> tuple[Item, np.ndarray | None]:
    """Worker body: never raises, so one bad file cannot stop the stream."""
    data = record.data or b""
    base = {
        "index": index,
        "path": record.path,
        "member": record.member,
        "sha256": sha256(data),
        "size_bytes": len(data),
    }
    try:
        decoded = decode_image(data, target_hw, channels, resize, max_pixels=max_pixels)
    except ImageDecodeError as e:
        width, height = e.original_size or (None, None)
        item = Item(
            **base,
            width=width,
            height=height,
            mode=e.original_mode,
            error_kind=e.kind,
            error=e.message,
        )
        return item, None
    except Exception as e:
        return Item(**base, error_kind="internal", error=f"{type(e).__name__}: {e}"), None
    item = Item(
        **base,
        width=decoded.width,
        height=decoded.height,
        mode=decoded.original_mode,
        resized=decoded.resized,
        jpeg=decoded.jpeg,
    )
    return item, decoded.array


def _source_failure(index: int, record: ImageRecord) -> Item:
    return Item(
        index=index,
        path=record.path,
        member=record.member,
        error_kind=record.error_kind or "unreadable",
        error=record.error,
    )


class Batcher:
    """Iterate ``Batch``es decoded in background threads from a record stream.

    Use as a context manager (or call `close`); iterating it once starts the threads, and
    leaving the loop early, an exception or a KeyboardInterrupt shuts them down.

    Args:
      records: the input stream (e.g. `ronan_jax.inputs.sources.iter_records(specs)`); it is
        consumed in a background thread and closed there when done.
      batch_size: decoded images per batch.
      target_hw, channels, resize, max_pixels: the `decode_image` settings.
      workers: decoder threads (Pillow releases the GIL while decoding).
      prefetch: records in flight at most (bytes plus pixels); default ``2 * batch_size``.
      skip: ``skip(record) -> True`` drops a record before decoding (resume from done keys:
        ``lambda r: r.key in done``; by content:
        ``lambda r: r.data is not None and sha256(r.data) in seen``).
      flush_after: emit a batch early once this many failures and skips are pending, so a
        long run of bad or done files still reports progress; default ``4 * batch_size``.
    """

    def __init__(
        self,
        records: Iterable[ImageRecord],
        *,
        batch_size: int,
        target_hw: tuple[int, int],
        channels: int,
        resize: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        workers: int | None = None,
        prefetch: int | None = None,
        skip: SkipPredicate | None = None,
        flush_after: int | None = None,
    ) -> None:
        check_target(target_hw, channels)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.target_hw = (int(target_hw[0]), int(target_hw[1]))
        self.channels = channels
        self.resize = resize
        self.max_pixels = max_pixels
        self.workers = workers if workers is not None else min(4, os.cpu_count() or 1)
        self.prefetch = prefetch if prefetch is not None else 2 * batch_size
        self.flush_after = flush_after if flush_after is not None else 4 * batch_size
        if self.workers < 1 or self.prefetch < 1 or self.flush_after < 1:
            raise ValueError("workers, prefetch and flush_after must be >= 1")
        self._records = records
        self._skip = skip
        self._queue: queue.Queue[tuple[Any, ...]] = queue.Queue(maxsize=self.prefetch)
        self._stop = threading.Event()
        self._pool: ThreadPoolExecutor | None = None
        self._feeder: threading.Thread | None = None
        self._started = False
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> Batcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the feeder and the decoders and wait for them; safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._drain()  # unblocks a feeder waiting on a full queue
        if self._feeder is not None:
            # The feeder checks the stop flag between records; a record read that blocks
            # (a stalled network disk) cannot be interrupted, hence the bound and daemon=True.
            self._feeder.join(timeout=30)
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._drain()

    def _drain(self) -> None:
        while True:
            try:
                entry = self._queue.get_nowait()
            except queue.Empty:
                return
            if entry[0] == "future":
                entry[1].cancel()

    # -- feeder thread ---------------------------------------------------------------------
    def _put(self, entry: tuple[Any, ...]) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _feed(self) -> None:
        assert self._pool is not None
        it = iter(self._records)
        try:
            for index, record in enumerate(it):
                if self._stop.is_set():
                    return
                if self._skip is not None and self._skip(record):
                    entry: tuple[Any, ...] = ("skip",)
                elif record.error is not None or record.data is None:
                    entry = ("failed", _source_failure(index, record))
                else:
                    future = self._pool.submit(
                        _decode_one,
                        index,
                        record,
                        self.target_hw,
                        self.channels,
                        self.resize,
                        self.max_pixels,
                    )
                    entry = ("future", future)
                if not self._put(entry):
                    if entry[0] == "future":
                        entry[1].cancel()
                    return
            self._put(("end",))
        except BaseException as e:  # a bug in a source or predicate: surface it to the consumer
            if not self._stop.is_set():
                self._put(("raise", e))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()  # runs the source generators' cleanup (open tar files) in this thread

    # -- consumer --------------------------------------------------------------------------
    def _get(self) -> tuple[Any, ...]:
        while True:
            try:
                return self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                if self._stop.is_set():
                    return ("end",)

    def _batch(
        self, items: list[Item], images: list[np.ndarray], failed: list[Item], skipped: int
    ) -> Batch:
        if images:
            stacked = np.stack(images)
        else:
            stacked = np.zeros((0, *self.target_hw, self.channels), np.float32)
        return Batch(items=items, images=stacked, failed=failed, skipped=skipped)

    def __iter__(self) -> Iterator[Batch]:
        if self._started or self._closed:
            raise RuntimeError("a Batcher can be iterated only once")
        self._started = True
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="ronan-decode")
        self._feeder = threading.Thread(target=self._feed, name="ronan-feeder", daemon=True)
        self._feeder.start()
        return self._batches()

    def _batches(self) -> Iterator[Batch]:
        items: list[Item] = []
        images: list[np.ndarray] = []
        failed: list[Item] = []
        skipped = 0
        try:
            while True:
                entry = self._get()
                kind = entry[0]
                if kind == "end":
                    break
                if kind == "raise":
                    raise entry[1]
                if kind == "skip":
                    skipped += 1
                elif kind == "failed":
                    failed.append(entry[1])
                else:
                    future: Future = entry[1]
                    item, array = future.result()
                    if array is None:
                        failed.append(item)
                    else:
                        items.append(item)
                        images.append(array)
                if len(items) >= self.batch_size or len(failed) + skipped >= self.flush_after:
                    yield self._batch(items, images, failed, skipped)
                    items, images, failed, skipped = [], [], [], 0
            if items or failed or skipped:
                yield self._batch(items, images, failed, skipped)
        finally:
            self.close()
