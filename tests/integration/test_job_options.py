"""Per-job options through every way in (timeout, concurrency_key, unique) and their effect:
the job's own timeout wins over the queue's, and a ``unique: active`` dedup key is let go
when its job finishes, while ``forever`` keys (broker redelivery dedup) stay taken."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import psycopg
import pytest

from jobwire import pg_sync
from jobwire.api_models import BadInput
from jobwire.client import Client, SyncClient
from jobwire.config import Config
from jobwire.models import JobSpec, JobStatus, Outcome
from jobwire.routing import Router
from jobwire.store.base import ClaimRequest
from jobwire.store.memory import MemoryStore
from jobwire.store.postgres import PostgresStore
from tests.support.daemon import jobwire
from tests.support.fake_adapter import FakeAdapter
from tests.support.inprocess import running_daemon
from tests.support.pools import fast_config, make_pool
from tests.support.rows import fetch
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(90)
TOKEN = "s3cret-token-for-job-options-01"


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """An application's own asyncpg connection (its search_path is not jobwire's)."""
    c = await asyncpg.connect(database_url)
    yield c
    await c.close()


async def row_of(url: str, job_id: int) -> asyncpg.Record:
    (row,) = await fetch(url, "SELECT * FROM jobwire.jobs WHERE id = $1", job_id)
    return row


async def options_of(url: str, job_id: int) -> tuple[Any, ...]:
    row = await row_of(url, job_id)
    return (row["timeout"], row["concurrency_key"], row["unique_mode"])


async def job_count(url: str) -> int:
    (row,) = await fetch(url, "SELECT count(*) AS n FROM jobwire.jobs")
    return int(row["n"])


async def finish(url: str, job_id: int, status: str = "succeeded") -> None:
    """End a job as an operator's UPDATE would (the release must not depend on who ends it)."""
    c = await asyncpg.connect(url)
    try:
        await c.execute(
            "UPDATE jobwire.jobs SET status = $2, finished_at = now() WHERE id = $1", job_id, status
        )
    finally:
        await c.close()


# The SQL function.


async def test_sql_function_defaults_and_each_option(
    database_url: str, conn: asyncpg.Connection
) -> None:
    plain = await conn.fetchval("""SELECT jobwire.enqueue('email', '{"to": "a@example.org"}')""")
    assert await options_of(database_url, plain) == (None, None, "forever")
    timed = await conn.fetchval("SELECT jobwire.enqueue('email', '{}', timeout => '90 seconds')")
    keyed = await conn.fetchval("SELECT jobwire.enqueue('email', '{}', concurrency_key => 't1')")
    active = await conn.fetchval(
        "SELECT jobwire.enqueue('email', '{}', dedup_key => 'k', unique_mode => 'active')"
    )
    assert await options_of(database_url, timed) == (90.0, None, "forever")
    assert await options_of(database_url, keyed) == (None, "t1", "forever")
    assert await options_of(database_url, active) == (None, None, "active")
    # Refused with a clear error, and nothing inserted.
    with pytest.raises(asyncpg.InvalidParameterValueError, match="timeout must be positive"):
        await conn.fetchval("SELECT jobwire.enqueue('email', '{}', timeout => '0 seconds')")
    with pytest.raises(asyncpg.InvalidParameterValueError, match="forever or active"):
        await conn.fetchval("SELECT jobwire.enqueue('email', '{}', unique_mode => 'once')")
    assert await job_count(database_url) == 4


async def test_sql_function_options_follow_the_transaction(
    database_url: str, conn: asyncpg.Connection
) -> None:
    sql = """SELECT jobwire.enqueue('email', '{}', timeout => '2 minutes',
                                    concurrency_key => 'tenant-7', dedup_key => 'once-7',
                                    unique_mode => 'active')"""
    with pytest.raises(RuntimeError):
        async with conn.transaction():
            await conn.fetchval(sql)
            raise RuntimeError("rolled back")
    assert await job_count(database_url) == 0
    async with conn.transaction():
        job_id = await conn.fetchval(sql)
        assert await conn.fetchval(sql) == job_id  # the key is held while the job waits
    assert await options_of(database_url, job_id) == (120.0, "tenant-7", "active")


