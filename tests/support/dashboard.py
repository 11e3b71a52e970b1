"""Helpers for the dashboard's tests: an HttpApi with it enabled, signing in, form tokens."""

from __future__ import annotations

import re
from typing import Any

from aiohttp.test_utils import TestClient

from jobwire.config import HttpConfig
from jobwire.metrics import Metrics
from jobwire.store.base import Store
from jobwire.web import HttpApi

ADMIN = "admin-token-for-dashboard-tests"
READER = "read-token-for-dashboard-tests"
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def dashboard_config(**dashboard: Any) -> HttpConfig:
    """HTTP config with the dashboard on and both tokens set."""
    settings = {"enabled": True, "read_token": READER, **dashboard}
    return HttpConfig.model_validate(
        {"listen": "127.0.0.1:0", "admin_token": ADMIN, "dashboard": settings}
    )


def dashboard_api(
    store: Store,
    config: HttpConfig | None = None,
    sources: dict[str, dict[str, Any]] | None = None,
) -> HttpApi:
    """An HttpApi over ``store`` with the dashboard enabled (no pool: wake does nothing)."""
    return HttpApi(
        config or dashboard_config(),
        store,
        Metrics(store, lambda: {}, lambda: {}),
        lambda: dict(sources or {}),
        lambda: None,
        allowed_handlers=frozenset({"noop"}),
    )


def csrf_of(html: str) -> str:
    """The CSRF token of the first form on a page."""
    found = _CSRF.search(html)
    assert found, html[:2000]
    return found.group(1)


async def sign_in(client: TestClient[Any, Any], token: str) -> str:
    """Sign in with ``token``; returns the session's CSRF token (from the overview)."""
    async with client.get("/ui/login") as form:
        assert form.status == 200
        login_csrf = csrf_of(await form.text())
    data = {"csrf": login_csrf, "token": token, "next": "/ui/"}
    async with client.post("/ui/login", data=data, allow_redirects=False) as response:
        assert response.status == 303, await response.text()
        assert response.headers["Location"] == "/ui/"
    async with client.get("/ui/") as page:
        assert page.status == 200
        return csrf_of(await page.text())
