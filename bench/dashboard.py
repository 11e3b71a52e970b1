"""What each dashboard page costs beside a long history: server time per page at N jobs.

Fills a fresh table as ``bench/history.py`` does (N finished jobs over 30 days, one in
every ``--failed-every`` failed, given errors of a few kinds so the failures page has
groups), fills the throughput rollup for the last hour, then times every page through
aiohttp's test client in this process (signed in as admin; best of five, so a cold cache
does not count) and prints a table. The target is under 100 ms a page.

    .venv/bin/python bench/dashboard.py --rows 1000000
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import asyncpg
from aiohttp.test_utils import TestClient, TestServer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script, too

from bench.common import fill_month_of_history, fresh_database, run
from jobwire.config import HttpConfig
from jobwire.metrics import Metrics
from jobwire.store.postgres import PostgresStore, migrate
from jobwire.web import HttpApi

TOKEN = "bench-admin-token"
TARGET_MS = 100.0
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')
# Failed jobs get one of these (numbers vary per row): a few groups, as in real life.
ERRORS = [
    "'TimeoutError: timeout after ' || (g % 97) || '.' || (g % 10) || 's on id ' || g",
    "'KeyError: ''customer-' || g || ''''",
    "'ConnectionError: connection to 10.0.' || (g % 255) || '.7:5432 refused'",
    "'ValueError: bad row ' || g || ' in /var/data/import-' || (g % 31) || '.csv'",
    "'lease expired: worker host-' || (g % 5)",
]


async def fill(url: str, rows: int, failed_every: int) -> None:
    """The history, errors on its failed jobs, a rollup hour, and statistics."""
    await fill_month_of_history(url, rows, failed_every)
    conn = await asyncpg.connect(url, server_settings={"search_path": "jobwire"})
    try:
        cases = " ".join(f"WHEN {i} THEN {e}" for i, e in enumerate(ERRORS))
        # Through the trigger, as a failure writes it: the fingerprint is computed then.
        await conn.execute(
            "UPDATE jobs SET last_error = CASE (g / 7 % $1) "
            + cases
            + " END, queue = CASE WHEN g % 3 = 0 THEN 'long' ELSE 'default' END"
            " FROM (SELECT id, id AS g FROM jobs WHERE status = 'failed') f"
            " WHERE jobs.id = f.id",
            len(ERRORS),
        )
        await conn.execute(
            "INSERT INTO throughput_minutes (minute, queue, status, n)"
            " SELECT date_trunc('minute', now()) - make_interval(mins => m), q, s,"
            " (50 + 40 * sin(m / 6.0))::int * CASE s WHEN 'failed' THEN 1 ELSE 20 END"
            " FROM generate_series(1, 60) m, unnest(ARRAY['default', 'long', 'mail']) q,"
            " unnest(ARRAY['succeeded', 'failed']) s"
        )
        await conn.execute("VACUUM ANALYZE jobs")
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


async def sign_in(client: TestClient[Any, Any]) -> None:
    """An admin session in the client's cookie jar."""
    async with client.get("/ui/login") as form:
        found = _CSRF.search(await form.text())
        assert found
    data = {"csrf": found.group(1), "token": TOKEN, "next": "/ui/"}
    async with client.post("/ui/login", data=data, allow_redirects=False) as response:
        assert response.status == 303, await response.text()


async def timed(
    client: TestClient[Any, Any], path: str, times: int = 5, csrf: str = ""
) -> tuple[float, int]:
    """The fastest of ``times`` GETs of ``path`` (``POST /x?form``: a form POST), in ms, and
    its status."""
    best, status = float("inf"), 0
    post = path.startswith("POST ")
    target, _, form = path.removeprefix("POST ").partition("?")
    for _ in range(times):
        t0 = time.perf_counter()
        sent = (
            client.post(target, data={"csrf": csrf, **dict(parse_qsl(form))})
            if post
            else client.get(path)
        )
        async with sent as response:
            await response.read()
            status = response.status
        best = min(best, time.perf_counter() - t0)
    return best * 1e3, status


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--failed-every", type=int, default=50)
    args = parser.parse_args()
    async with fresh_database() as url:
        await migrate(url, "jobwire")
        t0 = time.perf_counter()
        await fill(url, args.rows, args.failed_every)
        print(f"filled {args.rows:,} jobs in {time.perf_counter() - t0:.0f} s")
        store = await PostgresStore.connect(url, min_size=1, max_size=4)
        config = HttpConfig.model_validate(
            {"listen": "127.0.0.1:0", "admin_token": TOKEN, "dashboard": {"enabled": True}}
        )
        api = HttpApi(
            config,
            store,
            Metrics(store, lambda: {}, lambda: {}),
            lambda: {},
            lambda: None,
            allowed_handlers=frozenset({"noop"}),
        )
        try:
            async with TestClient(TestServer(api.app())) as client:
                await sign_in(client)
                async with client.get("/ui/") as overview:
                    found = _CSRF.search(await overview.text())
                csrf = found.group(1) if found else ""
                groups = await store.failure_groups(10)
                failed = await store.list_jobs("failed", limit=1)
                biggest = groups[0].fingerprint if groups else "none"
                pages = [
                    "/ui/",
                    "/ui/jobs",
                    "/ui/jobs?status=failed",
                    "/ui/jobs?status=failed&queue=long&handler=noop",
                    "/ui/jobs?status=succeeded&queue=default",
                    f"/ui/jobs/{failed[0].id if failed else 1}",
                    "/ui/failures",
                    "/ui/jobs?" + _query(status="failed", fingerprint=biggest),
                    "POST /ui/bulk?" + _query(action="retry", fingerprint=biggest),
                    "POST /ui/bulk?" + _query(action="retry", status="failed", queue="long"),
                    "/ui/audit",
                    "/ui/schedules",
                ]
                print(f"{'page':<64} {'ms':>8}  status")
                for path in pages:
                    ms, status = await timed(client, path, csrf=csrf)
                    flag = "" if ms < TARGET_MS else "  over target"
                    print(f"{path[:64]:<64} {ms:8.1f}  {status}{flag}")
                print(f"(biggest failure group: {groups[0].count:,} jobs)" if groups else "")
        finally:
            await store.close()


def _query(**params: str) -> str:
    return urlencode(params)


if __name__ == "__main__":
    run(main())
