"""HttpApi: the aiohttp application of health, readiness, metrics and the ``/api/v1`` routes."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from jobwire.api_models import MAX_BODY_BYTES, parse_enqueue, parse_id, parse_list_query
from jobwire.config import HttpConfig
from jobwire.dashboard import Dashboard
from jobwire.metrics import Metrics
from jobwire.models import job_as_dict
from jobwire.queue_admin import QueueRefused, set_paused
from jobwire.store.base import OperatorStore
from jobwire.web.access import authorize
from jobwire.web.listener import Listener, connection_cap
from jobwire.web.openapi import openapi_document
from jobwire.web.outbox_api import OutboxEndpoints
from jobwire.web.ready import Pinger, readiness
from jobwire.web.responses import ApiError, Handler, errors, json_response
from jobwire.web.routes import ROUTES, Route
from jobwire.web.schedules_api import ScheduleEndpoints

log = structlog.get_logger("jobwire.http")

SourcesView = Callable[[], dict[str, dict[str, Any]]]


class Webhook(Protocol):
    """A webhook source's path: its POST handler, and its answer to ``Expect``."""

    async def handle(self, request: web.Request) -> web.Response:
        """The answer to a POST."""

    async def expect(self, request: web.Request) -> web.Response | None:
        """An early answer from the headers alone, or None after ``100 Continue``."""


# Enqueues of a taken dedup key whose job is purged before its id is read (retention) try
# again: the key is free by then. Twice more is plenty for a race that rare.
_ENQUEUE_TRIES = 3


