"""The dashboard's outputs: each output's backlog and relays (the overview's section), one
output's set-aside messages, and sending them again or discarding them (admin only,
audited by outbox_admin, as the CLI and the API are)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from aiohttp import web

from jobwire.api_models import parse_id
from jobwire.dashboard.auth import Role
from jobwire.dashboard.common import Context, PageError, render, see_other, session_of, signed_in
from jobwire.outbox_admin import OutboxRefused, check, discard, resend
from jobwire.store.base import OutboxBacklog

PAGE_SIZE = 100  # set-aside messages shown; the actions act on all of them, shown or not


def output_rows(
    backlog: dict[str, OutboxBacklog], workers: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Per output, from the store's backlog and every instance's published relay state:
    unsent, oldest, set aside, and how its relays are doing (none: no instance runs it)."""
    relays: dict[str, list[dict[str, Any]]] = {}
    for worker in workers:
        state = worker.get("state")
        outputs = state.get("outputs") if isinstance(state, dict) else None
        for name, info in (outputs or {}).items():
            if isinstance(info, dict):
                relays.setdefault(name, []).append({"worker": worker.get("id"), **info})
    rows = []
    for name in sorted(set(backlog) | set(relays)):
        b = backlog.get(name, OutboxBacklog(0, 0.0, 0))
        mine = relays.get(name, [])
        states = {str(r.get("state")) for r in mine}
        errors = [str(r["last_error"]) for r in mine if r.get("last_error")]
        rows.append(
            {
                "name": name,
                "pending": b.pending,
                "oldest": b.oldest,
                "set_aside": b.set_aside,
                "relays": len(mine),
                "state": "no relay" if not mine else "up" if "up" in states else sorted(states)[0],
                "sent": sum(int(r.get("sent") or 0) for r in mine),
                "last_error": errors[0] if errors else "",
            }
        )
    return rows


class OutputPages:
    """GET /outputs/{name}; POST /outputs/{name}/resend and /discard (the middleware has
    checked the session and the CSRF token)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def routes(self) -> list[web.RouteDef]:
        """The routes, relative to /ui."""
        return [
            web.get("/outputs/{name}", self.page),
            web.post("/outputs/{name}/resend", self.resend),
            web.post("/outputs/{name}/discard", self.discard),
        ]

    async def page(self, request: web.Request) -> web.Response:
        """One output: its backlog, and its set-aside messages with why."""
        name = request.match_info["name"]
        try:
            check(name, None)
        except OutboxRefused as exc:
            raise PageError(400, str(exc)) from None
        store = self.ctx.store
        backlog = (await store.outbox_pending()).get(name, OutboxBacklog(0, 0.0, 0))
        messages = await store.set_aside_messages(name, PAGE_SIZE)
        session = session_of(request)
        context = {
            "name": name,
            "backlog": backlog,
            "messages": messages,
            "page_size": PAGE_SIZE,
            "admin": session is not None and session.role == Role.ADMIN,
        }
        return render(request, "output.html", context)

    async def resend(self, request: web.Request) -> web.Response:
        """Send set-aside messages again: one (``id``) or all of the output's."""
        return await self._act(request, "resend")

    async def discard(self, request: web.Request) -> web.Response:
        """Delete set-aside messages, once the form's confirmation box is ticked."""
        return await self._act(request, "discard")

    async def _act(self, request: web.Request, verb: str) -> web.Response:
        session = signed_in(request)
        if session.role != Role.ADMIN:
            raise PageError(403, "this session is read-only: sign in with the admin token")
        name = request.match_info["name"]
        form = await request.post()  # already read (and its CSRF token checked) by the guard
        if verb == "discard" and form.get("confirm") != "yes":
            raise PageError(400, "tick the box to confirm: discarded messages are never sent")
        given = form.get("id")
        ids = [parse_id(given)] if isinstance(given, str) and given else None
        act = resend if verb == "resend" else discard
        try:
            await act(self.ctx.store, name, ids, session.actor, "admin")
        except OutboxRefused as exc:
            raise PageError(400, str(exc)) from None
        return see_other(f"/ui/outputs/{quote(name, safe='')}")
