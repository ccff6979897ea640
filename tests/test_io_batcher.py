"""Batcher: order, batch sizes, failures as items, skipping, and clean shutdown."""

import _thread
import io
import signal
import threading
import time

import numpy as np
import pytest
from PIL import Image

from ronan_jax.inputs.batcher import Batcher
from ronan_jax.inputs.decode import sha256
from ronan_jax.inputs.sources import ImageRecord


def png(value: int, size: int = 2) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (size, size), value).save(buf, "PNG")
    return buf.getvalue()


def good(i: int) -> ImageRecord:
    return ImageRecord(path=f"/img/{i:03d}.png", data=png(i))


def batcher_threads() -> list[threading.Thread]:
    return [
        t
        for t in threading.enumerate()
        if t.name.startswith(("ronan-decode", "ronan-feeder")) and t.is_alive()
    ]


def wait_for_no_threads(timeout: float = 5.0) -> list[threading.Thread]:
    deadline = time.monotonic() + timeout
    while batcher_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    return batcher_threads()


def make(records, **kw) -> Batcher:
    args = {"batch_size": 3, "target_hw": (2, 2), "channels": 1, "workers": 3, **kw}
    return Batcher(records, **args)


def test_batches_keep_input_order_and_size():
    with make([good(i) for i in range(8)]) as batcher:
        batches = list(batcher)
    assert [len(b.items) for b in batches] == [3, 3, 2]
    items = [it for b in batches for it in b.items]
    assert [it.index for it in items] == list(range(8))
    values = np.concatenate([b.images[:, 0, 0, 0] for b in batches])
    np.testing.assert_allclose(values, np.arange(8) / 255, rtol=1e-6)
    assert batches[0].images.shape == (3, 2, 2, 1) and batches[0].images.dtype == np.float32
    first = items[0]
    assert first.ok and first.sha256 == sha256(png(0)) and first.size_bytes == len(png(0))
    assert (first.width, first.height, first.mode, first.resized) == (2, 2, "L", False)
    assert wait_for_no_threads() == []


def test_order_holds_when_decode_times_differ():
    # big images take longer to decode and resize than small ones
    records = [
        ImageRecord(path=f"/img/{i}.png", data=png(i, 256 if i % 2 else 2)) for i in range(10)
    ]
    with make(records, batch_size=4, workers=4, resize=True) as batcher:
        items = [it for b in batcher for it in b.items]
    assert [it.index for it in items] == list(range(10))
    assert [it.resized for it in items] == [bool(i % 2) for i in range(10)]


def test_failures_are_reported_as_items_beside_the_good_images():
    records = [
        good(0),
        ImageRecord(path="/img/empty.png", data=b""),
        ImageRecord(path="/img/text.png", data=b"hello"),
        ImageRecord(path="/img/gone.png", error="no such file", error_kind="not-found"),
        ImageRecord(path="/img/big.png", data=png(1, size=3)),
        good(5),
    ]
    with make(records) as batcher:
        batches = list(batcher)
    assert len(batches) == 1
    (batch,) = batches
    assert [it.index for it in batch.items] == [0, 5]
    failed = {it.path: it for it in batch.failed}
    assert [it.index for it in batch.failed] == [1, 2, 3, 4]
    assert failed["/img/empty.png"].error_kind == "empty"
    assert failed["/img/text.png"].error_kind == "not-an-image"
    assert failed["/img/text.png"].sha256 == sha256(b"hello")
    assert failed["/img/gone.png"].error_kind == "not-found"
    assert failed["/img/gone.png"].sha256 is None
    assert failed["/img/big.png"].error_kind == "size-mismatch"
    assert (failed["/img/big.png"].width, failed["/img/big.png"].height) == (3, 3)
    row = failed["/img/big.png"].row_fields()
    assert "verdict" not in row  # the audit adds it (one vocabulary)
    assert row["member"] == "" and row["error_kind"] == "size-mismatch"


def test_skip_predicate_drops_done_records_before_decoding():
    done = {(f"/img/{i:03d}.png", "") for i in (0, 2, 3)}
    with make([good(i) for i in range(5)], skip=lambda r: r.key in done) as batcher:
        batches = list(batcher)
    assert [it.index for b in batches for it in b.items] == [1, 4]
    assert sum(b.skipped for b in batches) == 3
    seen = {sha256(png(1))}
    with make([good(i) for i in range(3)], skip=lambda r: sha256(r.data) in seen) as batcher:
        assert [it.index for b in batcher for it in b.items] == [0, 2]


def test_long_runs_of_failures_flush_early_batches():
    records = [ImageRecord(path=f"/bad/{i}", data=b"x") for i in range(10)] + [good(10)]
    with make(records, batch_size=4, flush_after=4) as batcher:
        batches = list(batcher)
    assert [len(b.failed) for b in batches] == [4, 4, 2]
    assert [len(b.items) for b in batches] == [0, 0, 1]
    assert batches[0].images.shape == (0, 2, 2, 1)


def test_leaving_early_stops_threads_and_closes_the_source():
    state = {"closed": False}

    def endless():
        try:
            i = 0
            while True:
                yield good(i % 200)
                i += 1
        finally:
            state["closed"] = True

    with make(endless(), prefetch=4) as batcher:
        for batch in batcher:
            assert len(batch.items) == 3
            break
    assert wait_for_no_threads() == []
    assert state["closed"]


def test_keyboard_interrupt_while_waiting_shuts_down_cleanly():
    def slow():
        i = 0
        while True:
            time.sleep(0.02)
            yield good(i % 200)
            i += 1

    # A process started in the background by a non-interactive shell inherits SIGINT ignored,
    # and interrupt_main() then does nothing; Ctrl-C in a terminal raises KeyboardInterrupt.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(0.3, _thread.interrupt_main)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt), make(slow(), batch_size=1000) as batcher:
            for _ in batcher:
                pass
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert wait_for_no_threads() == []


def test_exception_in_the_source_reaches_the_consumer():
    def broken():
        yield good(0)
        raise RuntimeError("source bug")

    with pytest.raises(RuntimeError, match="source bug"), make(broken()) as batcher:
        list(batcher)
    assert wait_for_no_threads() == []


def test_a_batcher_is_iterated_once():
    batcher = make([good(0)])
    list(batcher)
    with pytest.raises(RuntimeError):
        iter(batcher)
