"""The pool and store on a real PostgreSQL: wake-ups, two pools, plans, migrations.

What every store must do is in test_store_contract.py, run on this store and the memory one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from jobwire import Client, JobContext, SyncClient
from jobwire.models import Job, JobSpec, JobStatus, Outcome
from jobwire.store.base import AuditEntry, ClaimRequest, ScheduleRow
from jobwire.store.pg_admin import retry_statement
from jobwire.store.postgres import LIST_QUERY_BY_STATUS, PostgresStore, migrate, server_settings
from jobwire.store.queries import migrations, queries
from tests.support.pools import fast_config, make_pool
from tests.support.rows import fetch
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(60)


async def count(store: PostgresStore, status: str) -> int:
    stats = await store.stats()
    return sum(by_status.get(status, 0) for by_status in stats.values())


async def test_pool_runs_retries_and_records_runs(pg_store: PostgresStore) -> None:
    ok, bad = await pg_store.enqueue_many(
        [JobSpec("echo", {"x": 1}), JobSpec("fail", max_attempts=3)]
    )
    pool = make_pool(pg_store)
    await pool.start()

    async def finished() -> bool:
        return await count(pg_store, "succeeded") + await count(pg_store, "failed") == 2

    await wait_for(finished, what="both jobs finished")
    await pool.stop()
    assert ok is not None and bad is not None
    job = await pg_store.get(ok)
    assert job is not None and job.result == {"x": 1} and job.finished_at is not None
    failed = await pg_store.get(bad)
    assert failed is not None and failed.status == JobStatus.FAILED and failed.attempts == 3
    runs = await pg_store.runs(bad)
    assert [(r["attempt"], r["status"]) for r in runs] == [
        (1, "retrying"),
        (2, "retrying"),
        (3, "failed"),
    ]
    assert all(r["duration"] is not None and r["finished_at"] for r in runs)


async def test_two_pools_never_run_one_job_twice(database_url: str) -> None:
    n = 2000
    starts: Counter[int] = Counter()
    active: set[int] = set()
    overlaps: list[int] = []

    async def record(payload: Any, ctx: JobContext) -> None:
        if ctx.job_id in active:
            overlaps.append(ctx.job_id)
        active.add(ctx.job_id)
        starts[ctx.job_id] += 1
        await asyncio.sleep(0.001)
        active.discard(ctx.job_id)

    stores = [await PostgresStore.connect(database_url, min_size=1, max_size=4) for _ in range(2)]
    ids = await stores[0].enqueue_many([JobSpec("record", i) for i in range(n)])
    pools = [
        make_pool(
            s, {"record": record}, fast_config(workers={"concurrency": 16}), worker_id=f"pool-{k}"
        )
        for k, s in enumerate(stores)
    ]
    for pool in pools:
        await pool.start()

    async def all_done() -> bool:
        return await count(stores[0], "succeeded") == n

    await wait_for(all_done, timeout=60, what=f"{n} jobs succeeded")
    for pool in pools:
        await pool.stop()
    assert overlaps == []
    assert set(starts) == set(ids)
    assert max(starts.values()) == 1
    conn = await asyncpg.connect(database_url)
    try:
        per_worker = await conn.fetch(
            "SELECT worker_id, count(*) FROM jobwire.job_runs GROUP BY 1 ORDER BY 1"
        )
        runs = await conn.fetchval("SELECT count(*) FROM jobwire.job_runs")
    finally:
        await conn.close()
    assert runs == n
    assert len(per_worker) == 2  # both pools took part
    for pool, store in zip(pools, stores, strict=True):
        assert pool.counters.succeeded > 0
        await store.close()


async def test_notify_wakes_the_pool_long_before_the_poll(
    database_url: str, pg_store: PostgresStore
) -> None:
    pool = make_pool(pg_store, config=fast_config(workers={"poll_interval": "30s"}))
    await pool.start()
    await asyncio.sleep(0.2)  # let the pool's first (empty) claim pass: only a wake-up helps now
    async with Client(database_url) as client:
        t0 = time.monotonic()
        job_id = await client.enqueue("echo", "hi")

        async def done() -> bool:
            job = await client.get(job_id)
            return job is not None and job.status == JobStatus.SUCCEEDED

        await wait_for(done, timeout=5, interval=0.01, what="job run after NOTIFY")
        via_client = time.monotonic() - t0
    # A plain SQL insert by another program wakes it too (the insert trigger notifies).
    conn = await asyncpg.connect(database_url)
    try:
        t0 = time.monotonic()
        plain_id = await conn.fetchval(
            "INSERT INTO jobwire.jobs (handler, payload) VALUES ('echo', '\"sql\"') RETURNING id"
        )

        async def plain_done() -> bool:
            job = await pg_store.get(plain_id)
            return job is not None and job.status == JobStatus.SUCCEEDED

        await wait_for(plain_done, timeout=5, interval=0.01, what="SQL-inserted job run")
        via_sql = time.monotonic() - t0
    finally:
        await conn.close()
    await pool.stop()
    assert via_client < 5 and via_sql < 5  # the poll interval is 30s


async def test_listen_connection_killed_relistens_and_catches_up(
    database_url: str, pg_store: PostgresStore
) -> None:
    pool = make_pool(pg_store, config=fast_config(workers={"poll_interval": "30s"}))
    await pool.start()
    admin = await asyncpg.connect(database_url)
    try:

        async def listener_pids() -> list[int]:
            rows = await admin.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                " AND query LIKE 'LISTEN%'"
            )
            return [r["pid"] for r in rows]

        (pid,) = await wait_for(listener_pids, what="LISTEN connection")
        await admin.execute("SELECT pg_terminate_backend($1)", pid)
        # Inserted while the listener is gone: found by the catch-up claim after re-LISTEN.
        job_id = await admin.fetchval(
            "INSERT INTO jobwire.jobs (handler) VALUES ('noop') RETURNING id"
        )

        async def done() -> bool:
            job = await pg_store.get(job_id)
            return job is not None and job.status == JobStatus.SUCCEEDED

        await wait_for(done, timeout=10, what="job run after the listener came back")
        new_pids = await wait_for(listener_pids, what="new LISTEN connection")
        assert pid not in new_pids
    finally:
        await admin.close()
        await pool.stop()


async def test_cancel_running_job_reaches_its_worker(pg_store: PostgresStore) -> None:
    (job_id,) = await pg_store.enqueue_many([JobSpec("sleep", {"seconds": 60})])
    assert job_id is not None
    pool = make_pool(pg_store)
    await pool.start()

    async def running() -> bool:
        job = await pg_store.get(job_id)
        return job is not None and job.status == JobStatus.RUNNING

    await wait_for(running, what="job running")
    assert await pg_store.cancel(job_id) == "running"

    async def cancelled() -> bool:
        job = await pg_store.get(job_id)
        return job is not None and job.status == JobStatus.CANCELLED

    await wait_for(cancelled, timeout=5, what="job cancelled")
    await pool.stop()
    assert (await pg_store.retry([job_id])) == [job_id]
    job = await pg_store.get(job_id)
    assert job is not None and job.status == JobStatus.PENDING


async def test_a_batch_of_outcomes_lands_each_on_its_own_job(pg_store: PostgresStore) -> None:
    """Outcomes in any order, of every kind, with one for a job this worker does not hold:
    each row gets its own status, result and error, and its own job_runs row."""
    await pg_store.enqueue_many([JobSpec("noop") for _ in range(300)])
    jobs = await pg_store.claim(ClaimRequest({"default": 300}, 300, "w", lease=30))
    assert len(jobs) == 300
    kinds = [JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.RETRYING, JobStatus.CANCELLED]

    def outcome(job_id: int) -> Outcome:
        ok = kinds[job_id % 4] == JobStatus.SUCCEEDED
        return Outcome(
            job_id,
            1,
            kinds[job_id % 4],
            job_id / 1000,
            result_json=f'{{"job": {job_id}}}' if ok else None,
            error=None if ok else f"error of {job_id}",
            retry_in=60.0,
        )

    outcomes = [outcome(job.id) for job in jobs]
    random.Random(7).shuffle(outcomes)
    outcomes.insert(150, Outcome(10**9, 1, JobStatus.SUCCEEDED, 0.0))  # held by no one
    assert await pg_store.complete_many("w", outcomes) == 300
    for job in jobs:
        row = await pg_store.get(job.id)
        assert row is not None
        kind = kinds[job.id % 4]
        assert row.status == kind
        if kind == JobStatus.SUCCEEDED:
            assert (row.result, row.last_error) == ({"job": job.id}, None)
        else:
            assert (row.result, row.last_error) == (None, f"error of {job.id}")
    runs = await pg_store.runs(jobs[123].id)
    assert [(r["status"], r["duration"]) for r in runs] == [
        (str(kinds[jobs[123].id % 4]), jobs[123].id / 1000)
    ]


async def test_an_outcome_the_server_refuses_is_invalid_data_not_a_crash(
    pg_store: PostgresStore,
) -> None:
    # Past jsonb's size limit the server refused a result with an error the completer did
    # not expect, and its loop crashed on every try, writing no outcome behind it.
    from jobwire.store.base import InvalidJobData

    await pg_store.enqueue_many([JobSpec("noop")])
    (job,) = await pg_store.claim(ClaimRequest({"default": 1}, 1, "w", lease=30))
    # Nested past the server's stack: refused with a program-limit error, as a result past
    # jsonb's 255 MiB is (without building one here).
    deep = "[" * 200_000 + "]" * 200_000
    refused = Outcome(job.id, 1, JobStatus.SUCCEEDED, 0.1, result_json=deep)
    with pytest.raises(InvalidJobData):
        await pg_store.complete_many("w", [refused])


async def test_a_refused_child_job_fails_its_parent_with_the_store_s_reason(
    pg_store: PostgresStore,
) -> None:
    async def parent(payload: Any, ctx: JobContext) -> None:
        await ctx.enqueue("noop", priority=2**40)  # past the column's integer

    (job_id,) = await pg_store.enqueue_many([JobSpec("parent", max_attempts=1)])
    assert job_id is not None
    pool = make_pool(pg_store, {"parent": parent}, fast_config())
    await pool.start()
    try:

        async def failed() -> bool:
            job = await pg_store.get(job_id)
            return job is not None and job.status == JobStatus.FAILED

        await wait_for(failed, what="the parent failed")
    finally:
        await pool.stop()
    job = await pg_store.get(job_id)
    assert job is not None and job.last_error is not None
    assert job.last_error.startswith("the store refused this attempt's outcome")
    assert "int32 range" in job.last_error  # the reason, no longer left out


async def test_a_statement_timeout_set_on_the_database_does_not_reach_jobwire(
    database_url: str,
) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        name = await conn.fetchval("SELECT current_database()")
        await conn.execute(f'ALTER DATABASE "{name}" SET statement_timeout = 1')
    finally:
        await conn.close()
    store = await PostgresStore.connect(database_url, min_size=1, max_size=2)
    try:
        async with store._pool.acquire() as session:
            assert await session.fetchval("SHOW statement_timeout") == "0"
            await session.execute("SELECT pg_sleep(0.05)")  # past the database's 1 ms
    finally:
        await store.close()


async def test_a_row_locked_by_someone_else_holds_up_no_other_lease(
    pg_store: PostgresStore, database_url: str
) -> None:
    # An operator's SELECT ... FOR UPDATE on one running job made the renewal of every
    # job of the worker wait; held past the lease, all of them lost it.
    await pg_store.enqueue_many([JobSpec("noop"), JobSpec("noop")])
    a, b = await pg_store.claim(ClaimRequest({"default": 2}, 2, "w", lease=30))
    operator = await asyncpg.connect(database_url)
    try:
        async with operator.transaction():
            await operator.execute("SELECT id FROM jobwire.jobs WHERE id = $1 FOR UPDATE", a.id)
            async with asyncio.timeout(5):
                renewal = await pg_store.renew_leases("w", 600, [a.id, b.id])
            assert renewal.held == {a.id, b.id} and renewal.locked == {a.id}
        rows = await fetch(
            database_url,
            "SELECT id, lease_until > now() + interval '300 seconds' AS renewed FROM jobwire.jobs",
        )
        assert {r["id"]: r["renewed"] for r in rows} == {a.id: False, b.id: True}
    finally:
        await operator.close()


async def test_a_database_that_refuses_writes_is_unavailable_not_a_crash(
    database_url: str,
) -> None:
    # Read-only (as an operator or a failing disk leaves it): the claim raised the server's
    # error as it was, and the pool's loop crashed with a traceback once a second.
    from jobwire.store.base import StoreUnavailable

    conn = await asyncpg.connect(database_url)
    try:
        name = await conn.fetchval("SELECT current_database()")
        await conn.execute("INSERT INTO jobwire.jobs (handler) VALUES ('noop')")
        await conn.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    finally:
        await conn.close()
    store = await PostgresStore.connect(database_url, min_size=1, max_size=2)
    try:
        with pytest.raises(StoreUnavailable, match="ReadOnlySQLTransaction"):
            await store.claim(ClaimRequest({"default": 1}, 1, "w", lease=30))
    finally:
        await store.close()


def test_sync_client_enqueues_and_reads(database_url: str) -> None:
    with SyncClient(database_url) as client:
        job_id = client.enqueue(
            "echo", {"a": 1}, queue="short", priority=3, delay="1m", dedup_key="k1", max_attempts=7
        )
        assert client.enqueue("echo", {"a": 2}, dedup_key="k1") == job_id
        job = client.get(job_id)
        assert job is not None
        assert (job.queue, job.priority, job.max_attempts, job.payload) == ("short", 3, 7, {"a": 1})
        assert job.run_at.timestamp() > time.time() + 50
        assert client.cancel(job_id) == "cancelled"


async def columns_of(database_url: str, table: str) -> list[str]:
    """The columns of one jobwire table, in order."""
    rows = await fetch(
        database_url,
        "SELECT column_name FROM information_schema.columns"
        f" WHERE table_schema = 'jobwire' AND table_name = '{table}' ORDER BY ordinal_position",
    )
    return [r["column_name"] for r in rows]


async def test_job_model_has_a_field_for_every_column(database_url: str) -> None:
    columns = await columns_of(database_url, "jobs")
    assert set(columns) == {f.name for f in dataclasses.fields(Job)}


async def test_whole_rows_read_past_columns_a_newer_release_added(
    pg_store: PostgresStore, database_url: str
) -> None:
    """A rolling upgrade: a newer release's migration adds columns while this instance runs
    on; its reads of whole rows (Client.get, the API's and the dashboard's lists, the
    schedules) must not fail on every row."""
    (job_id,) = await pg_store.enqueue_many([JobSpec("noop", {"n": 1})])
    assert job_id is not None
    await pg_store.sync_schedules([schedule_row("nightly")])
    await pg_store.record_audit(AuditEntry("ops", "admin", "retry", "jobs", 1))
    for table in ("jobs", "schedules", "audit"):
        await fetch(database_url, f"ALTER TABLE jobwire.{table} ADD COLUMN from_the_future text")
    job = await pg_store.get(job_id)
    assert job is not None and job.payload == {"n": 1}
    assert [j.id for j in await pg_store.list_jobs()] == [job_id]
    assert [s.name for s in await pg_store.list_schedules()] == ["nightly"]
    assert (await pg_store.get_schedule("nightly")) is not None
    assert [a.action for a in await pg_store.list_audit()] == ["retry"]


def schedule_row(name: str) -> dict[str, Any]:
    """A schedule as the scheduler hands sync_schedules: every minute, due in an hour."""
    return {
        "name": name,
        "cron": None,
        "interval_s": 60.0,
        "timezone": "UTC",
        "handler": "noop",
        "payload": {},
        "queue": "default",
        "priority": 0,
        "max_attempts": None,
        "enabled": True,
        "start_at": None,
        "end_at": None,
        "max_runs": None,
        "catch_up": "latest",
        "next_run_at": datetime.now(UTC) + timedelta(hours=1),
    }


async def test_schedule_row_has_a_field_for_every_column_in_order(database_url: str) -> None:
    # list_schedules reads "SELECT *" into ScheduleRow, and the HTTP API shows its fields.
    columns = await columns_of(database_url, "schedules")
    assert columns == [f.name for f in dataclasses.fields(ScheduleRow)]


async def test_a_claimed_job_reads_like_the_row_itself(pg_store: PostgresStore) -> None:
    # claim_jobs returns a column list read by position: every field must land in its place.
    (parent,) = await pg_store.enqueue_many([JobSpec("noop")])
    await pg_store.enqueue_many(
        [
            JobSpec(
                "echo",
                {"n": 1},
                queue="other",
                priority=7,
                max_attempts=4,
                dedup_key="k-1",
                body=b"raw",
                content_type="application/octet-stream",
                headers={"h": "v"},
                source="orders",
                parent_id=parent,
            )
        ]
    )
    (claimed,) = await pg_store.claim(ClaimRequest({"other": 1}, 1, "w1", 30))
    assert claimed == await pg_store.get(claimed.id)


async def test_every_foreign_key_has_an_index_led_by_its_column(database_url: str) -> None:
    """Deleting a referenced row makes PostgreSQL look up its referencing rows; without an
    index led by the referencing column that is a scan of the whole table for every row
    deleted (jobs.parent_id had none: purging 1,000 jobs of 200,000 took 20 s)."""
    unindexed = await fetch(
        database_url,
        """
        SELECT c.conrelid::regclass::text AS tbl, a.attname AS col
        FROM pg_constraint c
        JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
        WHERE c.contype = 'f' AND c.connamespace = 'jobwire'::regnamespace
          AND NOT EXISTS (
              SELECT 1 FROM pg_index i
              WHERE i.indrelid = c.conrelid AND i.indkey[0] = c.conkey[1]
          )
        """,
    )
    assert [(r["tbl"], r["col"]) for r in unindexed] == []


async def test_live_counts_read_the_partial_indexes_not_the_history(
    pg_store: PostgresStore, database_url: str
) -> None:
    """Metrics count live jobs at every refresh of every instance: with a long history the
    statement must read jobs_ready and jobs_running, never the whole table (the full count
    the metrics read before cost about 150 ms per million finished rows)."""
    conn = await asyncpg.connect(database_url, server_settings=server_settings("jobwire"))
    try:
        await conn.execute(
            "INSERT INTO jobs (handler, queue, status, finished_at)"
            " SELECT 'noop', 'default', 'succeeded', now() FROM generate_series(1, 50000)"
        )
        await pg_store.enqueue_many([JobSpec("noop") for _ in range(3)])
        await pg_store.enqueue_many([JobSpec("noop", queue="mail")])
        await pg_store.claim(ClaimRequest({"default": 2}, 2, "w", 30))
        await conn.execute("ANALYZE jobs")
        plan = await conn.fetchval(
            "EXPLAIN (FORMAT JSON) " + queries()["count_live_by_queue_and_status"]
        )
    finally:
        await conn.close()
    nodes = list(_plan_nodes(json.loads(plan)[0]["Plan"]))
    assert not [n for n in nodes if n[0] == "Seq Scan"], nodes
    assert {"jobs_ready", "jobs_running"} <= {index for _, index in nodes}, nodes
    assert await pg_store.stats(finished=False) == {
        "default": {"pending": 1, "running": 2},
        "mail": {"pending": 1},
    }
    full = await pg_store.stats()
    assert full["default"] == {"pending": 1, "running": 2, "succeeded": 50000}


async def test_purge_reads_the_finished_index_in_order_whatever_the_statistics(
    pg_store: PostgresStore, database_url: str
) -> None:
    """Left to its statistics the planner scanned the whole table for the purge's last batch
    (expecting many old rows) or fetched and sorted every old row (expecting few): either
    way the cost grew with the history. In order on jobs_finished it stops at the batch."""
    conn = await asyncpg.connect(database_url, server_settings=server_settings("jobwire"))
    try:
        await conn.execute(
            "INSERT INTO jobs (handler, status, finished_at)"
            " SELECT 'noop', 'succeeded', now() - random() * interval '30 days'"
            " FROM generate_series(1, 50000)"
        )
        plans = []
        for analyse in (False, True):
            if analyse:
                await conn.execute("ANALYZE jobs")
            # Few rows old enough, every row old enough; a run's first batch, and one on.
            on = datetime.now(UTC) - timedelta(days=20)
            for days, since in itertools.product((29, 0), (None, on)):
                async with conn.transaction():
                    await conn.execute(queries()["purge_plan"])
                    plans.append(
                        await conn.fetchval(
                            "EXPLAIN (FORMAT JSON) " + queries()["purge_finished"],
                            days * 86400.0,
                            1000,
                            since,
                        )
                    )
    finally:
        await conn.close()
    for plan in plans:
        nodes = list(_plan_nodes(json.loads(plan)[0]["Plan"]))
        assert ("Index Scan", "jobs_finished") in nodes, nodes  # in order, stops early
        assert not [n for n in nodes if n[0] in ("Seq Scan", "Sort")], nodes


def _plan_nodes(node: dict[str, Any]) -> Iterator[tuple[str, str | None]]:
    """(node type, index name) of a JSON plan node and all below it."""
    yield node["Node Type"], node.get("Index Name")
    for child in node.get("Plans", []):
        yield from _plan_nodes(child)


async def test_purge_takes_the_oldest_finished_jobs_first(
    pg_store: PostgresStore, database_url: str
) -> None:
    ids = await pg_store.enqueue_many([JobSpec("noop") for _ in range(4)])
    conn = await asyncpg.connect(database_url, server_settings=server_settings("jobwire"))
    try:
        # Physical order and id order both disagree with the finish times.
        for job_id, days in zip(ids, (3, 9, 5, 1), strict=True):
            await conn.execute(
                "UPDATE jobs SET status = 'succeeded',"
                " finished_at = now() - make_interval(days => $2) WHERE id = $1",
                job_id,
                days,
            )
    finally:
        await conn.close()
    assert await pg_store.purge_finished(2 * 86400.0, 2) == 2
    left = {job_id for job_id in ids if await pg_store.get(job_id) is not None}
    assert left == {ids[0], ids[3]}  # 9 and 5 days went first; 3 is old but waits its turn
    assert await pg_store.purge_finished(2 * 86400.0, 2) == 1
    assert await pg_store.get(ids[3]) is not None  # 1 day: not old enough


# Migration 0004's indexes as docs/operations/upgrading.md tells operators to build them.
HISTORY_INDEXES = {
    "jobs_finished": "ON jobwire.jobs (finished_at) WHERE finished_at IS NOT NULL",
    "jobs_failed": "ON jobwire.jobs (id) WHERE status IN ('failed', 'cancelled')",
}


@contextlib.asynccontextmanager
async def installed_before_0004(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the database as an install from before migration 0004 left it."""
    conn = await asyncpg.connect(database_url, server_settings=server_settings("jobwire"))
    try:
        for name in HISTORY_INDEXES:
            await conn.execute(f"DROP INDEX {name}")
        await conn.execute("DELETE FROM schema_migrations WHERE version = 4")
        yield conn
    finally:
        await conn.close()


