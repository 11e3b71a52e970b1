"""The dashboard's queue actions: pause and resume (admin only, audited by queue_admin, as the
CLI and the API are)."""

from __future__ import annotations

from aiohttp import web

from jobwire.dashboard.auth import Role, Session
from jobwire.dashboard.common import Context, PageError, see_other, signed_in
from jobwire.queue_admin import QueueRefused, set_paused


class QueuePages:
    """POST /queues/{name}/pause|resume; the middleware has checked session and CSRF."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def routes(self) -> list[web.RouteDef]:
        """The routes, relative to /ui."""
        return [
            web.post("/queues/{name}/pause", self.pause),
            web.post("/queues/{name}/resume", self.resume),
        ]

    async def pause(self, request: web.Request) -> web.Response:
        """Start no more jobs of the queue on any instance (running ones finish)."""
        return await self._set(request, True)

    async def resume(self, request: web.Request) -> web.Response:
        """Start the queue's jobs again."""
        return await self._set(request, False)

    async def _set(self, request: web.Request, paused: bool) -> web.Response:
        session: Session = signed_in(request)
        if session.role != Role.ADMIN:
            raise PageError(403, "this session is read-only: sign in with the admin token")
        try:
            await set_paused(
                self.ctx.store, request.match_info["name"], paused, session.actor, "admin"
            )
        except QueueRefused as exc:
            raise PageError(400, str(exc)) from None
        if not paused:
            self.ctx.wake()
        return see_other("/ui/")
