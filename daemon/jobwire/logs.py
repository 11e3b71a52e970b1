"""structlog set-up: console lines on a TTY, one JSON object per line otherwise."""

from __future__ import annotations

import atexit
import io
import logging
import os
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO, cast

import structlog
from structlog.typing import ExceptionRenderer, ExcInfo

from jobwire.log_streams import LogSink, stream_for
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
    # The daemon's lines go through a LogSink (written off the event loop); the CLI's through
    # a LogStream. Both have what both loggers call on a file: write() and flush().
    stream = cast(TextIO, _daemon_sink() if background else stream_for(sys.stderr))
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


def drain_log() -> None:
    """Let the daemon's queued log lines out first (briefly): a last line written straight
    to stderr (the reason of an exit) must come after them, where systemd and the
    operator's eye look for it."""
    if _sink is not None:
        _sink.drain()


def _daemon_sink() -> LogSink:
    """The process's one LogSink on stderr, drained (briefly) at exit."""
    global _sink
    if _sink is None:
        # A copy of the descriptor, not fd 2 itself: a handler that closes sys.stderr (or
        # fd 2, which the next socket may then take) must not silence or misdirect the log.
        _sink = LogSink(os.dup(sys.stderr.fileno()), _report_dropped)
        atexit.register(_sink.drain)
    return _sink