async def test_history_indexes_built_beforehand_are_taken_by_the_migration(
    database_url: str,
) -> None:
    """The upgrading page (docs/) tells operators of large tables to build migration 0004's indexes
    concurrently before upgrading; the migration must then apply cleanly and leave them."""
    async with installed_before_0004(database_url) as conn:
        for name, definition in HISTORY_INDEXES.items():
            await conn.execute(f"CREATE INDEX CONCURRENTLY {name} {definition}")
        assert await migrate(database_url, "jobwire") == ["0004_history_indexes"]
        indexes = await conn.fetch(
            "SELECT indexname FROM pg_indexes WHERE schemaname = 'jobwire'"
            " AND (indexdef LIKE '%(finished_at)%' OR indexdef LIKE '%''failed''%')"
            # The dashboard's failures index (0010) is partial on failed rows too.
            " AND indexdef NOT LIKE '%error_fingerprint%'"
        )
    assert sorted(r["indexname"] for r in indexes) == sorted(HISTORY_INDEXES)


async def test_a_failed_concurrent_build_of_a_history_index_is_replaced(
    database_url: str,
) -> None:
    """A concurrent build that fails leaves an invalid index of that name, never used by
    the planner; IF NOT EXISTS alone would keep it and the purge would read the table."""
    async with installed_before_0004(database_url) as conn:
        await conn.execute(
            "INSERT INTO jobs (handler, status, finished_at)"
            " SELECT 'noop', 'succeeded', '2026-01-01' FROM generate_series(1, 2)"
        )
        # Two rows alike make a unique build fail after its catalog entry exists: invalid.
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(
                f"CREATE UNIQUE INDEX CONCURRENTLY jobs_finished {HISTORY_INDEXES['jobs_finished']}"
            )
        valid = "SELECT indisvalid FROM pg_index WHERE indexrelid = 'jobs_finished'::regclass"
        assert await conn.fetchval(valid) is False
        assert await migrate(database_url, "jobwire") == ["0004_history_indexes"]
        assert await conn.fetchval(valid) is True
        definition = await conn.fetchval("SELECT pg_get_indexdef('jobs_finished'::regclass)")
    assert "UNIQUE" not in definition and "(finished_at)" in definition


