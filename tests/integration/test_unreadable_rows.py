"""Rows PostgreSQL holds and Python's json module refuses to read back.

jsonb keeps an integer of any length (``1e5000`` prints as 5,001 digits, past Python's
4,300) and nesting deeper than Python's recursion limit; an application's own SQL
(``jobwire.enqueue``) can store either. Before, one such row in a claimed batch failed the
read of the whole batch: its other jobs stayed running, their handlers never called, until
their leases ran out, and every list that showed the row answered 500.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from jobwire.config import Config
from tests.support.dashboard import csrf_of
from tests.support.inprocess import running_daemon
from tests.support.rows import fetch, stored_among_good
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(90)
TOKEN = "s3cret-token-for-tests-0123"
GOOD = 20

UNREADABLE = {
    "huge integer": ("""'{"n": 1e5000}'::jsonb""", "4300 digits"),
    "deep nesting": ("""(repeat('[', 5000) || repeat(']', 5000))::jsonb""", "RecursionError"),
}


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    # unsafe: keep the dashboard's session cookie for 127.0.0.1.
    async with aiohttp.ClientSession(
        headers={"Authorization": f"Bearer {TOKEN}"}, cookie_jar=aiohttp.CookieJar(unsafe=True)
    ) as client:
        yield client


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url) as response:
        return response.status, await response.json(content_type=None)


@pytest.mark.parametrize("kind", sorted(UNREADABLE))
async def test_an_unreadable_payload_fails_its_own_job_and_no_other(
    database_url: str, session: aiohttp.ClientSession, kind: str
) -> None:
    payload, reason = UNREADABLE[kind]
    bad = await stored_among_good(database_url, f"SELECT jobwire.enqueue('noop', {payload})", GOOD)
    config = Config.model_validate(
        {
            "database": {"url": database_url},
            "workers": {"poll_interval": "200ms", "lease": "10s"},
            "http": {
                "listen": "127.0.0.1:0",
                "admin_token": TOKEN,
                "dashboard": {"enabled": True},
            },
        }
    )
    async with running_daemon(config) as daemon:

        async def all_finished() -> bool:
            rows = await fetch(
                database_url,
                "SELECT count(*) AS n FROM jobwire.jobs WHERE status IN ('succeeded', 'failed')",
            )
            return int(rows[0]["n"]) == GOOD + 1

        await wait_for(all_finished, timeout=30, what="every job finished")
        rows = await fetch(
            database_url, "SELECT id, status, attempts, last_error FROM jobwire.jobs ORDER BY id"
        )
        statuses = {r["id"]: r["status"] for r in rows}
        assert statuses.pop(bad) == "failed"
        assert set(statuses.values()) == {"succeeded"} and len(statuses) == GOOD
        failed = next(r for r in rows if r["id"] == bad)
        assert failed["attempts"] == 1  # not retried: no attempt could read it
        assert "stored payload cannot be read" in failed["last_error"]
        assert reason in failed["last_error"]

        # The row reads as text in the API and the dashboard, not as a 500.
        assert daemon.http is not None
        url = f"http://127.0.0.1:{daemon.http.port}"
        status, one = await get(session, f"{url}/api/v1/jobs/{bad}")
        assert status == 200 and isinstance(one["payload"], str)
        status, listed = await get(session, f"{url}/api/v1/jobs?status=failed")
        assert status == 200 and [j["id"] for j in listed["jobs"]] == [bad]
        await sign_in(session, url)
        for page in (f"{url}/ui/jobs/{bad}", f"{url}/ui/jobs?status=failed"):
            async with session.get(page) as response:
                assert response.status == 200, page
                assert "cannot be read" in await response.text()


async def sign_in(session: aiohttp.ClientSession, url: str) -> None:
    async with session.get(f"{url}/ui/login") as form:
        csrf = csrf_of(await form.text())
    data = {"csrf": csrf, "token": TOKEN, "next": "/ui/"}
    async with session.post(f"{url}/ui/login", data=data, allow_redirects=False) as response:
        assert response.status == 303, await response.text()
