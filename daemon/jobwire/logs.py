"""structlog set-up: console lines on a TTY, one JSON object per line otherwise."""

from __future__ import annotations

import io
import logging
import os
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

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

    def __del__(self) -> None:
        # Only once nothing can write here: a descriptor closed earlier could be reused by
        # a socket, and log lines written into it.
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass


# One per stream: configure_logging runs again in tests, and each LogStream holds a descriptor.
_log_stream: LogStream | None = None


def _stream_for(stream: TextIO) -> LogStream:
    global _log_stream
    if _log_stream is None or _log_stream.stream is not stream:
        _log_stream = LogStream(stream)
    return _log_stream


def configure_logging(fmt: str = "auto", level: str = "info") -> None:
    """Configure structlog (and stdlib logging of libraries) for the daemon and the CLI."""
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
    out = _stream_for(sys.stderr)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=out),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(out)
    if use_json:
        # Libraries' own lines (aiohttp's tracebacks of a malformed request, say) as JSON
        # too: a plain line in a JSON log breaks the operator's log pipeline.
        handler.setFormatter(_json_formatter())
    else:
        handler.setFormatter(RedactingFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=max(numeric, logging.WARNING), handlers=[handler])
