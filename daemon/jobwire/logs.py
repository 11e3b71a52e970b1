"""structlog set-up: console lines on a TTY, one JSON object per line otherwise."""

from __future__ import annotations

import atexit
import errno
import io
import logging
import os
import select
import sys
import threading
from collections import deque
from collections.abc import Callable, MutableMapping
from typing import Any, TextIO, cast

import structlog
from structlog.typing import ExceptionRenderer, ExcInfo

from jobwire.redaction import redact, redact_data


def redact_event(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> Any:
    """structlog processor: mask URL passwords and remembered secrets in every value."""
    # Last before rendering, so a formatted traceback ("exception") is covered as well; an
    # error string from a broker client may quote the URL it was given.
    return {key: value if key == "exc_info" else _clean(value) for key, value in event_dict.items()}


def _clean(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str | dict | list | tuple):
        return redact_data(value)
    # Anything else (an exception, a URL object) is rendered by its repr: keep the object
    # unless its text gives a secret away.
    text = repr(value)
    cleaned = redact(text)
    return value if cleaned == text else cleaned


def _redacting(formatter: ExceptionRenderer) -> ExceptionRenderer:
    """The console renderer's exception formatter, its output redacted."""

    def render(sio: TextIO, exc_info: ExcInfo) -> None:
        buffer = io.StringIO()
        formatter(buffer, exc_info)
        sio.write(redact(buffer.getvalue()))

    return render


class RedactingFormatter(logging.Formatter):
    """stdlib logging (libraries' own lines) with the same masking as structlog's."""

    def format(self, record: logging.LogRecord) -> str:
        """The formatted line, traceback included, redacted."""
        return redact(super().format(record))


def _json_formatter() -> logging.Formatter:
    """stdlib records rendered as structlog's JSON lines: level, logger, timestamp, the
    message as ``event``, the traceback as ``exception``; redacted alike."""
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            redact_event,
            structlog.processors.JSONRenderer(),
        ],
    )


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


def _report_dropped(lines: int, error: str) -> None:
    structlog.get_logger("jobwire.logs").warning("log_lines_dropped", lines=lines, error=error)


def configure_logging(fmt: str = "auto", level: str = "info", background: bool = False) -> None:
    """Configure structlog (and stdlib logging of libraries) for the daemon and the CLI;
    ``background``: through a LogSink on stderr (the daemon), not written in the caller."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    if use_json:
        processors += [
            structlog.processors.format_exc_info,
            redact_event,
            structlog.processors.JSONRenderer(),
        ]
    else:
        processors += [
            redact_event,
            structlog.dev.ConsoleRenderer(
                colors=sys.stderr.isatty(),
                # plain_traceback: rich's formatter shows locals (request headers, cookies) and
                # cuts long values, which would cut a secret past the redaction's reach.
                exception_formatter=_redacting(structlog.dev.plain_traceback),
            ),
        ]
    numeric = logging.getLevelNamesMapping()[level.upper()]
    # A LogSink has what both loggers call on a file: write() and flush().
    stream = cast(TextIO, _daemon_sink()) if background else sys.stderr
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.WriteLoggerFactory(file=stream),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream)
    if use_json:
        # Libraries' own lines (aiohttp's tracebacks of a malformed request, say) as JSON
        # too: a plain line in a JSON log breaks the operator's log pipeline.
        handler.setFormatter(_json_formatter())
    else:
        handler.setFormatter(RedactingFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=max(numeric, logging.WARNING), handlers=[handler])


_sink: LogSink | None = None


def _daemon_sink() -> LogSink:
    """The process's one LogSink on stderr, drained (briefly) at exit."""
    global _sink
    if _sink is None:
        _sink = LogSink(sys.stderr.fileno(), _report_dropped)
        atexit.register(_sink.drain)
    return _sink
