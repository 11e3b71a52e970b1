"""JSON answers and errors of the HTTP server: every error is ``{"error", "field"?}``."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import asyncpg
import structlog
from aiohttp import web

from jobwire.api_models import BadInput
from jobwire.redaction import redact
from jobwire.store.base import InvalidJobData, StoreUnavailable

log = structlog.get_logger("jobwire.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# The database answered and refused the values (out of range, unstorable text, a check or an
# index size limit): the request's fault, not the server's. Outages are StoreUnavailable.
_REFUSED_BY_DATABASE = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    asyncpg.ProgramLimitExceededError,
)
# Headers of aiohttp's own HTTP errors that a client needs (which methods a path allows).
_KEPT_HEADERS = ("Allow",)


def json_response(data: Any, status: int = 200) -> web.Response:
    """``data`` as a JSON answer (datetimes as ISO 8601, bytes as text)."""
    return web.Response(
        text=json.dumps(data, default=_plain, sort_keys=True),
        status=status,
        content_type="application/json",
    )


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


class ApiError(Exception):
    """An error answered as JSON with its HTTP status (and the request field it is about)."""

    def __init__(
        self,
        status: int,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.headers = headers or {}


def error_response(
    status: int, message: str, field: str | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    """``{"error": message}``, with ``"field"`` when the error is about one."""
    body = {"error": message} if field is None else {"error": message, "field": field}
    response = json_response(body, status)
    response.headers.update(headers or {})
    return response


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer every failure as JSON; no request input answers 500."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.message, exc.field, exc.headers)
    except BadInput as exc:
        return error_response(400, exc.message, exc.field)
    except StoreUnavailable as exc:
        return error_response(503, redact(f"database unavailable: {exc}"))
    except InvalidJobData as exc:
        return error_response(400, f"the database refused the job: {exc}", "body")
    except _REFUSED_BY_DATABASE as exc:
        # Validation should have caught it first; logged so the gap can be closed.
        log.warning("http_value_refused_by_database", path=request.path, error=str(exc))
        return error_response(400, f"the database refused a value of the request: {exc}")
    except web.HTTPException as exc:
        kept = {name: exc.headers[name] for name in _KEPT_HEADERS if name in exc.headers}
        return error_response(exc.status, exc.reason, headers=kept)
    except Exception:  # answer JSON; the bug goes to the log with its traceback
        log.exception("http_handler_crashed", path=request.path)
        return json_response({"error": "internal error; see the daemon's log"}, 500)
