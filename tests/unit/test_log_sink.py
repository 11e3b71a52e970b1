"""The daemon's log sink: a reader that stops reading, one that is gone, or a full disk
never blocks the logging thread nor raises into it; what is dropped is counted and said."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from jobwire.logs import LogSink
from tests.support.waiting import wait_sync

LINE = "x" * 1023 + "\n"


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    yield r, w
    for fd in (r, w):
        try:
            os.close(fd)
        except OSError:
            pass


def test_a_reader_that_stops_reading_blocks_no_write(pipe: tuple[int, int]) -> None:
    r, w = pipe
    reports: list[tuple[int, str]] = []
    sink = LogSink(w, lambda lines, error: reports.append((lines, error)), max_pending=100)
    started = time.monotonic()
    for _ in range(2_000):  # 2 MB: far past a pipe's buffer, nothing reads it
        sink.write(LINE)
    assert time.monotonic() - started < 1.0
    wait_sync(lambda: sink.dropped > 0, what="lines dropped past max_pending")

    # The reader comes back: what was queued arrives, then a line says how many were lost.
    os.set_blocking(r, False)
    received = bytearray()

    def read_all() -> bool:
        try:
            received.extend(os.read(r, 1 << 20))
        except BlockingIOError:
            pass
        return bool(reports) and sink.drain(0)

    wait_sync(read_all, what="the dropped lines reported")
    assert sum(lines for lines, _ in reports) == sink.dropped
    assert reports[0][1] == "reader too slow"
    assert received.count(b"\n") + sink.dropped == 2_000


def test_a_gone_reader_raises_nothing(pipe: tuple[int, int]) -> None:
    r, w = pipe
    os.close(r)
    sink = LogSink(w)
    for _ in range(50):
        sink.write(LINE)  # EPIPE in the writer thread, not here
    assert sink.drain(5)
    assert sink.dropped == 50


def test_a_full_disk_raises_nothing() -> None:
    fd = os.open("/dev/full", os.O_WRONLY)
    try:
        reports: list[tuple[int, str]] = []
        sink = LogSink(fd, lambda lines, error: reports.append((lines, error)))
        for _ in range(10):
            sink.write(LINE)
        assert sink.drain(5)
        assert sink.dropped == 10
        assert reports == []  # nothing could be written, not even the report
    finally:
        os.close(fd)
