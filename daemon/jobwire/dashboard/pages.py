"""The dashboard's pages: overview, jobs, one job (and its live fragment), the audit."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from jobwire.api_models import BadInput, parse_id
from jobwire.dashboard.auth import Role
from jobwire.dashboard.common import Context, PageError, render, session_of
from jobwire.dashboard.outputs import output_rows
from jobwire.dashboard.sparkline import per_queue
from jobwire.dashboard.views import COUNT_CAP, body_preview, provenance
from jobwire.models import JobStatus
from jobwire.storable import problem_of

PAGE_SIZE = 50
STATUSES = [str(s) for s in JobStatus]
LIVE = frozenset({"pending", "retrying", "running"})
FAILED_WINDOW = 3600.0  # the overview's "failed in the last hour"
_FILTERS = ("status", "queue", "handler", "source")
_PARAMS = (*_FILTERS, "fingerprint", "before_id")
MAX_FILTER_CHARS = 200
CACHE_MAX_AGE = 5.0  # seconds an overview read is shared at most (instances' heartbeats move)


@dataclass(frozen=True)
class JobsQuery:
    """The filters and page of /ui/jobs, from its query string."""

    status: str | None = None
    queue: str | None = None
    handler: str | None = None
    source: str | None = None
    before_id: int | None = None
    fingerprint: str | None = None  # a failure group's (failed jobs only)

    def filters(self) -> dict[str, str]:
        """The filters given (for links that keep them)."""
        return {k: v for k in (*_FILTERS, "fingerprint") if (v := getattr(self, k)) is not None}


def parse_jobs_query(pairs: list[tuple[str, str]]) -> JobsQuery:
    """Check the query string; an empty value means the filter is absent (a blank field)."""
    seen: dict[str, str] = {}
    for name, value in pairs:
        if name not in _PARAMS:
            raise BadInput(name, f"unknown filter {name[:40]!a}; use {', '.join(_PARAMS)}")
        if name in seen:
            raise BadInput(name, f"{name} is given more than once")
        if len(value) > MAX_FILTER_CHARS or problem_of(value):
            raise BadInput(name, f"{name} is not a value a job can have")
        seen[name] = value.strip()
    given = {k: v for k, v in seen.items() if v}
    status = given.get("status")
    if status is not None and status not in STATUSES:
        raise BadInput("status", f"unknown status {status[:40]!a}")
    before = given.get("before_id")
    fingerprint = given.get("fingerprint")
    if fingerprint is not None and (status or "failed") != "failed":
        raise BadInput("fingerprint", "an error fingerprint selects failed jobs only")
    if fingerprint is not None and any(given.get(k) for k in ("queue", "handler", "source")):
        raise BadInput("fingerprint", "a failure group is listed whole: no other filter")
    return JobsQuery(
        fingerprint=fingerprint,
        status="failed" if fingerprint is not None else status,
        queue=given.get("queue"),
        handler=given.get("handler"),
        source=given.get("source"),
        before_id=None if before is None else parse_id(before, "before_id"),
    )


def _is_admin(request: web.Request) -> bool:
    session = session_of(request)
    return session is not None and session.role == "admin"


class Pages:
    """GET handlers; every one needs a session (the middleware sees to it)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        # The live hub's version while it polls (None when no stream is open): open
        # overviews all reload on the same change, and share one read of the store.
        self.live_version: Callable[[], int | None] = lambda: None
        self._cached: tuple[int, float, dict[str, Any]] | None = None

    async def overview(self, request: web.Request) -> web.Response:
        """Per queue: ready, running, retrying and failed lately; sources, outputs, instances,
        schedules."""
        version = self.live_version()
        now = time.monotonic()
        cached = self._cached
        if (
            version is not None
            and cached
            and cached[0] == version
            and now - cached[1] < CACHE_MAX_AGE
        ):
            data = cached[2]
        else:
            data = await self._overview_data()
            if version is not None:
                self._cached = (version, now, data)
        session = session_of(request)
        context = {
            **data,
            "sources": sorted(self.ctx.sources().items()),
            "cap": COUNT_CAP,
            "admin": session is not None and session.role == Role.ADMIN,
        }
        return render(request, "overview.html", context)

    async def _overview_data(self) -> dict[str, Any]:
        store = self.ctx.store
        live = await store.stats(finished=False)
        failed = await store.failed_since(FAILED_WINDOW, COUNT_CAP)
        at = datetime.now(UTC)
        rows = await store.throughput(at.replace(second=0, microsecond=0) - timedelta(hours=1))
        throughput = per_queue(rows, at)
        paused = {q.queue for q in await store.queue_states() if q.paused}
        names = sorted(set(live) | set(failed) | set(throughput) | paused)
        # One index probe per queue (the metric's query): how late the queue is.
        oldest = await store.oldest_ready(names) if names else {}
        queues = [
            {
                "name": name,
                "pending": live.get(name, {}).get("pending", 0),
                "retrying": live.get(name, {}).get("retrying", 0),
                "running": live.get(name, {}).get("running", 0),
                "failed": failed.get(name, 0),
                "throughput": throughput.get(name),
                "paused": name in paused,
                "oldest": oldest.get(name, 0.0),
            }
            for name in names
        ]
        workers = await store.list_workers()
        return {
            "queues": queues,
            "outputs": output_rows(await store.outbox_pending(), workers),
            "workers": workers,
            "schedules": await store.list_schedules(),
        }

    async def jobs(self, request: web.Request) -> web.Response:
        """Newest first, filtered by the query string, a page at a time (keyset)."""
        query = parse_jobs_query(list(request.query.items()))
        store = self.ctx.store
        if query.fingerprint is not None:
            ids = await store.failed_ids(query.fingerprint, PAGE_SIZE + 1, query.before_id)
            jobs = await store.jobs_by_ids(ids)
        else:
            jobs = await store.list_jobs(
                query.status,
                query.queue,
                PAGE_SIZE + 1,
                query.before_id,
                handler=query.handler,
                source=query.source,
            )
        more = len(jobs) > PAGE_SIZE
        jobs = jobs[:PAGE_SIZE]
        total = None
        if query.status is not None and query.fingerprint is None:
            total = await self.ctx.store.count_jobs(
                query.status, query.queue, query.handler, query.source, cap=COUNT_CAP
            )
        context: dict[str, Any] = {
            "jobs": jobs,
            "query": query,
            "filters": query.filters(),
            "statuses": STATUSES,
            "total": total,
            "next_before_id": jobs[-1].id if more and jobs else None,
            "cap": COUNT_CAP,
            "admin": _is_admin(request),
        }
        return render(request, "jobs.html", context)

    async def _job_context(self, request: web.Request) -> dict[str, Any]:
        job_id = parse_id(request.match_info["id"])
        job = await self.ctx.store.get(job_id)
        if job is None:
            raise PageError(404, f"no job {job_id} (it may have been purged)")
        session = session_of(request)
        return {
            "job": job,
            "runs": await self.ctx.store.runs(job_id),
            "live": str(job.status) in LIVE,
            "admin": session is not None and session.role == "admin",
        }

    async def job(self, request: web.Request) -> web.Response:
        """One job: its state (live), payload or body, headers, provenance, attempts."""
        context = await self._job_context(request)
        job = context["job"]
        kind, text = body_preview(job.body)
        context.update(
            body_kind=kind, body_text=text, provenance=provenance(job), headers=job.headers
        )
        return render(request, "job.html", context)

    async def job_live(self, request: web.Request) -> web.Response:
        """The job page's live part, polled by htmx while the job is not finished."""
        return render(request, "_job_state.html", await self._job_context(request))

    async def audit(self, request: web.Request) -> web.Response:
        """What operators did, newest first."""
        before = request.query.get("before_id") or None
        before_id = None if before is None else parse_id(before, "before_id")
        rows = await self.ctx.store.list_audit(PAGE_SIZE + 1, before_id)
        more = len(rows) > PAGE_SIZE
        rows = rows[:PAGE_SIZE]
        context = {"rows": rows, "next_before_id": rows[-1].id if more and rows else None}
        return render(request, "audit.html", context)
