"""The dashboard's schedules page, and its pause, resume and run-now actions (admin only,
each written to the audit through schedule_admin, as the CLI and the API write theirs)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from jobwire.dashboard.auth import Role, Session
from jobwire.dashboard.common import Context, PageError, render, see_other, session_of, signed_in
from jobwire.schedule_admin import ScheduleRefused, Who, parse_name, run_now, set_enabled

PAGE = "/ui/schedules"


class SchedulePages:
    """GET /schedules and its POST actions; the middleware has checked session and CSRF."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def routes(self) -> list[web.RouteDef]:
        """The routes, relative to /ui."""
        return [
            web.get("/schedules", self.page),
            web.post("/schedules/{name}/pause", self.pause),
            web.post("/schedules/{name}/resume", self.resume),
            web.post("/schedules/{name}/run", self.run),
        ]

    async def page(self, request: web.Request) -> web.Response:
        """Every schedule: timing, next and last run, runs, state, origin, its last job."""
        rows = await self.ctx.store.list_schedules()
        last = await self.ctx.store.last_schedule_jobs()
        session = session_of(request)
        context: dict[str, Any] = {
            "schedules": [(row, last.get(row.id)) for row in rows],
            "admin": session is not None and session.role == Role.ADMIN,
        }
        return render(request, "schedules.html", context)

    def _admin(self, request: web.Request) -> Who:
        session: Session = signed_in(request)
        if session.role != Role.ADMIN:
            raise PageError(403, "this session is read-only: sign in with the admin token")
        return Who(session.actor, str(session.role))

    async def pause(self, request: web.Request) -> web.Response:
        """Stop firing a schedule."""
        return await self._enabled(request, False)

    async def resume(self, request: web.Request) -> web.Response:
        """Fire a paused schedule again."""
        return await self._enabled(request, True)

    async def _enabled(self, request: web.Request, enabled: bool) -> web.Response:
        who = self._admin(request)
        name = parse_name(request.match_info["name"])
        try:
            await set_enabled(self.ctx.store, name, enabled, who)
        except ScheduleRefused as exc:
            raise PageError(exc.status, exc.message) from None
        return see_other(PAGE)

    async def run(self, request: web.Request) -> web.Response:
        """Enqueue one job of the schedule now and show it."""
        who = self._admin(request)
        name = parse_name(request.match_info["name"])
        try:
            job_id = await run_now(self.ctx.store, name, who)
        except ScheduleRefused as exc:
            raise PageError(exc.status, exc.message) from None
        self.ctx.wake()
        return see_other(f"/ui/jobs/{job_id}")