async def test_listing_by_status_reads_each_status_index_even_in_a_generic_plan(
    pg_store: PostgresStore, database_url: str
) -> None:
    """Listing failed (or pending, or running) jobs walked the whole history back by id when
    they were few or old. Each such listing names its index's statuses as literals, so even
    the generic plan a prepared statement settles on reads that index."""
    conn = await asyncpg.connect(database_url, server_settings=server_settings("jobwire"))
    plans = {}
    try:
        await conn.execute(
            "INSERT INTO jobs (handler, status, finished_at)"
            " SELECT 'noop', 'succeeded', now() FROM generate_series(1, 50000)"
        )
        await conn.execute("ANALYZE jobs")
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        for status, index in [
            ("failed", "jobs_failed"),
            ("cancelled", "jobs_failed"),
            ("pending", "jobs_ready"),
            ("retrying", "jobs_ready"),
            ("running", "jobs_running"),
        ]:
            name = LIST_QUERY_BY_STATUS[status]
            await conn.execute(
                f"PREPARE {name}_{status} (text, text, int, bigint) AS {queries()[name]}"
            )
            plans[status, index] = await conn.fetchval(
                f"EXPLAIN (FORMAT JSON) EXECUTE {name}_{status} ('{status}', NULL, 50, NULL)"
            )
    finally:
        await conn.close()
    for (status, index), plan in plans.items():
        nodes = list(_plan_nodes(json.loads(plan)[0]["Plan"]))
        assert any(name == index for _, name in nodes), (status, nodes)
        assert not [n for n in nodes if n[0] == "Seq Scan"], (status, nodes)


