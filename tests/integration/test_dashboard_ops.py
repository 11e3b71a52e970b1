"""The dashboard's failures page, bulk actions, live events and throughput, on PostgreSQL
(aiohttp's test client), with the fingerprint and the plans of their queries."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from jobwire.dashboard.live import MAX_PER_SESSION
from jobwire.dashboard.rollup import Rollup
from jobwire.models import JobSpec, JobStatus, Outcome
from jobwire.store.base import ClaimRequest
from jobwire.store.fingerprint import error_fingerprint
from jobwire.store.memory import MemoryStore
from jobwire.store.postgres import PostgresStore, server_settings
from jobwire.store.queries import queries
from jobwire.web import HttpApi
from tests.support.dashboard import ADMIN, READER, csrf_of, dashboard_api, sign_in
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(90)
Client = TestClient[Any, Any]

ERRORS = [
    "ValueError: timeout after 3.2s on id 81723",
    "ValueError: timeout after 1.1s on id 9",
    "KeyError: 'customer-17' not in /var/lib/app/cache/x.json",
    'KeyError: "other" not in /tmp/y',
    "RuntimeError: object 0x7f3a9c at 550e8400-e29b-41d4-a716-446655440000 sha deadbeef1234",
    "lease expired: worker host-a:123",
    "",
    "Boom\nTraceback (most recent call last):\n  File x, line 3",
    "tabs\tand   spaces  (attempt 3 of 5)",
]


@pytest.fixture
def api(pg_store: PostgresStore) -> HttpApi:
    return dashboard_api(pg_store)


@pytest.fixture
async def client(api: HttpApi) -> AsyncIterator[Client]:
    async with TestClient(TestServer(api.app())) as c:
        yield c


async def fail_jobs(store: PostgresStore, errors: list[str], queue: str = "default") -> list[int]:
    """Jobs that ran once and failed for good with these errors."""
    ids = await store.enqueue_many([JobSpec("noop", queue=queue, max_attempts=1) for _ in errors])
    claimed = await store.claim(ClaimRequest({queue: len(errors)}, len(errors), "w-test", 30))
    by_id = {j.id: j for j in claimed}
    outcomes = [
        Outcome(i, by_id[i].attempts, JobStatus.FAILED, 0.1, error=e)
        for i, e in zip(ids, errors, strict=True)
        if i is not None
    ]
    assert await store.complete_many("w-test", outcomes) == len(errors)
    return [i for i in ids if i is not None]


def test_the_fingerprint_sets_aside_what_varies() -> None:
    assert error_fingerprint(ERRORS[0]) == error_fingerprint(ERRORS[1])
    assert error_fingerprint(ERRORS[0]) == "ValueError: timeout after <n>s on id <n>"
    assert error_fingerprint(ERRORS[2]) == error_fingerprint(ERRORS[3])
    assert error_fingerprint(ERRORS[4]) == "RuntimeError: object <hex> at <uuid> sha <hex>"
    assert error_fingerprint(None) == error_fingerprint("") == "(no message)"
    assert error_fingerprint(ERRORS[7]) == "Boom"
    assert len(error_fingerprint("x" * 1000)) == 200


async def test_postgresql_computes_the_same_fingerprint_at_failure_time(
    pg_store: PostgresStore, database_url: str
) -> None:
    ids = await fail_jobs(pg_store, ERRORS)
    conn = await asyncpg.connect(database_url, server_settings=server_settings("jobwire"))
    try:
        rows = await conn.fetch("SELECT id, last_error, error_fingerprint FROM jobs ORDER BY id")
    finally:
        await conn.close()
    assert [r["id"] for r in rows] == ids
    for r in rows:
        assert r["error_fingerprint"] == error_fingerprint(r["last_error"]), r["last_error"]


async def test_the_failures_page_groups_and_links_to_each_group(
    client: Client, pg_store: PostgresStore
) -> None:
    await fail_jobs(pg_store, [f"ValueError: timeout after {i}.5s on id {i * 7}" for i in range(5)])
    await fail_jobs(pg_store, ["KeyError: 'a'", "KeyError: 'b'"], queue="long")
    await sign_in(client, READER)
    async with client.get("/ui/failures") as r:
        assert r.status == 200
        page = await r.text()
    assert "ValueError: timeout after &lt;n&gt;s on id &lt;n&gt;" in page
    assert page.index("ValueError") < page.index("KeyError")  # the biggest group first
    assert "Retry…" not in page  # read-only: no actions
    link = "/ui/jobs?status=failed&amp;fingerprint=KeyError%3A+%3Cstr%3E"
    assert link in page
    async with client.get(link.replace("&amp;", "&")) as r:
        listing = await r.text()
    assert listing.count('class="status status-failed"') == 2
    async with client.get("/ui/jobs?status=pending&fingerprint=x") as r:
        assert r.status == 400
    csrf = csrf_of(listing)
    data = {"csrf": csrf, "action": "retry", "fingerprint": "KeyError: <str>"}
    async with client.post("/ui/bulk", data=data) as r:
        assert r.status == 403  # read-only: no bulk action either
    assert (await pg_store.get(1)).status == JobStatus.FAILED  # type: ignore[union-attr]


async def test_a_group_retry_is_frozen_confirmed_chunked_and_audited(
    client: Client, pg_store: PostgresStore
) -> None:
    group = await fail_jobs(pg_store, [f"OSError: disk {i} full" for i in range(3)])
    other = await fail_jobs(pg_store, ["KeyError: 'x'"])
    csrf = await sign_in(client, ADMIN)
    status, page, run = await freeze(
        client, csrf, action="retry", fingerprint="OSError: disk <n> full"
    )
    assert status == 200, page
    assert '<strong id="bulk-count">3</strong>' in page
    # A job of the group that ran and failed again after the freeze is left alone.
    await pg_store.retry_ids([group[0]])
    await fail_jobs_again(pg_store, group[0])
    new = await fail_jobs(pg_store, ["OSError: disk 9 full"])  # joined after the freeze
    async with client.post(f"/ui/bulk/{run}/start", data={"csrf": "wrong"}) as r:
        assert r.status == 403
    async with client.post(f"/ui/bulk/{run}/start", data={"csrf": csrf}) as r:
        assert r.status == 200
        assert "bulk-progress" in await r.text()

    async def finished() -> bool:
        async with client.get(f"/ui/bulk/{run}/progress") as r:
            return 'id="bulk-state">done' in await r.text()

    await wait_for(finished, timeout=10, what="the bulk action")
    statuses = {i: (await pg_store.get(i)).status for i in [*group, *other, *new]}  # type: ignore[union-attr]
    assert statuses == {
        group[0]: JobStatus.FAILED,
        group[1]: JobStatus.PENDING,
        group[2]: JobStatus.PENDING,
        other[0]: JobStatus.FAILED,
        new[0]: JobStatus.FAILED,
    }
    (audit, started, *_) = await pg_store.list_audit()
    assert (audit.action, audit.count) == ("bulk retry", 2)
    assert audit.detail["frozen"] == "3" and "OSError" in (audit.target or "")
    # Written before the first chunk: a crash mid-way still leaves a trace.
    assert (started.action, started.detail, started.target) == (
        "bulk retry started",
        {"frozen": "3"},
        audit.target,
    )


async def freeze(client: Client, csrf: str, **form: str) -> tuple[int, str, str]:
    """POST /ui/bulk: (status, the page it leads to, the run's id or "")."""
    async with client.post("/ui/bulk", data={"csrf": csrf, **form}) as r:
        page = await r.text()
        status = r.status
    run = page.split('action="/ui/bulk/')[1].split("/start")[0] if status == 200 else ""
    return status, page, run


async def test_freezing_is_a_post_with_csrf_and_a_session_keeps_one_frozen_run(
    client: Client, pg_store: PostgresStore
) -> None:
    await fail_jobs(pg_store, ["E: a", "E: b"])
    csrf = await sign_in(client, ADMIN)
    async with client.get("/ui/bulk?action=retry&status=failed") as r:
        assert r.status == 405  # a GET changes nothing
    async with client.post("/ui/bulk", data={"action": "retry", "csrf": "wrong"}) as r:
        assert r.status == 403
    _, _, first = await freeze(client, csrf, action="retry", status="failed")
    _, _, second = await freeze(client, csrf, action="delete", status="failed")
    assert first and second and first != second
    async with client.get(f"/ui/bulk/{first}") as r:
        assert r.status == 404  # replaced by the newer freeze
    async with client.get(f"/ui/bulk/{second}") as r:
        assert r.status == 200


async def fail_jobs_again(store: PostgresStore, job_id: int) -> None:
    (job,) = await store.claim(ClaimRequest({"default": 1}, 1, "w-again", 30))
    assert job.id == job_id
    outcome = Outcome(job_id, job.attempts, JobStatus.FAILED, 0.1, error="OSError: disk 1 full")
    assert await store.complete_many("w-again", [outcome]) == 1


async def test_bulk_by_filter_counts_first_and_deletes_only_what_it_froze(
    client: Client, pg_store: PostgresStore
) -> None:
    failed = await fail_jobs(pg_store, ["E: a", "E: b"], queue="long")
    waiting = await pg_store.enqueue_many([JobSpec("noop", queue="long")])
    csrf = await sign_in(client, ADMIN)
    async with client.get("/ui/jobs?queue=long") as r:
        assert 'id="bulk-bar"' in await r.text()
    status, _, _ = await freeze(client, csrf, action="delete", queue="long", status="pending")
    assert status == 400  # delete acts on finished jobs only
    _, page, run = await freeze(client, csrf, action="delete", queue="long")
    assert '<strong id="bulk-count">2</strong>' in page
    async with client.post(f"/ui/bulk/{run}/start", data={"csrf": csrf}) as r:
        assert r.status == 200

    async def gone() -> bool:
        return all([await pg_store.get(i) is None for i in failed])

    await wait_for(gone, timeout=10, what="the deletes")
    assert await pg_store.get(waiting[0] or 0) is not None
    async with client.get("/ui/bulk/nope") as r:
        assert r.status == 404


async def test_events_stream_a_change_seen_by_the_poll_and_the_poll_ends_with_the_stream(
    client: Client, pg_store: PostgresStore, api: HttpApi, database_url: str
) -> None:
    assert api.dashboard is not None
    hub = api.dashboard.live
    await sign_in(client, READER)
    async with client.get("/ui/events") as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        assert "script-src 'self'" in r.headers["Content-Security-Policy"]
        assert (await r.content.readuntil(b"\n\n")).startswith(b"retry:")
        assert hub.polling
        await wait_for(lambda: hub.polled >= 1, timeout=10, what="the first poll")
        for _ in range(5):
            await pg_store.enqueue_many([JobSpec("noop")])
        event = await asyncio.wait_for(r.content.readuntil(b"\n\n"), 10)
        assert b"event: change" in event
        # Nothing on the jobs' path: no trigger on jobs notifies, no setting is kept alive.
        conn = await asyncpg.connect(database_url, server_settings=server_settings("jobwire"))
        try:
            dashboard_triggers = await conn.fetchval(
                "SELECT count(*) FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid"
                " WHERE t.tgrelid = 'jobs'::regclass AND (t.tgname = 'jobs_changed'"
                " OR p.prosrc LIKE '%jobwire_ui%')"
            )
            assert dashboard_triggers == 0
            assert await conn.fetchval("SELECT count(*) FROM settings WHERE key LIKE 'ui%'") == 0
        finally:
            await conn.close()
    await wait_for(lambda: not hub.polling, timeout=10, what="the poll stopped")


async def test_one_session_opens_at_most_five_streams(client: Client, api: HttpApi) -> None:
    await sign_in(client, READER)
    streams = []
    try:
        for _ in range(MAX_PER_SESSION):
            r = await client.get("/ui/events")
            assert r.status == 200
            streams.append(r)
        async with client.get("/ui/events") as r:
            assert r.status == 429
    finally:
        for r in streams:
            r.close()
    assert api.dashboard is not None
    hub = api.dashboard.live
    await wait_for(lambda: hub.clients == 0, timeout=10, what="the streams closed")
    async with client.get("/ui/events") as r:
        assert r.status == 200  # the slots came back


async def test_open_overviews_share_one_read_per_change(
    client: Client, pg_store: PostgresStore, api: HttpApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = 0
    real_stats = pg_store.stats

    async def counting_stats(*args: Any, **kwargs: Any) -> Any:
        nonlocal reads
        reads += 1
        return await real_stats(*args, **kwargs)

    monkeypatch.setattr(pg_store, "stats", counting_stats)
    await sign_in(client, READER)
    reads = 0
    async with client.get("/ui/events") as r:
        assert r.status == 200
        for _ in range(4):
            async with client.get("/ui/") as page:
                assert page.status == 200
    assert reads == 1
    assert api.dashboard is not None
    hub = api.dashboard.live
    await wait_for(lambda: not hub.polling, timeout=20, what="the stream gone")
    async with client.get("/ui/") as page:
        assert page.status == 200
    assert reads == 2  # no stream open: no version to share by, every overview reads


async def test_each_schema_has_its_own_rollup_leader(pg_store: PostgresStore) -> None:
    first, second = Rollup(pg_store, "jobwire"), Rollup(pg_store, "other")
    try:
        await first.once()
        await second.once()
        assert first._lock is not None and second._lock is not None
    finally:
        await first.stop()
        await second.stop()


async def test_the_rollup_leader_backfills_fingerprints_in_batches(
    pg_store: PostgresStore, database_url: str
) -> None:
    """Failed rows kept from before migration 0010 have none; the leader fills them in."""
    conn = await asyncpg.connect(database_url, server_settings=server_settings("jobwire"))
    try:
        await conn.execute(
            "INSERT INTO jobs (handler, queue, status, finished_at, last_error)"
            " SELECT 'noop', 'q', 'failed', now(), 'E: code ' || i"
            " FROM generate_series(1, 2500) i"
        )
        await conn.execute("UPDATE jobs SET error_fingerprint = NULL")  # as before 0010
        rollup = Rollup(pg_store)
        try:
            assert await rollup.backfill() == 2500
            assert await rollup.backfill() == 0
        finally:
            await rollup.stop()
        left = await conn.fetchval("SELECT count(*) FROM jobs WHERE error_fingerprint IS NULL")
        groups = await conn.fetch("SELECT error_fingerprint, count(*) FROM jobs GROUP BY 1")
    finally:
        await conn.close()
    assert left == 0
    assert [(g[0], g[1]) for g in groups] == [("E: code <n>", 2500)]


async def test_events_need_a_session(client: Client) -> None:
    async with client.get("/ui/events", allow_redirects=False) as r:
        assert r.status == 303


async def test_the_rollup_feeds_the_overview_sparklines(
    client: Client, pg_store: PostgresStore, database_url: str
) -> None:
    conn = await asyncpg.connect(database_url, server_settings=server_settings("jobwire"))
    try:
        await conn.execute(
            "INSERT INTO jobs (handler, queue, status, finished_at)"
            " SELECT 'noop', 'mail', CASE WHEN i % 4 = 0 THEN 'failed' ELSE 'succeeded' END,"
            # Whole minutes 1..30 back: the rollup takes only minutes that ended more than a
            # few seconds ago, and the minute just ended may not be one of them yet.
            " date_trunc('minute', now()) - make_interval(mins => i % 30 + 1) - interval '10 s'"
            " FROM generate_series(1, 300) i"
        )
    finally:
        await conn.close()
    # The dashboard's own rollup leader may have taken these minutes first: either way,
    # once one rollup ran, the next finds nothing new.
    await pg_store.rollup_throughput()
    assert await pg_store.rollup_throughput() == 0  # those minutes are done
    since = datetime.now(UTC) - timedelta(hours=1)
    rows = await pg_store.throughput(since)
    assert sum(n for *_, n in rows) == 300
    memory = MemoryStore()
    assert await memory.rollup_throughput() == 0
    await sign_in(client, READER)
    async with client.get("/ui/") as r:
        page = await r.text()
    assert '<svg class="spark"' in page and "300 finished in the last hour" in page


async def test_the_failures_and_rollup_queries_use_their_indexes(database_url: str) -> None:
    """At 100,000 finished rows (and 2,000 failed), in the generic plan."""
    conn = await asyncpg.connect(database_url, server_settings=server_settings("jobwire"))
    plans: dict[str, Any] = {}
    try:
        await conn.execute(
            "INSERT INTO jobs (handler, queue, status, finished_at, last_error)"
            " SELECT 'noop', 'q' || (i % 3), CASE WHEN i % 50 = 0 THEN 'failed'"
            " ELSE 'succeeded' END, now() - make_interval(secs => i),"
            " 'E: code ' || (i % 7) FROM generate_series(1, 100000) i"
        )
        await conn.execute("VACUUM ANALYZE jobs")
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        q = queries()
        await conn.execute(f"PREPARE g (int) AS {q['dash_failure_groups']}")
        plans["groups"] = await conn.fetchval("EXPLAIN (FORMAT JSON) EXECUTE g (100)")
        await conn.execute(
            f"PREPARE i (text, int, bigint) AS {q['dash_failed_ids_by_fingerprint']}"
        )
        plans["ids"] = await conn.fetchval(
            "EXPLAIN (FORMAT JSON) EXECUTE i ('E: code <n>', 51, NULL)"
        )
        await conn.execute(f"PREPARE r (timestamptz, timestamptz) AS {q['dash_rollup_throughput']}")
        plans["rollup"] = await conn.fetchval(
            "EXPLAIN (FORMAT JSON) EXECUTE r (now() - interval '2 min', now() - interval '1 min')"
        )
        groups = await conn.fetch(q["dash_failure_groups"], 100)
    finally:
        await conn.close()
    expected = {"groups": "jobs_failed_fingerprint", "ids": "jobs_failed_fingerprint"}
    expected["rollup"] = "jobs_finished"
    for name, plan in plans.items():
        nodes = list(_plan_nodes(json.loads(plan)[0]["Plan"]))
        assert not [n for n in nodes if n[0] == "Seq Scan"], (name, nodes)
        assert expected[name] in {i for _, i in nodes}, (name, nodes)
    assert [(g["fingerprint"], g["n"]) for g in groups] == [("E: code <n>", 2000)]


def _plan_nodes(node: dict[str, Any]) -> Iterator[tuple[str, str | None]]:
    yield node["Node Type"], node.get("Index Name")
    for child in node.get("Plans", []):
        yield from _plan_nodes(child)


async def test_the_memory_store_groups_failures_the_same_way() -> None:
    store = MemoryStore()
    ids = await store.enqueue_many([JobSpec("noop", max_attempts=1) for _ in ERRORS[:3]])
    jobs = await store.claim(ClaimRequest({"default": 3}, 3, "w", 30))
    outcomes = [
        Outcome(j.id, j.attempts, JobStatus.FAILED, 0.1, error=e)
        for j, e in zip(jobs, ERRORS[:3], strict=True)
    ]
    await store.complete_many("w", outcomes)
    groups = await store.failure_groups(10)
    assert [(g.fingerprint, g.count) for g in groups] == [
        ("ValueError: timeout after <n>s on id <n>", 2),
        ("KeyError: <str> not in <path>", 1),
    ]
    assert await store.failed_ids(groups[0].fingerprint, 10) == [ids[1], ids[0]]
    later = datetime.now(UTC) + timedelta(seconds=1)
    assert sorted(await store.finished_before([i for i in ids if i], later)) == sorted(
        i for i in ids if i
    )
