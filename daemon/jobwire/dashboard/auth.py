"""Dashboard sign-in: token to role, in-memory sessions, CSRF tokens.

A session is a random id in an HttpOnly, SameSite=Strict cookie, looked up in this
process's memory: sessions end when the daemon restarts, and an instance knows only its
own. Every POST form carries the session's CSRF token; the sign-in form, before any
session exists, carries a token matched against a short-lived cookie (double submit).
"""

from __future__ import annotations

import enum
import hmac
import secrets
import time
from dataclasses import dataclass

SESSION_COOKIE = "jobwire_session"
LOGIN_COOKIE = "jobwire_login"
COOKIE_PATH = "/ui"
LOGIN_TTL = 600.0  # seconds a sign-in form stays usable
# Oldest sessions are dropped past this many: a flood of sign-ins cannot grow memory.
MAX_SESSIONS = 10_000


class Role(enum.StrEnum):
    """What a session may do: read, or also act (retry, cancel)."""

    READ = "read"
    ADMIN = "admin"


@dataclass(frozen=True)
class Session:
    """One signed-in browser."""

    id: str
    role: Role
    csrf: str
    expires: float
    client: str

    @property
    def actor(self) -> str:
        """Who acted, for the audit table: role, client address and a short session tag."""
        return f"{self.role}@{self.client}#{self.id[:6]}"


def _same(given: str, expected: str | None) -> bool:
    """Constant-time equality; False when nothing is expected."""
    if not expected:
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode())


def role_for(token: str, admin_token: str | None, read_token: str | None) -> Role | None:
    """The role a token signs in as, or None; both comparisons always run."""
    is_admin = _same(token, admin_token)
    is_reader = _same(token, read_token)
    if is_admin:
        return Role.ADMIN
    return Role.READ if is_reader else None


class Sessions:
    """The sessions of this process, by id."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._by_id: dict[str, Session] = {}

    def create(self, role: Role, client: str) -> Session:
        """A new session for ``role``."""
        self._prune()
        session = Session(
            id=secrets.token_urlsafe(32),
            role=role,
            csrf=secrets.token_urlsafe(32),
            expires=time.monotonic() + self.ttl,
            client=client,
        )
        self._by_id[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session of that id, or None (unknown or expired)."""
        if not session_id:
            return None
        session = self._by_id.get(session_id)
        if session is None:
            return None
        if session.expires <= time.monotonic():
            del self._by_id[session_id]
            return None
        return session

    def end(self, session_id: str) -> None:
        """Sign out."""
        self._by_id.pop(session_id, None)

    def _prune(self) -> None:
        at = time.monotonic()
        for sid in [s.id for s in self._by_id.values() if s.expires <= at]:
            del self._by_id[sid]
        while len(self._by_id) >= MAX_SESSIONS:  # dicts keep insertion order: oldest first
            del self._by_id[next(iter(self._by_id))]


def csrf_ok(given: str | None, session: Session) -> bool:
    """Whether a form's CSRF token is the session's (constant time)."""
    return given is not None and _same(given, session.csrf)


def login_token() -> str:
    """A fresh token for the sign-in form and its cookie."""
    return secrets.token_urlsafe(24)


def login_csrf_ok(form_token: str | None, cookie_token: str | None) -> bool:
    """The sign-in form's token matches its cookie (set when the form was served)."""
    return bool(form_token) and form_token is not None and _same(form_token, cookie_token)


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a dashboard path only (no open redirect)."""
    if target and target.startswith("/ui/") and not target.startswith("//"):
        # It becomes the Location header: a control character there (DEL, ESC, tab, a line
        # break) makes aiohttp drop the connection, and a browser strips or rewrites some.
        if "\\" not in target and target.isprintable():
            return target
    return "/ui/"