async def test_migrate_builds_a_new_schema_once(database_url: str) -> None:
    """The schema name goes into DDL as a quoted identifier (DDL takes no parameters)."""
    expected = [f"{v:04d}_{name}" for v, name, _ in migrations()]
    assert await migrate(database_url, "jobwire_other") == expected
    assert await migrate(database_url, "jobwire_other") == []
    store = await PostgresStore.connect(database_url, "jobwire_other", min_size=1, max_size=1)
    try:
        assert await store.enqueue_many([JobSpec("noop")]) == [1]
    finally:
        await store.close()


async def test_oldest_ready_reads_jobs_ready_not_the_history(
    pg_store: PostgresStore, database_url: str
) -> None:
    """Metrics read each queue's oldest ready job at every refresh of every instance: with a
    long history the statement must read jobs_ready's live rows per queue, never the whole
    table, in the generic plan a prepared statement settles on as well."""
    conn = await asyncpg.connect(database_url, server_settings=server_settings("jobwire"))
    plans = []
    try:
        await conn.execute(
            "INSERT INTO jobs (handler, queue, status, finished_at)"
            " SELECT 'noop', 'default', 'succeeded', now() FROM generate_series(1, 200000)"
        )
        # A few thousand live ones: ready for a while, ready now, and not due yet.
        await conn.execute(
            "INSERT INTO jobs (handler, queue, run_at, created_at)"
            " SELECT 'noop', q, now() - make_interval(secs => i % 100),"
            " now() - make_interval(secs => i % 100)"
            " FROM generate_series(1, 3000) i, unnest(ARRAY['default', 'mail']) q"
        )
        # Backdated by an application (run_at years before its insert): ready, not late.
        await conn.execute(
            "INSERT INTO jobs (handler, queue, run_at)"
            " VALUES ('noop', 'backdated', '-infinity'), ('noop', 'backdated', '2001-01-01')"
        )
        await conn.execute(
            "INSERT INTO jobs (handler, queue, run_at)"
            " SELECT 'noop', 'default', now() + interval '1 hour' FROM generate_series(1, 500)"
        )
        await conn.execute("ANALYZE jobs")
        statement = queries()["oldest_ready"]
        plans.append(
            await conn.fetchval("EXPLAIN (FORMAT JSON) " + statement, ["default", "mail", "idle"])
        )
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        await conn.execute(f"PREPARE oldest (text[]) AS {statement}")
        plans.append(
            await conn.fetchval("EXPLAIN (FORMAT JSON) EXECUTE oldest ('{default,mail,idle}')")
        )
    finally:
        await conn.close()
    for plan in plans:
        nodes = list(_plan_nodes(json.loads(plan)[0]["Plan"]))
        assert not [n for n in nodes if n[0] == "Seq Scan"], nodes
        assert "jobs_ready" in {index for _, index in nodes}, nodes
    ages = await pg_store.oldest_ready(["default", "mail", "idle", "backdated"])
    assert 99 <= ages["default"] < 110 and 99 <= ages["mail"] < 110, ages
    assert ages["idle"] == 0.0 and ages["backdated"] < 60, ages
    # The queues metrics fold into "_other": every queue but the named ones.
    assert 99 <= await pg_store.oldest_ready_elsewhere(["default"]) < 110
    assert await pg_store.oldest_ready_elsewhere(["default", "mail"]) < 60