# Client on the caller's connection, the Client's own pool, SyncClient's arguments, psycopg.


async def test_client_carries_the_options_every_way(
    database_url: str, conn: asyncpg.Connection
) -> None:
    client = Client(schema="jobwire")
    with pytest.raises(RuntimeError):
        async with conn.transaction():
            await client.enqueue("echo", timeout=5, concurrency_key="a", conn=conn)
            raise RuntimeError("rolled back")
    assert await job_count(database_url) == 0
    async with conn.transaction():
        one = await client.enqueue(
            "echo",
            {},
            timeout="1m",
            concurrency_key="a",
            dedup_key="c1",
            unique="active",
            conn=conn,
        )
        batch = await client.enqueue_many(
            [
                JobSpec("echo", timeout=2.5, concurrency_key="b"),
                JobSpec("echo", dedup_key="c2", unique="active"),
                JobSpec("echo"),
            ],
            conn=conn,
        )
    assert await options_of(database_url, one) == (60.0, "a", "active")
    assert None not in batch
    assert [await options_of(database_url, i) for i in batch if i is not None] == [
        (2.5, "b", "forever"),
        (None, None, "active"),
        (None, None, "forever"),
    ]
    async with Client(database_url) as pooled:
        by_pool = await pooled.enqueue("echo", timeout=0.25, concurrency_key="p")
        (by_pool_batch,) = await pooled.enqueue_many([JobSpec("echo", timeout=7.0)])
        # The same checks as the HTTP API: a clear error naming the field, before any SQL.
        with pytest.raises(BadInput, match="timeout"):
            await pooled.enqueue("echo", timeout=-1)
        with pytest.raises(BadInput, match="unique"):
            await pooled.enqueue("echo", unique="active")  # no dedup_key to let go
        with pytest.raises(BadInput, match="unique"):
            await pooled.enqueue("echo", dedup_key="x", unique="sometimes")
    with SyncClient(database_url) as sync:
        by_sync = await asyncio.to_thread(
            sync.enqueue, "echo", timeout="3s", concurrency_key="s", dedup_key="y", unique="active"
        )
    assert await options_of(database_url, by_sync) == (3.0, "s", "active")
    assert await options_of(database_url, by_pool) == (0.25, "p", "forever")
    assert by_pool_batch is not None
    assert (await options_of(database_url, by_pool_batch))[0] == 7.0


async def test_psycopg_helper_carries_the_options(database_url: str) -> None:
    with psycopg.connect(database_url) as pconn:
        with pytest.raises(RuntimeError), pconn.transaction():
            pg_sync.enqueue(pconn, "echo", timeout="30s", concurrency_key="k")
            raise RuntimeError("rolled back")
        with pconn.transaction():
            job_id = pg_sync.enqueue(
                pconn,
                "echo",
                {},
                timeout="30s",
                concurrency_key="k",
                dedup_key="s1",
                unique="active",
            )
            assert pg_sync.enqueue(pconn, "echo", dedup_key="s1", unique="active") == job_id
            plain = pg_sync.enqueue(pconn, "echo")
        with pytest.raises(BadInput, match="timeout"):
            pg_sync.enqueue(pconn, "echo", timeout="0s")
    assert await options_of(database_url, job_id) == (30.0, "k", "active")
    assert await options_of(database_url, plain) == (None, None, "forever")
    assert await job_count(database_url) == 2


