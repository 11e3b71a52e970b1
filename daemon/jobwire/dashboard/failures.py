"""The failures page: failed jobs grouped by error fingerprint, each group with its count,
first and last seen, handlers and queues, a sample error and its actions."""

from __future__ import annotations

from aiohttp import web

from jobwire.dashboard.common import Context, render, session_of
from jobwire.dashboard.views import first_line

MAX_GROUPS = 100  # the biggest groups; a long tail below them is one failure each


class Failures:
    """GET /ui/failures."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def page(self, request: web.Request) -> web.Response:
        """The groups, biggest first, with the newest job of each as the sample."""
        groups = await self.ctx.store.failure_groups(MAX_GROUPS)
        samples = await self.ctx.store.jobs_by_ids([g.sample_id for g in groups])
        errors = {j.id: first_line(j.last_error) for j in samples}
        session = session_of(request)
        context = {
            "groups": groups,
            "errors": errors,
            "admin": session is not None and session.role == "admin",
            "max_groups": MAX_GROUPS,
        }
        return render(request, "failures.html", context)
