"""The daemon's log sink: a reader that stops reading, one that is gone, or a full disk
never blocks the logging thread nor raises into it; what is dropped is counted and said."""

from __future__ import annotations

import fcntl
import os
import struct
import termios
import time
from collections.abc import Iterator

import pytest

from jobwire.log_streams import LogSink
from tests.support.waiting import wait_sync

LINE = "x" * 1023 + "\n"


def _unread(fd: int) -> int:
    """Bytes waiting in a pipe."""
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]  # type: ignore[no-any-return]


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
    sink: LogSink
    # The report goes through the sink, as the daemon's does through structlog.
    sink = LogSink(
        w, lambda lines, error: sink.write(f"dropped {lines} {error}\n"), max_pending=100
    )
    started = time.monotonic()
    for _ in range(2_000):  # 2 MB: far past a pipe's buffer, nothing reads it
        sink.write(LINE)
    assert time.monotonic() - started < 1.0
    wait_sync(lambda: sink.dropped > 0, what="lines dropped past max_pending")
    # The writer blocked on the full pipe, lines keep coming (a chatty handler): the queue
    # is full when the reader comes back.
    wait_sync(lambda: _unread(r) >= 65536, what="the pipe full")
    for _ in range(200):
        sink.write(LINE)

    # The reader comes back while the queue is full: what was queued arrives, and a line
    # says how many were lost (let in past the limit, or it would be lost as well).
    os.set_blocking(r, False)
    received = bytearray()

    def read_all() -> bool:
        idle = sink.drain(0)  # before the read: once idle, all it wrote is in the pipe
        try:
            received.extend(os.read(r, 1 << 20))
        except BlockingIOError:
            pass
        return idle and b"dropped" in received

    wait_sync(read_all, what="the dropped lines reported")
    lines = bytes(received).splitlines()
    reported = [line.split() for line in lines if line.startswith(b"dropped")]
    assert [error for *_, error in reported] == [b"slow"] * len(reported)
    assert sum(int(count) for _, count, *_ in reported) == sink.dropped
    assert len(lines) - len(reported) + sink.dropped == 2_200


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