class HttpApi(ScheduleEndpoints, OutboxEndpoints):
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
        schema: str = "jobwire",
        store_trouble: Callable[[], str | None] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        self.sources = sources
        self.wake = wake
        self.required_sources = required_sources
        # The pool's view of the database: a ping may pass while every write fails.
        self.store_trouble = store_trouble
        self._pinger = Pinger(store)
        # The handler names this instance may run: an enqueue naming another is refused, as
        # a broker message naming one is not (it becomes a failed job: see routing).
        self.allowed_handlers = allowed_handlers
        self.document = openapi_document(config)
        self._runner: web.AppRunner | None = None
        self._listener: Listener | None = None
        self.port: int | None = None
        # Webhook sources' paths (type: http), served on this one port; set before start().
        self.webhooks: dict[str, Webhook] = {}
        # Built once, so its sessions outlive any number of app() calls.
        self.dashboard = (
            Dashboard(config, store, sources, wake, schema) if config.dashboard.enabled else None
        )

    def app(self) -> web.Application:
        """The aiohttp application (tests may serve it themselves)."""
        app = web.Application(middlewares=[errors], client_max_size=MAX_BODY_BYTES)
        # Open to probes and Prometheus whatever the tokens (see docs/operations/http.md).
        app.add_routes(
            [
                web.get("/healthz", self.healthz),
                web.get("/readyz", self.readyz),
                web.get("/metrics", self.metrics_text),
            ]
        )
        for route in ROUTES:
            app.router.add_route(route.method, route.path, self._endpoint(route))
        for path, hook in self.webhooks.items():
            # Each source checks its own token and signature: not the API's access rules.
            app.router.add_post(path, hook.handle, expect_handler=hook.expect)
        if self.dashboard is not None:
            self.dashboard.mount(app)
        return app

    def _endpoint(self, route: Route) -> Handler:
        """The route's handler behind its access check (before any input is looked at)."""
        handler: Handler = getattr(self, route.handler)

        async def endpoint(request: web.Request) -> web.StreamResponse:
            authorize(request, self.config, route.access)
            return await handler(request)

        return endpoint

    async def start(self) -> None:
        """Bind and serve; a port that cannot be bound stops the daemon with a clear error."""
        host, port = self.config.address()
        # keepalive_timeout: aiohttp closes a connection with no request under way (idle
        # between requests, or its first request's headers unfinished) after this long.
        self._runner = web.AppRunner(
            self.app(), access_log=None, keepalive_timeout=self.config.idle_timeout
        )
        await self._runner.setup()
        self._listener = Listener(
            self._runner, connection_cap(self.config.max_connections), self.config.idle_timeout
        )
        try:
            self.port = await self._listener.start(host, port)
        except OSError as exc:
            await self._runner.cleanup()
            raise OSError(f"http.listen {self.config.listen}: {exc.strerror or exc}") from exc
        log.info("http_listening", host=host, port=self.port)

    async def stop(self) -> None:
        """Stop serving."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self._pinger.close()

    # -- health ---------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        """The process is alive (this answer came from its event loop)."""
        return json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        """503 unless the database answers (and takes the pool's statements) and every
        required source is connected."""
        body = await readiness(
            self._pinger, self.sources(), self.required_sources, self.store_trouble
        )
        return json_response(body, 200 if body["ready"] else 503)

    async def metrics_text(self, request: web.Request) -> web.Response:
        """Prometheus text format."""
        await self.metrics.refresh()
        response = web.Response(body=generate_latest(self.metrics.registry))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    # -- reading --------------------------------------------------------------------

    async def openapi(self, request: web.Request) -> web.Response:
        """The OpenAPI 3.1 document of /api/v1."""
        return json_response(self.document)

    async def list_jobs(self, request: web.Request) -> web.Response:
        """Newest first; ?status= &queue= &limit= (max 1000) &before_id= for the next page."""
        query = parse_list_query(request.query.items())
        jobs = await self.store.list_jobs(query.status, query.queue, query.limit, query.before_id)
        next_before_id = jobs[-1].id if len(jobs) == query.limit else None
        page = {"jobs": [job_as_dict(j) for j in jobs], "next_before_id": next_before_id}
        return json_response(page)

    async def show_job(self, request: web.Request) -> web.Response:
        """One job with every attempt."""
        job_id = parse_id(request.match_info["id"])
        job = await self.store.get(job_id)
        if job is None:
            raise ApiError(404, f"no job {job_id}")
        return json_response({**job_as_dict(job), "runs": await self.store.runs(job_id)})

    async def list_schedules(self, request: web.Request) -> web.Response:
        """Every schedule with its next run."""
        rows = await self.store.list_schedules()
        return json_response({"schedules": [dataclasses.asdict(r) for r in rows]})

    async def list_sources(self, request: web.Request) -> web.Response:
        """Each source's state, last error, counters (and Kafka lag)."""
        return json_response({"sources": self.sources()})

    # -- acting ---------------------------------------------------------------------

    async def enqueue(self, request: web.Request) -> web.Response:
        """POST a job (checked by api_models.EnqueueRequest); a taken dedup key answers 200
        with the existing job's id, as the CLI and the Client return it."""
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
        spec = job.spec()
        for _ in range(_ENQUEUE_TRIES):
            (job_id,) = await self.store.enqueue_many([spec])
            if job_id is not None:
                self.wake()
                return json_response({"id": job_id, "duplicate": False}, 201)
            assert spec.dedup_key is not None  # only a dedup key makes a duplicate
            existing = (await self.store.ids_by_dedup_key([spec.dedup_key])).get(spec.dedup_key)
            if existing is not None:
                return json_response({"id": existing, "duplicate": True}, 200)
        raise ApiError(409, "the dedup_key was taken and freed again meanwhile", "dedup_key")

    async def retry_job(self, request: web.Request) -> web.Response:
        """Run a failed or cancelled job again."""
        job_id = parse_id(request.match_info["id"])
        if await self.store.get(job_id) is None:
            raise ApiError(404, f"no job {job_id}")
        retried = await self.store.retry([job_id])
        if not retried:
            raise ApiError(409, f"job {job_id} is not failed or cancelled")
        self.wake()
        return json_response({"id": job_id, "status": "pending"})

    async def list_queues(self, request: web.Request) -> web.Response:
        """Queues with live jobs or a pause state: paused or not, live job counts."""
        states = {s.queue: s for s in await self.store.queue_states()}
        live = await self.store.stats(finished=False)
        queues = []
        for name in sorted({*states, *live}):
            state = states.get(name)
            queues.append(
                {
                    "queue": name,
                    "paused": bool(state and state.paused),
                    "changed_at": state.changed_at if state else None,
                    "changed_by": state.changed_by if state else None,
                    "live": live.get(name, {}),
                }
            )
        return json_response({"queues": queues})

    async def pause_queue(self, request: web.Request) -> web.Response:
        """Start no more jobs of a queue on any instance."""
        return await self._set_paused(request, True)

    async def resume_queue(self, request: web.Request) -> web.Response:
        """Start jobs of a paused queue again."""
        return await self._set_paused(request, False)

    async def _set_paused(self, request: web.Request, paused: bool) -> web.Response:
        name = request.match_info["queue"]
        actor = f"api:{request.remote or '?'}"
        try:
            changed = await set_paused(self.store, name, paused, actor)
        except QueueRefused as exc:
            raise ApiError(400, str(exc), "queue") from None
        if not paused:
            self.wake()
        return json_response({"queue": name, "paused": paused, "changed": changed})

    async def cancel_job(self, request: web.Request) -> web.Response:
        """Cancel a waiting job, or ask the worker running it to stop."""
        job_id = parse_id(request.match_info["id"])
        status = await self.store.cancel(job_id)
        if status is None:
            raise ApiError(404, f"no job {job_id}")
        return json_response({"id": job_id, "status": status})
