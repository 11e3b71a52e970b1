"""``/api/v1/outputs``: each output's backlog, its set-aside messages a page at a time, and
sending them again or discarding them (admin token only, by id or all said explicitly,
audited as the CLI and the dashboard are)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from jobwire.config import HttpConfig
from jobwire.metrics import Metrics
from jobwire.store.postgres import PostgresStore
from jobwire.web import HttpApi
from tests.support.outbox import set_aside

pytestmark = pytest.mark.timeout(60)
ADMIN = "admin-token-for-outputs-0123"
READER = "read-token-for-outputs-01234"


@pytest.fixture
async def api(pg_store: PostgresStore) -> AsyncIterator[str]:
    """The base URL of an HttpApi over the test's database."""
    config = HttpConfig(listen="127.0.0.1:0", admin_token=ADMIN, read_token=READER)
    http = HttpApi(
        config,
        pg_store,
        Metrics(pg_store, lambda: {}, lambda: {}),
        lambda: {},
        lambda: None,
        allowed_handlers=frozenset(),
    )
    server = TestServer(http.app())
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


async def call(
    api: str, method: str, path: str, body: Any = None, token: str = ADMIN
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    data = None if body is None else json.dumps(body)
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, api + path, data=data, headers=headers) as response,
    ):
        return response.status, await response.json()


async def test_outputs_and_their_set_aside_messages_are_read_a_page_at_a_time(
    api: str, pg_store: PostgresStore
) -> None:
    ids = await set_aside(pg_store, "billing", 3, "NOT_FOUND - no exchange")
    status, body = await call(api, "GET", "/api/v1/outputs", token=READER)
    assert status == 200
    assert body["outputs"] == [
        {"output": "billing", "pending": 3, "oldest_seconds": 0.0, "set_aside": 3}
    ]
    status, page = await call(api, "GET", "/api/v1/outputs/billing/set-aside?limit=2", token=READER)
    assert status == 200
    assert [m["id"] for m in page["messages"]] == ids[:0:-1]
    assert page["messages"][0]["last_error"] == "NOT_FOUND - no exchange"
    after = page["next_before_id"]
    _, rest = await call(api, "GET", f"/api/v1/outputs/billing/set-aside?before_id={after}")
    assert ([m["id"] for m in rest["messages"]], rest["next_before_id"]) == (ids[:1], None)
    status, body = await call(api, "GET", "/api/v1/outputs/billing/set-aside?limit=0")
    assert (status, body["field"]) == (400, "limit")


async def test_admin_resends_by_id_and_discards_all_said_so(
    api: str, pg_store: PostgresStore
) -> None:
    ids = await set_aside(pg_store, "billing", 3)
    base = "/api/v1/outputs/billing"
    status, body = await call(api, "POST", f"{base}/resend", {"ids": [ids[0]]}, token=READER)
    assert status == 403  # the read token never acts
    for refused in ({}, {"ids": []}, {"ids": [1], "all": True}, {"all": False}, {"ids": ["1"]}):
        status, body = await call(api, "POST", f"{base}/discard", refused)
        assert status == 400, (refused, body)
    status, body = await call(api, "POST", f"{base}/resend", {"ids": [ids[0], 999_999]})
    assert (status, body) == (200, {"output": "billing", "resent": [ids[0]]})
    status, body = await call(api, "POST", f"{base}/discard", {"all": True})
    assert (status, body) == (200, {"output": "billing", "discarded": ids[1:]})
    assert (await pg_store.outbox_pending())["billing"].set_aside == 0
    audit = [(a.action, a.count, a.actor[:4]) for a in await pg_store.list_audit()]
    assert audit == [("outbox_discard", 2, "api:"), ("outbox_resend", 1, "api:")]


async def test_hostile_names_and_ids_are_refused(api: str) -> None:
    for name in ("a%00b", "x" * 300):
        status, body = await call(api, "GET", f"/api/v1/outputs/{name}/set-aside")
        assert status == 400, (name, body)
        status, body = await call(api, "POST", f"/api/v1/outputs/{name}/resend", {"all": True})
        assert status == 400, (name, body)
    deep: Any = []
    for _ in range(200):
        deep = [deep]
    for body in ({"ids": [2**63]}, {"ids": [0]}, {"ids": deep}, {"all": "yes"}, {"ids": None}):
        status, answer = await call(api, "POST", "/api/v1/outputs/billing/discard", body)
        assert status == 400, (body, answer)
