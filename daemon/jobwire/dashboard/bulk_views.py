"""The bulk actions' pages: freeze (``POST /ui/bulk``), confirm, start, and progress."""

from __future__ import annotations

import asyncio

from aiohttp import web

from jobwire.api_models import BadInput
from jobwire.dashboard.actions import Actions
from jobwire.dashboard.bulk import (
    CHUNK,
    KINDS,
    MAX_IDS,
    BulkRun,
    BulkRuns,
    back_link,
    describe,
    execute,
    freeze_filter,
    freeze_group,
    now,
)
from jobwire.dashboard.common import PageError, render, see_other
from jobwire.dashboard.pages import MAX_FILTER_CHARS, parse_jobs_query
from jobwire.store.base import AuditEntry, JobFilter


class BulkViews:
    """Admin-only: every handler checks the role first."""

    def __init__(self, actions: Actions, runs: BulkRuns) -> None:
        self.actions = actions
        self.ctx = actions.ctx
        self.runs = runs

    async def freeze(self, request: web.Request) -> web.Response:
        """Freeze what the filter (or failure group) matches now (a POST: it changes state);
        on to the run's page, which shows the count to confirm."""
        session = self.actions._admin(request)
        form = await request.post()  # already read (and its CSRF token checked) by the guard
        pairs = [(k, v) for k, v in form.items() if k != "csrf" and isinstance(v, str)]
        action = next((v for k, v in pairs if k == "action"), None)
        kind = KINDS.get(action or "")
        if kind is None:
            raise BadInput("action", f"action must be one of {', '.join(KINDS)}")
        rest = [(k, v) for k, v in pairs if k != "action"]
        query = parse_jobs_query(rest)
        if query.fingerprint is not None:
            if kind.name == "cancel":
                raise BadInput("action", "a failure group's jobs are finished: retry or delete")
            where: JobFilter | None = None
            ids = await freeze_group(self.ctx.store, query.fingerprint)
        else:
            if query.status is not None and query.status not in kind.statuses:
                raise BadInput("status", f"{kind.name} acts on {'/'.join(kind.statuses)} jobs")
            where = JobFilter(
                status=query.status,
                queue=query.queue,
                handler=query.handler,
                source=query.source,
                exclude_poison=kind.name == "retry",
            )
            ids = await freeze_filter(self.ctx.store, where, kind.statuses)
        run = BulkRun(
            id=self.runs.new_id(),
            session_id=session.id,
            kind=kind,
            scope=describe(kind, where, query.fingerprint),
            back=back_link(where, query.fingerprint),
            ids=ids[:MAX_IDS],
            capped=len(ids) > MAX_IDS,
            frozen_at=now(),
        )
        self.runs.add(run)
        return see_other(f"/ui/bulk/{run.id}")

    def _run(self, request: web.Request) -> BulkRun:
        session = self.actions._admin(request)
        run_id = request.match_info["run"]
        run = self.runs.get(run_id[:MAX_FILTER_CHARS], session.id)
        if run is None:
            raise PageError(404, "no such bulk action in this session (they end with it)")
        return run

    async def start(self, request: web.Request) -> web.Response:
        """Act on the frozen ids, in the background; on to the progress page."""
        run = self._run(request)
        session = self.actions._admin(request)
        if run.state == "frozen":
            entry = AuditEntry(session.actor, str(session.role), f"bulk {run.kind.name}", run.scope)
            run.state = "running"
            run.task = asyncio.create_task(
                execute(run, self.ctx.store, self.ctx.store.record_audit, entry, self.ctx.wake),
                name=f"jobwire-dashboard-bulk-{run.id}",
            )
        return see_other(f"/ui/bulk/{run.id}")

    async def page(self, request: web.Request) -> web.Response:
        """A run: its confirmation while frozen, else its progress."""
        return render(request, "bulk.html", {"run": self._run(request), "chunk": CHUNK})

    async def progress(self, request: web.Request) -> web.Response:
        """The progress panel, polled while the run goes on."""
        return render(request, "_bulk_progress.html", {"run": self._run(request)})