async def test_retrying_one_job_reads_it_alone_not_every_failed_job(database_url: str) -> None:
    """The dashboard's and the API's retry of one job: in the generic plan a prepared
    statement settles on after five runs, the statement must look the job up by id, not
    read every failed job kept through jobs_failed (a single retry then cost more the more
    failed jobs were kept)."""
    conn = await asyncpg.connect(database_url, server_settings=server_settings("jobwire"))
    try:
        await conn.execute(
            "INSERT INTO jobs (handler, status, finished_at, last_error)"
            " SELECT 'noop', 'failed', now(), 'boom' FROM generate_series(1, 5000)"
        )
        await conn.execute("ANALYZE jobs")
        job_id = await conn.fetchval("SELECT min(id) FROM jobs")
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        name, args = retry_statement([job_id], None, 5)
        assert args == ([job_id], 5, True)
        await conn.execute(f"PREPARE one_retry (bigint[], int, bool) AS {queries()[name]}")
        plan = await conn.fetchval(
            f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE one_retry (ARRAY[{job_id}]::bigint[], 5, true)"
        )
    finally:
        await conn.close()
    root = json.loads(plan)[0]["Plan"]
    assert root["Actual Rows"] == 1  # the job was retried
    assert _rows_read(root) == 1, plan  # its row, no other (the old statement read 5,000)


def _rows_read(node: dict[str, Any]) -> int:
    """Rows the scans of an EXPLAIN ANALYZE plan read: returned and filtered out."""
    own = 0
    if "Scan" in node["Node Type"]:
        own = node["Actual Rows"] * node["Actual Loops"] + node.get("Rows Removed by Filter", 0)
    return own + sum(_rows_read(child) for child in node.get("Plans", []))
