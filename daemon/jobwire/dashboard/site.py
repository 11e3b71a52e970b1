"""The dashboard's aiohttp sub-application: routes, sign-in, and the guard every request
passes (session, CSRF, security headers, HTML error pages)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp_jinja2
import jinja2
import structlog
from aiohttp import web

from jobwire.api_models import BadInput
from jobwire.config import HttpConfig
from jobwire.dashboard.actions import Actions
from jobwire.dashboard.auth import (
    COOKIE_PATH,
    LOGIN_COOKIE,
    LOGIN_TTL,
    SESSION_COOKIE,
    Sessions,
    csrf_ok,
    login_csrf_ok,
    login_token,
    role_for,
    safe_next,
)
from jobwire.dashboard.bulk import BulkRuns
from jobwire.dashboard.bulk_views import BulkViews
from jobwire.dashboard.common import (
    SESSION_KEY,
    Context,
    PageError,
    SourcesView,
    render,
    see_other,
    session_of,
)
from jobwire.dashboard.failures import Failures
from jobwire.dashboard.live import LiveHub, stream
from jobwire.dashboard.outputs import OutputPages
from jobwire.dashboard.pages import Pages
from jobwire.dashboard.queues import QueuePages
from jobwire.dashboard.rollup import Rollup
from jobwire.dashboard.schedules import SchedulePages
from jobwire.dashboard.sparkline import sparkline
from jobwire.dashboard.views import FILTERS
from jobwire.redaction import redact
from jobwire.store.base import AuditEntry, OperatorStore, StoreUnavailable

log = structlog.get_logger("jobwire.dashboard")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PREFIX = "/ui"
STATIC = Path(__file__).parent / "static"
# Scripts and styles from this origin only: no inline script or style, no eval, no frames.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}
MAX_FORM_BYTES = 16 * 1024
FORM_READ_TIMEOUT = 10.0
FAILED_LOGIN_DELAY = 1.0  # seconds before a wrong token is answered: slows guessing


class Dashboard:
    """The web dashboard under /ui/, over the operator store and the daemon's sources."""

    def __init__(
        self,
        config: HttpConfig,
        store: OperatorStore,
        sources: SourcesView,
        wake: Callable[[], None],
        schema: str = "jobwire",
    ) -> None:
        self.config = config
        self.ctx = Context(store, sources, wake, Sessions(config.dashboard.session_ttl))
        self.pages = Pages(self.ctx)
        self.actions = Actions(self.ctx)
        self.failures = Failures(self.ctx)
        self.bulk_runs = BulkRuns()
        self.bulk = BulkViews(self.actions, self.bulk_runs)
        self.live = LiveHub(store)
        self.pages.live_version = lambda: self.live.version if self.live.polling else None
        self.rollup = Rollup(store, schema)

    def mount(self, app: web.Application) -> None:
        """Serve the dashboard under /ui/ of ``app``."""

        async def to_dashboard(request: web.Request) -> web.Response:
            return see_other(f"{PREFIX}/")

        app.router.add_get(PREFIX, to_dashboard)
        app.add_subapp(PREFIX, self.app())
        app.cleanup_ctx.append(self._background)
        app.on_shutdown.append(self._end_streams)

    async def _background(self, _app: web.Application) -> AsyncIterator[None]:
        """The throughput rollup while the server runs; bulk actions stopped at the end."""
        self.rollup.start()
        yield
        await self.rollup.stop()
        await self.bulk_runs.close()

    async def _end_streams(self, _app: web.Application) -> None:
        # Open event streams would hold the graceful shutdown until its timeout.
        await self.live.close()

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Server-Sent Events: ``change`` after jobs changed (polled), while signed in."""
        session_id = request.cookies.get(SESSION_COOKIE)

        def still_signed_in() -> bool:
            return self.ctx.sessions.get(session_id) is not None

        return await stream(request, self.live, session_id or "", still_signed_in, SECURITY_HEADERS)

    def app(self) -> web.Application:
        """The sub-application (routes relative to /ui)."""
        sub = web.Application(middlewares=[self._guard], client_max_size=MAX_FORM_BYTES)
        env = aiohttp_jinja2.setup(
            sub,
            loader=jinja2.PackageLoader("jobwire.dashboard", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        env.filters.update(FILTERS)
        env.filters["spark"] = sparkline
        sub.add_routes(
            [
                web.get("/", self.pages.overview),
                web.get("/login", self.login_form),
                web.post("/login", self.login),
                web.post("/logout", self.logout),
                web.get("/jobs", self.pages.jobs),
                web.get("/jobs/{id}", self.pages.job),
                web.get("/jobs/{id}/live", self.pages.job_live),
                web.post("/jobs/{id}/retry", self.actions.retry),
                web.post("/jobs/{id}/cancel", self.actions.cancel),
                web.post("/jobs/{id}/delete", self.actions.delete),
                web.get("/audit", self.pages.audit),
                *SchedulePages(self.ctx).routes(),
                *QueuePages(self.ctx).routes(),
                *OutputPages(self.ctx).routes(),
                web.get("/failures", self.failures.page),
                web.post("/bulk", self.bulk.freeze),
                web.get("/bulk/{run}", self.bulk.page),
                web.get("/bulk/{run}/progress", self.bulk.progress),
                web.post("/bulk/{run}/start", self.bulk.start),
                web.get("/events", self.events),
                web.static("/static", STATIC),
            ]
        )
        return sub

    # -- the guard ----------------------------------------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await self._checked(request, handler)
        except PageError as exc:
            response = self._error(request, exc.status, exc.message)
        except BadInput as exc:
            response = self._error(request, 400, exc.message)
        except StoreUnavailable as exc:
            response = self._error(request, 503, f"the database is unavailable: {redact(str(exc))}")
        except web.HTTPException as exc:  # no such route or file, wrong method
            response = self._error(request, exc.status, exc.reason)
        except Exception:  # a page, not a traceback; the bug goes to the log
            log.exception("dashboard_crashed", path=request.path)
            response = self._error(request, 500, "internal error; see the daemon's log")
        if response.prepared:  # an event stream: its headers went out with it
            return response
        response.headers.update(SECURITY_HEADERS)
        if not request.path.startswith(f"{PREFIX}/static/"):
            response.headers["Cache-Control"] = "no-store"
        return response

    async def _checked(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        session = self.ctx.sessions.get(request.cookies.get(SESSION_COOKIE))
        if session is not None:
            request[SESSION_KEY] = session
        public = request.path == f"{PREFIX}/login" or request.path.startswith(f"{PREFIX}/static/")
        if public:
            return await handler(request)
        if session is None:
            if request.method not in ("GET", "HEAD"):
                raise PageError(403, "sign in first: actions need a session")
            if request.headers.get("HX-Request"):
                # htmx swaps nothing on a 401 but follows HX-Redirect: the page goes to sign-in.
                return web.Response(status=401, headers={"HX-Redirect": f"{PREFIX}/login"})
            return see_other(f"{PREFIX}/login?next={quote(request.path_qs, safe='')}")
        if request.method == "POST":
            form = await read_form(request)
            given = form.get("csrf")
            if not isinstance(given, str) or not csrf_ok(given, session):
                raise PageError(403, "the form's CSRF token is missing or wrong: reload the page")
        return await handler(request)

    def _error(self, request: web.Request, status: int, message: str) -> web.Response:
        return render(request, "error.html", {"status": status, "message": message}, status)

    # -- sign-in ------------------------------------------------------------------------

    async def login_form(self, request: web.Request) -> web.Response:
        """The sign-in form, with a fresh token tied to a short-lived cookie."""
        return self._login_page(request, request.query.get("next"), None, 200)

    def _login_page(
        self, request: web.Request, next_path: str | None, problem: str | None, status: int
    ) -> web.Response:
        token = login_token()
        configured = bool(self.config.admin_token or self.config.dashboard.read_token)
        context = {
            "login_csrf": token,
            "next": safe_next(next_path),
            "problem": problem,
            "configured": configured,
        }
        response = render(request, "login.html", context, status)
        _set_cookie(response, request, LOGIN_COOKIE, token, LOGIN_TTL)
        return response

    async def login(self, request: web.Request) -> web.Response:
        """Check the token; on success a session cookie and on to ``next``."""
        form = await read_form(request)
        next_path = safe_next(_text(form.get("next")))
        if not login_csrf_ok(_text(form.get("csrf")), request.cookies.get(LOGIN_COOKIE)):
            raise PageError(403, "the sign-in form expired or came from elsewhere: reload it")
        role = role_for(
            _text(form.get("token")) or "",
            self.config.admin_token,
            self.config.dashboard.read_token,
        )
        client = request.remote or "unknown"
        if role is None:
            log.warning("dashboard_login_refused", client=client)
            await asyncio.sleep(FAILED_LOGIN_DELAY)
            return self._login_page(request, next_path, "That token is not valid here.", 401)
        session = self.ctx.sessions.create(role, client)
        await self.ctx.store.record_audit(AuditEntry(session.actor, str(role), "login"))
        response = see_other(next_path)
        _set_cookie(response, request, SESSION_COOKIE, session.id, self.ctx.sessions.ttl)
        response.del_cookie(LOGIN_COOKIE, path=COOKIE_PATH)
        return response

    async def logout(self, request: web.Request) -> web.Response:
        """End the session (its CSRF token was checked: no one signs another out)."""
        session = session_of(request)
        if session is not None:
            self.ctx.sessions.end(session.id)
            await self.ctx.store.record_audit(
                AuditEntry(session.actor, str(session.role), "logout")
            )
        response = see_other(f"{PREFIX}/login")
        response.del_cookie(SESSION_COOKIE, path=COOKIE_PATH)
        return response


def _set_cookie(
    response: web.Response, request: web.Request, name: str, value: str, max_age: float
) -> None:
    # HttpOnly: no script reads it; Strict: no other site's page sends it; Secure when the
    # browser reached us over https (directly: a proxy's scheme is not trusted here).
    response.set_cookie(
        name,
        value,
        max_age=int(max_age),
        path=COOKIE_PATH,
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


async def read_form(request: web.Request) -> Any:
    """The posted form, or a 400: a malformed body (bad charset, not UTF-8, a multipart part
    without a name) is the sender's mistake, not a crash, and the form has a size limit."""
    if request.content_length is not None and request.content_length > MAX_FORM_BYTES:
        raise PageError(413, f"the form is larger than {MAX_FORM_BYTES} bytes")
    try:
        # A form is small; a body that never ends must not hold its connection (the sign-in
        # form takes requests from anyone).
        async with asyncio.timeout(FORM_READ_TIMEOUT):
            return await request.post()
    except TimeoutError:
        raise PageError(408, f"the form was not sent within {FORM_READ_TIMEOUT:g}s") from None
    except (ValueError, LookupError) as exc:
        raise PageError(400, f"malformed form: {type(exc).__name__}") from None
    except web.HTTPRequestEntityTooLarge:
        raise PageError(413, f"the form is larger than {MAX_FORM_BYTES} bytes") from None