def routed_timeout(route: dict[str, Any]) -> float | None:
    """The timeout of the job one message becomes through an AMQP source with ``route``."""
    config = Config.model_validate(
        {"sources": [{"name": "orders", "type": "amqp", "queue": "q", "route": route}]}
    )
    router = Router(config.sources[0], {"email"}, "property:message_id")
    message = FakeAdapter("orders").message(b"{}", {}, "application/json", {"message_id": "m"})
    routed = router.route_message(message)
    assert routed.invalid is None
    return routed.spec.timeout


def test_a_source_route_sets_the_timeout() -> None:
    assert routed_timeout({"handler": "email", "timeout": "45s"}) == 45.0
    assert routed_timeout({"handler": "email"}) is None
    with pytest.raises(ValueError, match="greater than 0"):
        routed_timeout({"handler": "email", "timeout": 0})


# Unique while active.


async def test_unique_active_key_is_let_go_when_the_job_finishes(
    database_url: str, pg_store: PostgresStore
) -> None:
    async with Client(database_url) as client:
        first = await client.enqueue("echo", {"n": 1}, dedup_key="K", unique="active")
        assert await client.enqueue("echo", {"n": 2}, dedup_key="K", unique="active") == first
        forever = await client.enqueue("echo", {"n": 1}, dedup_key="F")
        # Retrying is still active: the key stays taken.
        await finish(database_url, first, "retrying")
        assert await client.enqueue("echo", dedup_key="K", unique="active") == first
        await finish(database_url, first, "pending")

        pool = make_pool(pg_store)
        await pool.start()
        try:

            async def both_done() -> bool:
                jobs = [await pg_store.get(i) for i in (first, forever)]
                return all(j is not None and j.status == JobStatus.SUCCEEDED for j in jobs)

            await wait_for(both_done, what="the two jobs succeeded")
        finally:
            await pool.stop()

        done = await row_of(database_url, first)
        assert (done["dedup_key"], done["released_key"]) == (None, "K")
        second = await client.enqueue("echo", {"n": 3}, dedup_key="K", unique="active")
        assert second != first
        assert await client.enqueue("echo", dedup_key="K", unique="active") == second
        # forever (the default): finished or not, the old job keeps its key.
        assert await client.enqueue("echo", {"n": 2}, dedup_key="F") == forever
        assert (await row_of(database_url, forever))["dedup_key"] == "F"
    # Nothing lost, nothing doubled: K's two jobs, F's one.
    rows = await fetch(
        database_url,
        "SELECT coalesce(dedup_key, released_key) AS k, count(*) AS n FROM jobwire.jobs "
        "GROUP BY 1 ORDER BY 1",
    )
    assert [(r["k"], r["n"]) for r in rows] == [("F", 1), ("K", 2)]


@pytest.mark.parametrize("status", ["failed", "cancelled"])
async def test_unique_active_key_is_let_go_by_failure_and_cancel(
    database_url: str, conn: asyncpg.Connection, pg_store: PostgresStore, status: str
) -> None:
    sql = "SELECT jobwire.enqueue('echo', '{}', dedup_key => 'X', unique_mode => 'active')"
    first = await conn.fetchval(sql)
    if status == "cancelled":
        assert await pg_store.cancel(first) == "cancelled"  # the admin path
    else:
        await finish(database_url, first, status)
    second = await conn.fetchval(sql)
    assert second != first
    assert (await row_of(database_url, first))["released_key"] == "X"
    assert await pg_store.ids_by_dedup_key(["X"]) == {"X": second}


