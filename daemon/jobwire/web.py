"""The daemon's HTTP server (aiohttp): health, readiness, Prometheus metrics, admin API.

``/healthz`` says the process (its event loop) is alive; ``/readyz`` says whether it can do
its work: the database answers and every source marked ``required`` is connected.
``/api/v1`` lists and shows jobs, schedules and sources; its mutations (enqueue, retry,
cancel) need ``Authorization: Bearer <http.admin_token>`` and are refused when no token is
configured. Every error is JSON: ``{"error": "..."}``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from jobwire.config import HttpConfig
from jobwire.metrics import Metrics
from jobwire.models import JobSpec, JobStatus, job_as_dict
from jobwire.store.base import InvalidJobData, StoreUnavailable
from jobwire.store.postgres import PostgresStore

log = structlog.get_logger("jobwire.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SourcesView = Callable[[], dict[str, dict[str, Any]]]
REQUIRED_UP = frozenset({"up", "paused"})  # paused on purpose (backlog) is not an outage
_MAX_LIST = 1000


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
    """An error answered as JSON with its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return _json({"error": exc.message}, exc.status)
    except StoreUnavailable as exc:
        return _json({"error": f"database unavailable: {exc}"}, 503)
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
        store: PostgresStore,
        metrics: Metrics,
        sources: SourcesView,
        wake: Callable[[], None],
        required_sources: frozenset[str] = frozenset(),
    ) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        self.sources = sources
        self.wake = wake
        self.required_sources = required_sources
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    def app(self) -> web.Application:
        """The aiohttp application (tests may serve it themselves)."""
        app = web.Application(middlewares=[_errors])
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
        status = request.query.get("status")
        if status is not None and status not in {s.value for s in JobStatus}:
            raise ApiError(400, f"unknown status {status!r}")
        limit = _int(request.query.get("limit", "50"), "limit", 1, _MAX_LIST)
        before = request.query.get("before_id")
        before_id = _int(before, "before_id", 1) if before is not None else None
        jobs = await self.store.list_jobs(status, request.query.get("queue"), limit, before_id)
        next_before_id = jobs[-1].id if len(jobs) == limit else None
        return _json({"jobs": [job_as_dict(j) for j in jobs], "next_before_id": next_before_id})

    async def show_job(self, request: web.Request) -> web.Response:
        """One job with every attempt."""
        job_id = _int(request.match_info["id"], "job id", 1)
        job = await self.store.get(job_id)
        if job is None:
            raise ApiError(404, f"no job {job_id}")
        return _json({**job_as_dict(job), "runs": await self.store.runs(job_id)})

    async def list_schedules(self, request: web.Request) -> web.Response:
        """Every schedule with its next run."""
        return _json({"schedules": await self.store.list_schedules()})

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
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.encode(), token.encode()):
            raise ApiError(401, "missing or wrong bearer token")

    async def enqueue(self, request: web.Request) -> web.Response:
        """POST a job: handler, payload, queue, priority, delay, max_attempts, dedup_key."""
        self._authorize(request)
        try:
            body = await request.json()
        except json.JSONDecodeError as exc:
            raise ApiError(400, f"body is not JSON: {exc}") from exc
        if not isinstance(body, dict) or not isinstance(body.get("handler"), str):
            raise ApiError(400, 'body must be an object with a "handler" name')
        allowed = {"handler", "payload", "queue", "priority", "delay", "max_attempts", "dedup_key"}
        unknown = sorted(set(body) - allowed)
        if unknown:
            raise ApiError(400, f"unknown keys: {', '.join(unknown)}")
        for key in ("queue", "dedup_key"):
            if body.get(key) is not None and not isinstance(body[key], str):
                raise ApiError(400, f"{key} must be a string")
        try:
            spec = JobSpec(
                handler=body["handler"],
                payload=body.get("payload"),
                queue=str(body.get("queue", "default")),
                priority=int(body.get("priority", 0)),
                delay=float(body.get("delay", 0.0)),
                max_attempts=None
                if body.get("max_attempts") is None
                else int(body["max_attempts"]),
                dedup_key=body.get("dedup_key"),
                source="http",
            )
        except (TypeError, ValueError) as exc:
            raise ApiError(400, f"bad value: {exc}") from exc
        try:
            (job_id,) = await self.store.enqueue_many([spec])
        except InvalidJobData as exc:
            raise ApiError(400, f"the database refused the job: {exc}") from exc
        self.wake()
        if job_id is None:
            return _json({"id": None, "duplicate": True}, 200)
        return _json({"id": job_id, "duplicate": False}, 201)

    async def retry_job(self, request: web.Request) -> web.Response:
        """Run a failed or cancelled job again."""
        self._authorize(request)
        job_id = _int(request.match_info["id"], "job id", 1)
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
        job_id = _int(request.match_info["id"], "job id", 1)
        status = await self.store.cancel(job_id)
        if status is None:
            raise ApiError(404, f"no job {job_id}")
        return _json({"id": job_id, "status": status})


def _int(text: str, what: str, minimum: int, maximum: int | None = None) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ApiError(400, f"{what} must be an integer (got {text!r})") from None
    if value < minimum or (maximum is not None and value > maximum):
        upper = f" and at most {maximum}" if maximum is not None else ""
        raise ApiError(400, f"{what} must be at least {minimum}{upper}")
    return value
