"""The daemon's HTTP server (aiohttp): health, readiness, Prometheus metrics, admin API.

``/healthz`` says the process (its event loop) is alive; ``/readyz`` says whether it can do
its work: the database answers and every source marked ``required`` is connected.
``/api/v1`` lists and shows jobs, schedules and sources; its mutations (enqueue, retry,
cancel) need ``Authorization: Bearer <http.admin_token>`` and are refused when no token is
configured. Every error is JSON: ``{"error": "..."}``, with ``"field"`` naming the path
parameter, query parameter or body key at fault when the request was bad (400). No request
input answers 500: values are checked (jobwire.api_models) before they reach the store,
and a value the database refuses all the same is a 400; a store outage is a 503.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import asyncpg
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from jobwire.api_models import (
    MAX_BODY_BYTES,
    BadInput,
    parse_enqueue,
    parse_id,
    parse_list_query,
)
from jobwire.config import HttpConfig
from jobwire.dashboard import Dashboard
from jobwire.metrics import Metrics
from jobwire.models import job_as_dict
from jobwire.store.base import InvalidJobData, OperatorStore, StoreUnavailable

log = structlog.get_logger("jobwire.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SourcesView = Callable[[], dict[str, dict[str, Any]]]
REQUIRED_UP = frozenset({"up", "paused"})  # paused on purpose (backlog) is not an outage
# The database answered and refused the values (out of range, unstorable text, a check or an
# index size limit): the request's fault, not the server's. Outages are StoreUnavailable.
_REFUSED_BY_DATABASE = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    asyncpg.ProgramLimitExceededError,
)


def _json(data: Any, status: int = 200) -> web.Response:
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

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


def _error(status: int, message: str, field: str | None = None) -> web.Response:
    body = {"error": message} if field is None else {"error": message, "field": field}
    return _json(body, status)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return _error(exc.status, exc.message, exc.field)
    except BadInput as exc:
        return _error(400, exc.message, exc.field)
    except StoreUnavailable as exc:
        return _error(503, f"database unavailable: {exc}")
    except InvalidJobData as exc:
        return _error(400, f"the database refused the job: {exc}", "body")
    except _REFUSED_BY_DATABASE as exc:
        # Validation should have caught it first; logged so the gap can be closed.
        log.warning("http_value_refused_by_database", path=request.path, error=str(exc))
        return _error(400, f"the database refused a value of the request: {exc}")
    except web.HTTPException as exc:
        return _json({"error": exc.reason}, exc.status)
    except Exception:  # answer JSON; the bug goes to the log with its traceback
        log.exception("http_handler_crashed", path=request.path)
        return _json({"error": "internal error; see the daemon's log"}, 500)


class HttpApi:
    """Routes of the HTTP server, over the daemon's store, metrics and sources."""

    def __init__(
        self,
        config: HttpConfig,
        store: OperatorStore,
        metrics: Metrics,
        sources: SourcesView,
        wake: Callable[[], None],
        required_sources: frozenset[str] = frozenset(),
        *,
        allowed_handlers: frozenset[str],
    ) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        self.sources = sources
        self.wake = wake
        self.required_sources = required_sources
        # The handler names this instance may run: an enqueue naming another is refused, as
        # a broker message naming one is not (it becomes a failed job: see routing).
        self.allowed_handlers = allowed_handlers
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        # Built once, so its sessions outlive any number of app() calls.
        self.dashboard = (
            Dashboard(config, store, sources, wake) if config.dashboard.enabled else None
        )

    def app(self) -> web.Application:
        """The aiohttp application (tests may serve it themselves)."""
        app = web.Application(middlewares=[_errors], client_max_size=MAX_BODY_BYTES)
        app.add_routes(
            [
                web.get("/healthz", self.healthz),
                web.get("/readyz", self.readyz),
                web.get("/metrics", self.metrics_text),
                web.get("/api/v1/jobs", self.list_jobs),
                web.post("/api/v1/jobs", self.enqueue),
                web.get("/api/v1/jobs/{id}", self.show_job),
                web.post("/api/v1/jobs/{id}/retry", self.retry_job),
                web.post("/api/v1/jobs/{id}/cancel", self.cancel_job),
                web.get("/api/v1/schedules", self.list_schedules),
                web.get("/api/v1/sources", self.list_sources),
            ]
        )
        if self.dashboard is not None:
            self.dashboard.mount(app)
        return app

    async def start(self) -> None:
        """Bind and serve; a port that cannot be bound stops the daemon with a clear error."""
        host, port = self.config.address()
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise OSError(f"http.listen {self.config.listen}: {exc.strerror or exc}") from exc
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port
        log.info("http_listening", host=host, port=self.port)

    async def stop(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- health ---------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        """The process is alive (this answer came from its event loop)."""
        return _json({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        """503 unless the database answers and every required source is connected."""
        problems = []
        try:
            async with asyncio.timeout(2):
                await self.store.ping()
            store = "up"
        except (StoreUnavailable, TimeoutError) as exc:
            store = "down"
            problems.append(f"database: {exc or 'no answer within 2s'}")
        sources = {}
        for name, info in self.sources().items():
            state = str(info.get("state"))
            required = name in self.required_sources
            sources[name] = {
                "state": state,
                "required": required,
                "last_error": info.get("last_error"),
                # "store": paused by a database outage; "backlog": by flow control.
                "held": info.get("held") or [],
            }
            if required and state not in REQUIRED_UP:
                problems.append(f"source {name}: {state}")
        body = {"ready": not problems, "store": store, "sources": sources, "problems": problems}
        return _json(body, 200 if not problems else 503)

    async def metrics_text(self, request: web.Request) -> web.Response:
        """Prometheus text format."""
        await self.metrics.refresh()
        response = web.Response(body=generate_latest(self.metrics.registry))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    # -- reading --------------------------------------------------------------------

    async def list_jobs(self, request: web.Request) -> web.Response:
        """Newest first; ?status= &queue= &limit= (max 1000) &before_id= for the next page."""
        query = parse_list_query(request.query.items())
        jobs = await self.store.list_jobs(query.status, query.queue, query.limit, query.before_id)
        next_before_id = jobs[-1].id if len(jobs) == query.limit else None
        return _json({"jobs": [job_as_dict(j) for j in jobs], "next_before_id": next_before_id})

    async def show_job(self, request: web.Request) -> web.Response:
        """One job with every attempt."""
        job_id = parse_id(request.match_info["id"])
        job = await self.store.get(job_id)
        if job is None:
            raise ApiError(404, f"no job {job_id}")
        return _json({**job_as_dict(job), "runs": await self.store.runs(job_id)})

    async def list_schedules(self, request: web.Request) -> web.Response:
        """Every schedule with its next run."""
        rows = await self.store.list_schedules()
        return _json({"schedules": [dataclasses.asdict(r) for r in rows]})

    async def list_sources(self, request: web.Request) -> web.Response:
        """Each source's state, last error, counters (and Kafka lag)."""
        return _json({"sources": self.sources()})

    # -- acting ---------------------------------------------------------------------

    def _authorize(self, request: web.Request) -> None:
        token = self.config.admin_token
        if not token:
            raise ApiError(403, "mutations are disabled: set http.admin_token to allow them")
        given = request.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        # aiohttp keeps undecodable header bytes as surrogate escapes: encode them back,
        # rather than failing on them, so a mangled header is a 401 and not a 500.
        presented = value.encode("utf-8", "surrogateescape")
        if scheme.lower() != "bearer" or not hmac.compare_digest(presented, token.encode()):
            raise ApiError(401, "missing or wrong bearer token")

    async def enqueue(self, request: web.Request) -> web.Response:
        """POST a job; the body is checked by jobwire.api_models.EnqueueRequest."""
        self._authorize(request)
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise ApiError(413, f"the body is larger than {MAX_BODY_BYTES} bytes", "body") from None
        job = parse_enqueue(raw)
        if job.handler not in self.allowed_handlers:
            # Says nothing of which handlers are allowed, nor where they live.
            raise ApiError(
                400, f"handler {job.handler[:40]!a} is not allowed on this instance", "handler"
            )
        (job_id,) = await self.store.enqueue_many([job.spec()])
        self.wake()
        if job_id is None:
            return _json({"id": None, "duplicate": True}, 200)
        return _json({"id": job_id, "duplicate": False}, 201)

    async def retry_job(self, request: web.Request) -> web.Response:
        """Run a failed or cancelled job again."""
        self._authorize(request)
        job_id = parse_id(request.match_info["id"])
        if await self.store.get(job_id) is None:
            raise ApiError(404, f"no job {job_id}")
        retried = await self.store.retry([job_id])
        if not retried:
            raise ApiError(409, f"job {job_id} is not failed or cancelled")
        self.wake()
        return _json({"id": job_id, "status": "pending"})

    async def cancel_job(self, request: web.Request) -> web.Response:
        """Cancel a waiting job, or ask the worker running it to stop."""
        self._authorize(request)
        job_id = parse_id(request.match_info["id"])
        status = await self.store.cancel(job_id)
        if status is None:
            raise ApiError(404, f"no job {job_id}")
        return _json({"id": job_id, "status": status})
