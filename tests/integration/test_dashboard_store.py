"""The store's queries behind the dashboard: filters, capped counts, the audit, their plans.

The contract part runs on both stores, as tests/integration/test_store_contract.py does.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest

from jobwire.models import JobSpec
from jobwire.store.base import AuditEntry, Store
from jobwire.store.memory import MemoryStore
from jobwire.store.pg_admin import COUNT_QUERY_BY_STATUS, FIND_QUERY_BY_STATUS
from jobwire.store.postgres import PostgresStore, server_settings
from jobwire.store.queries import queries

pytestmark = pytest.mark.timeout(120)


class DashboardStoreContract:
    """The tests; each subclass gives the ``store`` fixture."""

    async def test_listing_filters_by_handler_and_source_too(self, store: Store) -> None:
        await store.enqueue_many(
            [
                JobSpec("a", queue="q1", source="s1"),
                JobSpec("b", queue="q1", source="s1"),
                JobSpec("a", queue="q2", source="s2"),
                JobSpec("a", queue="q1", source="s2", failed_reason="poison"),
            ]
        )
        assert [j.id for j in await store.list_jobs(handler="a")] == [4, 3, 1]
        assert [j.id for j in await store.list_jobs(source="s2")] == [4, 3]
        assert [j.id for j in await store.list_jobs("pending", "q1", handler="a")] == [1]
        assert [j.id for j in await store.list_jobs("failed", source="s2", handler="a")] == [4]
        assert [j.id for j in await store.list_jobs(handler="a", before_id=3)] == [1]
        assert await store.list_jobs(handler="c") == []

    async def test_counts_stop_at_the_cap_and_skip_succeeded(self, store: Store) -> None:
        await store.enqueue_many([JobSpec("a", queue="q1") for _ in range(7)])
        await store.enqueue_many([JobSpec("a", queue="q2", failed_reason="x") for _ in range(2)])
        assert await store.count_jobs("pending", cap=100) == 7
        assert await store.count_jobs("pending", cap=5) == 5
        assert await store.count_jobs("pending", "q2", cap=100) == 0
        assert await store.count_jobs("failed", "q2", "a", cap=100) == 2
        assert await store.count_jobs("failed", handler="b", cap=100) == 0
        assert await store.count_jobs("succeeded", cap=100) is None
        assert await store.failed_since(3600, 100) == {"q2": 2}
        assert await store.failed_since(3600, 1) == {"q2": 1}

    async def test_audit_rows_come_back_newest_first_and_page(self, store: Store) -> None:
        assert await store.list_audit() == []
        first = await store.record_audit(AuditEntry("admin@1.2.3.4#abc", "admin", "login"))
        second = await store.record_audit(
            AuditEntry(
                "admin@1.2.3.4#abc", "admin", "retry", "job 5", 1, {"status_before": "failed"}
            )
        )
        rows = await store.list_audit()
        assert [r.id for r in rows] == [second, first]
        assert (rows[0].action, rows[0].target, rows[0].count) == ("retry", "job 5", 1)
        assert rows[0].detail == {"status_before": "failed"} and rows[1].detail == {}
        assert [r.id for r in await store.list_audit(before_id=second)] == [first]
        assert [r.id for r in await store.list_audit(limit=1)] == [second]


class TestMemoryStore(DashboardStoreContract):
    """On the memory store."""

    @pytest.fixture
    async def store(self) -> AsyncIterator[Store]:
        yield MemoryStore()


class TestPostgresStore(DashboardStoreContract):
    """On PostgreSQL."""

    @pytest.fixture
    async def store(self, pg_store: PostgresStore) -> AsyncIterator[Store]:
        yield pg_store


async def test_dashboard_listings_and_counts_read_partial_indexes_not_the_history(
    pg_store: PostgresStore, database_url: str
) -> None:
    """With 100,000 finished rows, listing or counting failed jobs of one queue and handler
    (and the overview's failures of the last hour) must read jobs_failed, never the table,
    in the generic plan a prepared statement settles on too."""
    conn = await asyncpg.connect(database_url, server_settings=server_settings("jobwire"))
    plans: dict[str, Any] = {}
    try:
        await conn.execute(
            "INSERT INTO jobs (handler, queue, status, finished_at)"
            " SELECT 'noop', CASE WHEN i % 2 = 0 THEN 'long' ELSE 'short' END, 'succeeded',"
            " now() FROM generate_series(1, 100000) i"
        )
        await conn.execute(
            "INSERT INTO jobs (handler, queue, status, finished_at, source)"
            " SELECT 'noop', 'long', 'failed', now(), 'orders' FROM generate_series(1, 30)"
        )
        await conn.execute("ANALYZE jobs")
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        find = FIND_QUERY_BY_STATUS["failed"]
        await conn.execute(f"PREPARE f (text, text, int, bigint, text, text) AS {queries()[find]}")
        plans["find"] = await conn.fetchval(
            "EXPLAIN (FORMAT JSON) EXECUTE f ('failed', 'long', 51, NULL, 'noop', 'orders')"
        )
        count = COUNT_QUERY_BY_STATUS["failed"]
        await conn.execute(f"PREPARE c (text, text, text, text, int) AS {queries()[count]}")
        plans["count"] = await conn.fetchval(
            "EXPLAIN (FORMAT JSON) EXECUTE c ('failed', 'long', 'noop', NULL, 10000)"
        )
        await conn.execute(f"PREPARE s (float8, int) AS {queries()['failed_since']}")
        plans["failed_since"] = await conn.fetchval("EXPLAIN (FORMAT JSON) EXECUTE s (3600, 10000)")
    finally:
        await conn.close()
    for name, plan in plans.items():
        nodes = list(_plan_nodes(json.loads(plan)[0]["Plan"]))
        assert not [n for n in nodes if n[0] == "Seq Scan"], (name, nodes)
        assert {"jobs_failed", "jobs_finished"} & {i for _, i in nodes}, (name, nodes)
    assert len(await pg_store.list_jobs("failed", "long", 50, handler="noop")) == 30
    assert await pg_store.count_jobs("failed", "long", "noop", "orders", cap=10) == 10
    assert await pg_store.failed_since(3600, 10_000) == {"long": 30}


def _plan_nodes(node: dict[str, Any]) -> Iterator[tuple[str, str | None]]:
    yield node["Node Type"], node.get("Index Name")
    for child in node.get("Plans", []):
        yield from _plan_nodes(child)


@pytest.fixture
async def at_0009() -> AsyncIterator[str]:
    """A database migrated up to 0009 (what 0010 upgrades), with failed jobs in it."""
    import uuid

    from jobwire.store.migrate import known_migrations, migration_script
    from tests.conftest import _admin, db_url

    name = f"jw0009_{uuid.uuid4().hex[:10]}"
    await _admin(f'CREATE DATABASE "{name}"')
    url = db_url(name)
    conn = await asyncpg.connect(url)
    try:
        before = [m for m in known_migrations() if m.version < 10]
        await conn.execute(migration_script("jobwire", before))
        await conn.execute(
            "INSERT INTO jobwire.jobs (handler, queue, status, finished_at, last_error)"
            " SELECT 'noop', 'q', 'failed', now(), 'E: code ' || i FROM generate_series(1, 50) i"
        )
    finally:
        await conn.close()
    yield url
    await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


PREBUILD = (
    "ALTER TABLE jobwire.jobs ADD COLUMN IF NOT EXISTS error_fingerprint text;"
    "CREATE INDEX CONCURRENTLY jobs_failed_fingerprint ON jobwire.jobs (error_fingerprint, id)"
    " INCLUDE (queue, handler, finished_at) WHERE status = 'failed'"
)
INDEX_STATE = (
    "SELECT indexrelid::bigint AS oid, indisvalid FROM pg_index"
    " WHERE indexrelid = to_regclass('jobwire.jobs_failed_fingerprint')"
)


@pytest.mark.parametrize("leftover", ["none", "prebuilt", "invalid"])
async def test_0010_backfills_nothing_and_keeps_a_prebuilt_index(
    at_0009: str, leftover: str
) -> None:
    """No UPDATE of the history under the migration's lock; an index an operator built
    beforehand (CONCURRENTLY) is kept, and an invalid leftover of a failed build rebuilt."""
    from jobwire.store.migrate import migrate

    conn = await asyncpg.connect(at_0009)
    try:
        before = None
        if leftover != "none":
            for statement in PREBUILD.split(";"):
                await conn.execute(statement)
            if leftover == "invalid":  # as a CREATE INDEX CONCURRENTLY that failed leaves it
                await conn.execute(
                    "UPDATE pg_index SET indisvalid = false"
                    " WHERE indexrelid = 'jobwire.jobs_failed_fingerprint'::regclass"
                )
            before = await conn.fetchrow(INDEX_STATE)
        await migrate(at_0009, "jobwire")
        after = await conn.fetchrow(INDEX_STATE)
        unfilled = await conn.fetchval(
            "SELECT count(*) FROM jobwire.jobs WHERE error_fingerprint IS NULL"
        )
    finally:
        await conn.close()
    assert after is not None and after["indisvalid"]
    if leftover == "prebuilt":
        assert before is not None and after["oid"] == before["oid"]
    if leftover == "invalid":
        assert before is not None and after["oid"] != before["oid"]
    assert unfilled == 50  # the rollup's leader fills them in, a batch at a time