async def test_reenqueue_racing_with_completion_gets_a_new_job(
    database_url: str, conn: asyncpg.Connection
) -> None:
    sql = "SELECT jobwire.enqueue('echo', '{}', dedup_key => 'R', unique_mode => 'active')"
    first = await conn.fetchval(sql)
    completer = await asyncpg.connect(database_url)
    try:
        tx = completer.transaction()
        await tx.start()
        await completer.execute(
            "UPDATE jobwire.jobs SET status = 'succeeded', finished_at = now() WHERE id = $1",
            first,
        )
        # The re-enqueue meets the key of a row whose completion is not committed: it waits.
        racing = asyncio.create_task(conn.fetchval(sql))

        async def waiting_on_a_lock() -> bool:
            rows = await fetch(
                database_url,
                "SELECT count(*) AS n FROM pg_stat_activity "
                "WHERE wait_event_type = 'Lock' AND query LIKE '%jobwire.enqueue%'",
            )
            return bool(rows[0]["n"])

        await wait_for(waiting_on_a_lock, what="the re-enqueue waiting on the completion")
        assert not racing.done()
        await tx.commit()
        second = await asyncio.wait_for(racing, 10)
    finally:
        await completer.close()
    assert second != first and await job_count(database_url) == 2


@pytest.mark.parametrize("kind", ["memory", "postgres"])
async def test_unique_active_through_the_store_role(
    kind: str, database_url: str, pg_store: PostgresStore
) -> None:
    """The contract both stores keep: claim, complete, and the key is free again."""
    store: Any = MemoryStore() if kind == "memory" else pg_store
    spec = JobSpec("echo", dedup_key="S", unique="active", timeout=3.0)
    (first,) = await store.enqueue_many([spec])
    assert first is not None
    later = JobSpec("echo", dedup_key="S2", concurrency_key="c", delay=3600)
    duplicate, later_id = await store.enqueue_many([spec, later])
    assert duplicate is None and later_id is not None
    (job,) = await store.claim(ClaimRequest({"default": 1}, 1, "w1", 30.0))
    assert (job.id, job.timeout) == (first, 3.0)
    assert await store.enqueue_many([spec]) == [None]  # running still holds it
    done = Outcome(first, job.attempts, JobStatus.SUCCEEDED, 0.01, result_json="null")
    assert await store.complete_many("w1", [done]) == 1
    assert await store.ids_by_dedup_key(["S", "S2"]) == {"S2": later_id}
    (second,) = await store.enqueue_many([spec])
    assert second is not None and second != first
    row = await store.get(first)
    assert row is not None and (row.dedup_key, row.released_key) == (None, "S")
    assert row.unique_mode == "active"
    keyed = await store.get(later_id)
    assert keyed is not None and (keyed.concurrency_key, keyed.unique_mode) == ("c", "forever")


# The per-job timeout, enforced by the executor.


async def test_job_timeout_stops_its_attempt_beside_a_job_without(
    database_url: str, pg_store: PostgresStore
) -> None:
    async with Client(database_url) as client:
        timed = await client.enqueue("sleep", {"seconds": 5}, timeout=0.5, max_attempts=2)
        untimed = await client.enqueue("sleep", {"seconds": 1})
        # The job's own timeout wins over its queue's: 3 s here against the queue's 0.3 s.
        longer = await client.enqueue("sleep", {"seconds": 1}, queue="short", timeout=3)
        by_queue = await client.enqueue("sleep", {"seconds": 5}, queue="short", max_attempts=1)
    config = fast_config(queues={"short": {"timeout": "300ms"}})
    pool = make_pool(pg_store, config=config)
    await pool.start()
    try:

        async def settled() -> bool:
            jobs = [await pg_store.get(i) for i in (timed, untimed, longer, by_queue)]
            return all(
                j is not None and j.status in (JobStatus.SUCCEEDED, JobStatus.FAILED) for j in jobs
            )

        await wait_for(settled, timeout=30, what="the four jobs finished")
    finally:
        await pool.stop()
    statuses = [(await row_of(database_url, i))["status"] for i in (timed, untimed, longer)]
    assert statuses == ["failed", "succeeded", "succeeded"]
    row = await row_of(database_url, timed)
    assert row["last_error"] == "timed out after 0.5s (the job's timeout) (attempt 2 of 2)"
    runs = await fetch(
        database_url,
        "SELECT status, duration, error FROM jobwire.job_runs WHERE job_id = $1 ORDER BY attempt",
        timed,
    )
    # Two attempts, the first retried, each stopped near 0.5 s, not after the 5 s sleep.
    assert [r["status"] for r in runs] == ["retrying", "failed"]
    assert all(0.4 < r["duration"] < 2.0 for r in runs)
    queue_row = await row_of(database_url, by_queue)
    assert queue_row["status"] == "failed"
    assert (
        queue_row["last_error"] == "timed out after 0.3s (queue 'short' timeout) (attempt 1 of 1)"
    )


