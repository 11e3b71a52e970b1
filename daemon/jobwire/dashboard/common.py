"""What the dashboard's pages and actions share: their context, rendering and errors."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp_jinja2
from aiohttp import web

from jobwire.dashboard.auth import Session, Sessions
from jobwire.store.base import OperatorStore

SourcesView = Callable[[], dict[str, dict[str, Any]]]
SESSION_KEY = web.RequestKey("jobwire_session", Session)  # set by the guard when signed in


@dataclass(frozen=True)
class Context:
    """The daemon's parts the dashboard reads and acts on."""

    store: OperatorStore
    sources: SourcesView
    wake: Callable[[], None]
    sessions: Sessions


class PageError(Exception):
    """A request the dashboard answers with an error page of this status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def session_of(request: web.Request) -> Session | None:
    """The request's session (set by the dashboard's middleware), if signed in."""
    return request.get(SESSION_KEY)


def signed_in(request: web.Request) -> Session:
    """The request's session; the middleware let no request without one get here."""
    session = session_of(request)
    if session is None:
        raise PageError(403, "sign in first")
    return session


def render(
    request: web.Request, template: str, context: dict[str, Any], status: int = 200
) -> web.Response:
    """A page, with the session (role, CSRF token) every template's frame needs."""
    session = session_of(request)
    return aiohttp_jinja2.render_template(
        template,
        request,
        {"session": session, "path": request.path, **context},
        status=status,
    )


def see_other(location: str) -> web.Response:
    """A 303 redirect (returned, not raised: the API's error middleware turns raised
    HTTP exceptions into JSON)."""
    return web.Response(status=303, headers={"Location": location})
