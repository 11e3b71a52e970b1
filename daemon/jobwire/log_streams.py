"""Where log lines go: LogStream (a stream a handler cannot break, for the CLI) and LogSink
(lines written by a thread of their own, for the daemon)."""

from __future__ import annotations

import errno
import io
import os
import select
import threading
from collections import deque
from collections.abc import Callable
from typing import TextIO


class LogStream:
    """stderr for log lines, which a handler cannot break: a drill's handler closed
    sys.stderr, and every later log call raised, which left failed jobs running for good
    (their outcome's write was cut short) while /healthz said 200. A write the stream
    refuses goes to a copy of its file descriptor made here, else is dropped."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        try:
            self._fd: int | None = os.dup(stream.fileno())
        except (OSError, ValueError, io.UnsupportedOperation):
            self._fd = None  # no descriptor (a test's capture): nowhere else to write

    def write(self, text: str) -> int:
        """Write to the stream, else to the copied descriptor; never raise."""
        try:
            return self.stream.write(text)
        except (OSError, ValueError):
            if self._fd is not None:
                try:
                    os.write(self._fd, text.encode("utf-8", "replace"))
                except OSError:
                    pass
            return len(text)

    def flush(self) -> None:
        """Flush the stream; never raise."""
        try:
            self.stream.flush()
        except (OSError, ValueError):
            pass

    def __del__(self, _close: Callable[[int], None] = os.close) -> None:
        # Only once nothing can write here: a descriptor closed earlier could be reused by
        # a socket, and log lines written into it. os.close bound at definition: at the
        # interpreter's exit the module's globals may be gone already ("Exception ignored
        # in LogStream.__del__" ended every CLI command's output).
        if self._fd is not None:
            try:
                _close(self._fd)
            except OSError:
                pass


# One per stream: configure_logging runs again in tests, and each LogStream holds a descriptor.
_log_stream: LogStream | None = None


def stream_for(stream: TextIO) -> LogStream:
    """The one LogStream over ``stream`` (made again only for another stream)."""
    global _log_stream
    if _log_stream is None or _log_stream.stream is not stream:
        _log_stream = LogStream(stream)
    return _log_stream


# Lines waiting for the writer thread; past this many, new ones are dropped (and counted)
# rather than held: a log reader stuck for minutes must not grow the daemon's memory.
MAX_PENDING_LINES = 10_000
# Written per write(2): enough to empty a pipe's buffer in one call.
_BATCH_CHARS = 64 * 1024
# How long the exit waits for lines still queued (a stuck reader must not hold the exit).
EXIT_FLUSH_SECONDS = 2.0


class LogSink:
    """A file for log lines that never blocks or raises in the writer: lines are queued and
    one thread writes them to ``fd``; lines that cannot be written are dropped and counted.

    A log reader that stops reading (a stuck shipper, a full pipe), one that is gone (EPIPE
    after journald restarts) or a full disk would otherwise block the event loop on a
    write (no lease renewed, no /healthz answered) or raise out of whatever was logging,
    a stop request or a job among them.
    """

    def __init__(
        self,
        fd: int,
        on_dropped: Callable[[int, str], None] | None = None,
        max_pending: int = MAX_PENDING_LINES,
    ) -> None:
        self._fd = fd
        self._on_dropped = on_dropped
        self._max = max_pending
        self._lines: deque[str] = deque()
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        # Counted from the logging threads without a lock: a race loses a count, never a line.
        self._overflowed = 0
        self._failed = 0
        self._reported = 0
        self._error = ""
        self._thread = threading.Thread(target=self._run, name="jobwire-log-writer", daemon=True)
        self._thread.start()

    def write(self, text: str) -> int:
        """Queue one line (or drop it while MAX_PENDING_LINES wait); never blocks."""
        # The writer thread's own line (the report of what was dropped) is let in past
        # the limit: a producer that keeps the queue full would have it dropped as well.
        if len(self._lines) < self._max or threading.get_ident() == self._thread.ident:
            self._lines.append(text)
            if not self._wake.is_set():
                self._idle.clear()
                self._wake.set()
        else:
            self._overflowed += 1
        return len(text)

    def flush(self) -> None:
        """Nothing to do: the writer thread writes as soon as it can."""

    def isatty(self) -> bool:
        """Whether the descriptor is a terminal."""
        return os.isatty(self._fd)

    @property
    def dropped(self) -> int:
        """Lines dropped so far: queued past the limit, or their write failed."""
        return self._overflowed + self._failed

    def drain(self, timeout: float = EXIT_FLUSH_SECONDS) -> bool:
        """Wait until every queued line is written or dropped; False after ``timeout``."""
        return self._idle.wait(timeout)

    def _run(self) -> None:
        while True:
            self._wake.wait()
            # Cleared before the queue is read: a line queued from here on is either read
            # below or sets the event again.
            self._wake.clear()
            while self._lines:
                batch, size = [], 0
                while self._lines and size < _BATCH_CHARS:
                    line = self._lines.popleft()
                    batch.append(line)
                    size += len(line)
                if self._write("".join(batch).encode("utf-8", "backslashreplace")):
                    self._report()
                else:
                    self._failed += len(batch)
            if not self._wake.is_set():
                self._idle.set()

    def _write(self, data: bytes) -> bool:
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._fd, view)
            except BlockingIOError:
                # A descriptor shared in non-blocking mode: wait for room, here, not in the loop.
                select.select([], [self._fd], [], 1.0)
                continue
            except OSError as exc:
                self._error = errno.errorcode.get(exc.errno or 0, "") or str(exc)
                return False
            view = view[written:]
        return True

    def _report(self) -> None:
        dropped = self.dropped
        if dropped != self._reported and self._on_dropped is not None:
            lines, self._reported = dropped - self._reported, dropped
            error = self._error if self._failed else "reader too slow"
            self._on_dropped(lines, error)
