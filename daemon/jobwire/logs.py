"""structlog set-up: console lines on a TTY, one JSON object per line otherwise."""

from __future__ import annotations

import io
import logging
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
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=max(numeric, logging.WARNING), handlers=[handler])