# The CLI and the HTTP API.


async def test_cli_enqueue_options(database_url: str) -> None:
    url = ("--database-url", database_url)
    out = jobwire(
        "enqueue", "echo", "--timeout", "2m", "--concurrency-key", "t", *url, "-o", "json"
    )
    job_id = json.loads(out.stdout)["id"]
    assert await options_of(database_url, job_id) == (120.0, "t", "forever")
    args = ("enqueue", "echo", "--dedup-key", "u", "--unique", "active", *url)
    first = int(jobwire(*args).stdout)
    assert int(jobwire(*args).stdout) == first
    await finish(database_url, first)
    assert int(jobwire(*args).stdout) != first
    bad = jobwire("enqueue", "echo", "--timeout", "0s", *url, check=False)
    assert bad.returncode == 2 and "--timeout" in bad.stderr
    lone = jobwire("enqueue", "echo", "--unique", "active", *url, check=False)
    assert lone.returncode == 2 and "dedup_key" in lone.stderr


async def test_http_enqueue_options(database_url: str) -> None:
    config = Config.model_validate(
        {
            "database": {"url": database_url},
            "workers": {"poll_interval": "200ms"},
            "http": {"listen": "127.0.0.1:0", "admin_token": TOKEN},
        }
    )
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with running_daemon(config) as daemon, aiohttp.ClientSession() as session:
        assert daemon.http is not None
        url = f"http://127.0.0.1:{daemon.http.port}/api/v1/jobs"

        async def post(body: dict[str, Any]) -> tuple[int, Any]:
            async with session.post(url, json=body, headers=headers) as response:
                return response.status, await response.json()

        body = {
            "handler": "echo",
            "dedup_key": "h",
            "unique": "active",
            "timeout": "5s",
            "concurrency_key": "tenant",
        }
        status, first = await post(body)
        assert status == 201
        assert await options_of(database_url, first["id"]) == (5.0, "tenant", "active")

        async def released() -> bool:
            return (await row_of(database_url, first["id"]))["released_key"] == "h"

        await wait_for(released, what="the job ran and let its key go")
        status, second = await post(body)
        assert (status, second["duplicate"]) == (201, False) and second["id"] != first["id"]
        status, error = await post({"handler": "echo", "timeout": 0})
        assert (status, error["field"]) == (400, "timeout")
        status, error = await post({"handler": "echo", "unique": "active"})
        assert (status, error["field"]) == (400, "unique")


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "0", "-1"])
async def test_the_column_refuses_a_timeout_that_is_not_a_finite_positive_number(
    conn: asyncpg.Connection, bad: str
) -> None:
    # NaN sorts above every number in PostgreSQL, so "timeout > 0" alone let it through,
    # and asyncio.timeout(nan) fires at once: a plain INSERT by another program must fail.
    with pytest.raises(asyncpg.CheckViolationError):
        await conn.execute(
            "INSERT INTO jobwire.jobs (handler, payload, timeout)"
            " VALUES ('x', '{}', $1::text::float8)",
            bad,
        )
    await conn.execute(
        "INSERT INTO jobwire.jobs (handler, payload, timeout) VALUES ('x', '{}', 0.5)"
    )


def test_the_api_refuses_nan_and_infinite_timeouts() -> None:
    from jobwire.api_models import EnqueueRequest

    for bad in (float("nan"), float("inf"), "nan", "inf"):
        with pytest.raises(ValueError):
            EnqueueRequest.model_validate({"handler": "x", "timeout": bad})
