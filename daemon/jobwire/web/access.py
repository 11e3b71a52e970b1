"""Who may call a route: anyone, a reader (read or admin token), or the admin token alone."""

from __future__ import annotations

import enum

from aiohttp import web

from jobwire.config import HttpConfig
from jobwire.dashboard.auth import Role, role_for
from jobwire.web.responses import ApiError

# RFC 6750: a 401 says which scheme would have worked.
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="jobwire"'}


class Access(enum.StrEnum):
    """What a route needs: nothing, a read token (or the admin one), or the admin token."""

    OPEN = "open"
    READ = "read"
    ADMIN = "admin"


def needs_token(access: Access, config: HttpConfig) -> bool:
    """Whether a request to a route with ``access`` must carry a bearer token."""
    return access is Access.ADMIN or (access is Access.READ and not config.public_reads)


def _presented_role(request: web.Request, config: HttpConfig) -> Role | None:
    """The role of the request's bearer token, or None for no token or a wrong one."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    # aiohttp keeps undecodable header bytes as surrogate escapes; role_for encodes them
    # back rather than failing on them, so a mangled header is a 401 and not a 500.
    return role_for(value, config.admin_token, config.read_token)


def authorize(request: web.Request, config: HttpConfig, access: Access) -> None:
    """Raise ApiError (401 or 403) unless the request may use a route with ``access``."""
    if not needs_token(access, config):
        return
    if access is Access.ADMIN and not config.admin_token:
        raise ApiError(403, "mutations are disabled: set http.admin_token to allow them")
    if access is Access.READ and not (config.admin_token or config.read_token):
        raise ApiError(
            403,
            "reads need a token: set http.read_token or http.admin_token, "
            "or http.public_reads: true",
        )
    role = _presented_role(request, config)
    if role is None:
        raise ApiError(401, "missing or wrong bearer token", headers=_CHALLENGE)
    if access is Access.ADMIN and role is not Role.ADMIN:
        raise ApiError(403, "the read token cannot act; mutations need http.admin_token")
