"""The dashboard's outputs on PostgreSQL (aiohttp's test client): the overview's section with
each output's backlog and relays, one output's set-aside messages, and sending them again or
discarding them: admin only, with the CSRF token, discarding only once confirmed, audited."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from jobwire.dashboard.outputs import output_rows
from jobwire.store.base import OutboxBacklog
from jobwire.store.postgres import PostgresStore
from tests.support.dashboard import ADMIN, READER, dashboard_api, sign_in
from tests.support.outbox import set_aside as seed

pytestmark = pytest.mark.timeout(60)
Client = TestClient[Any, Any]


@pytest.fixture
async def client(pg_store: PostgresStore) -> AsyncIterator[Client]:
    """The dashboard over this test's database (no daemon: relays show as none)."""
    async with TestClient(TestServer(dashboard_api(pg_store).app())) as c:
        yield c


async def set_aside(store: PostgresStore, output: str, count: int) -> list[int]:
    return await seed(store, output, count, "PRECONDITION_FAILED - <refused> & why")


def test_output_rows_join_the_backlog_with_every_instance_s_relays() -> None:
    workers = [
        {
            "id": "a",
            "state": {
                "outputs": {"billing": {"state": "down", "sent": 3, "last_error": "refused"}}
            },
        },
        {"id": "b", "state": {"outputs": {"billing": {"state": "up", "sent": 4}}}},
        {"id": "c", "state": "not a mapping"},
    ]
    backlog = {"billing": OutboxBacklog(5, 12.0, 1), "gone": OutboxBacklog(2, 0.0, 2)}
    rows = {r["name"]: r for r in output_rows(backlog, workers)}
    assert rows["billing"] == {
        "name": "billing",
        "pending": 5,
        "oldest": 12.0,
        "set_aside": 1,
        "relays": 2,
        "state": "up",  # one instance's relay is up: the output is served
        "sent": 7,
        "last_error": "refused",
    }
    # Rows of an output no instance runs any more (renamed, removed): said so.
    assert (rows["gone"]["state"], rows["gone"]["relays"]) == ("no relay", 0)


async def test_the_overview_and_the_output_page_show_what_is_set_aside(
    client: Client, pg_store: PostgresStore
) -> None:
    ids = await set_aside(pg_store, "billing", 2)
    await sign_in(client, READER)
    async with client.get("/ui/") as r:
        page = await r.text()
    section = page[page.index('id="outputs"') : page.index('id="instances"')]
    assert 'href="/ui/outputs/billing"' in section and "no relay" in section
    async with client.get("/ui/outputs/billing") as r:
        assert r.status == 200
        page = await r.text()
    table = page[page.index('id="set-aside"') :]
    assert all(f">{i}<" in table for i in ids)
    assert "PRECONDITION_FAILED - &lt;refused&gt; &amp; why" in table  # escaped
    assert "resend-all" not in page and "Send again" not in page  # a reader has no buttons


async def test_admin_sends_one_again_and_discards_the_rest_once_confirmed(
    client: Client, pg_store: PostgresStore
) -> None:
    ids = await set_aside(pg_store, "billing", 3)
    other = await set_aside(pg_store, "crm", 1)
    csrf = await sign_in(client, ADMIN)
    base = "/ui/outputs/billing"
    async with client.post(f"{base}/resend", data={"id": str(ids[0])}) as r:
        assert r.status == 403  # no CSRF token
    async with client.post(
        f"{base}/resend", data={"csrf": csrf, "id": str(ids[0])}, allow_redirects=False
    ) as r:
        assert (r.status, r.headers["Location"]) == (303, base)
    async with client.post(f"{base}/discard", data={"csrf": csrf}) as r:
        assert r.status == 400 and "tick the box" in await r.text()
    async with client.post(f"{base}/resend", data={"csrf": csrf, "id": "1; drop"}) as r:
        assert r.status == 400
    async with client.post(f"{base}/discard", data={"csrf": csrf, "confirm": "yes"}) as r:
        assert r.status == 200  # the redirect followed: the page, nothing set aside now
        assert "No message of this output is set aside" in await r.text()
    assert [m.id for m in await pg_store.set_aside_messages(None, 10)] == other
    assert (await pg_store.outbox_pending())["billing"] == (1, pytest.approx(0, abs=60), 0)
    audit = [
        (a.action, a.target, a.count, a.actor)
        for a in await pg_store.list_audit()
        if a.action.startswith("outbox")
    ]
    assert [a[:3] for a in audit] == [
        ("outbox_discard", "billing", 2),
        ("outbox_resend", "billing", 1),
    ]
    assert all(a[3].startswith("admin@") for a in audit), audit  # the session that acted


async def test_a_reader_cannot_act(client: Client, pg_store: PostgresStore) -> None:
    await set_aside(pg_store, "billing", 1)
    csrf = await sign_in(client, READER)
    async with client.post("/ui/outputs/billing/resend", data={"csrf": csrf}) as r:
        assert r.status == 403 and "read-only" in await r.text()
    assert (await pg_store.outbox_pending())["billing"].set_aside == 1


async def test_hostile_names_and_ids_are_refused_not_crashed_on(
    client: Client, pg_store: PostgresStore
) -> None:
    csrf = await sign_in(client, ADMIN)
    async with client.get("/ui/outputs/a%00b") as r:
        assert r.status == 400 and "NUL" in await r.text()
    for path in ("/ui/outputs/%ED%A0%80", "/ui/outputs/" + "x" * 300):
        async with client.get(path) as r:
            # Refused (a NUL, too long), or an empty page for a name the URL decoding turned
            # into valid text: never a crash.
            assert r.status in (200, 400), (path, r.status)
    for given in ("99999999999999999999", "-1", "1e3", "x"):
        async with client.post("/ui/outputs/billing/resend", data={"csrf": csrf, "id": given}) as r:
            assert r.status == 400, given
    assert [a for a in await pg_store.list_audit() if a.action.startswith("outbox")] == []
