"""The retention purge while another session keeps a transaction open (a report, a
pg_dump, an idle-in-transaction client): the rows it deleted cannot be cleaned up yet, and
each batch must not walk again past every one of them."""

from __future__ import annotations

import asyncpg
import pytest

from jobwire.config import RetentionConfig
from jobwire.maintenance import Maintenance
from jobwire.store.postgres import PostgresStore
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(120)

ROWS = 20_000
BATCH = 500


async def _entries_read(conn: asyncpg.Connection) -> int:
    """Index entries the purge's scans of jobs_finished returned, by the server's count."""
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    return int(
        await conn.fetchval(
            "SELECT idx_tup_read FROM pg_stat_user_indexes"
            " WHERE schemaname = 'jobwire' AND indexrelname = 'jobs_finished'"
        )
    )


async def test_purge_reads_on_from_its_last_batch_while_a_transaction_is_open(
    database_url: str,
) -> None:
    admin = await asyncpg.connect(database_url)
    holder = await asyncpg.connect(database_url)
    try:
        await admin.execute(
            "INSERT INTO jobwire.jobs (handler, status, attempts, finished_at)"
            " SELECT 'noop', 'succeeded', 1, now() - interval '10 days' + g * interval '1 s'"
            " FROM generate_series(1, $1) g",
            ROWS,
        )
        before = await _entries_read(admin)
        # A snapshot older than every delete: no deleted row's index entry can be marked
        # dead while it lasts, so a scan from the oldest entry reads them all again.
        await holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        await holder.fetchval("SELECT count(*) FROM jobwire.schedules")
        store = await PostgresStore.connect(database_url, "jobwire", min_size=1, max_size=2)
        try:
            retention = RetentionConfig(finished=86400.0, batch=BATCH)
            assert await Maintenance(store, retention).purge() == ROWS
        finally:
            await store.close()  # its backends report their counts as they end
        read = await wait_for(
            lambda: _until_counted(admin, before),
            timeout=30,
            what="the purge's index reads counted",
        )
    finally:
        await holder.close()
        await admin.close()
    # In order from its last batch, the purge reads each entry about once: ROWS. From the
    # start of the index every batch, it read ROWS * batches / 2 (200,000 here).
    assert read < 3 * ROWS, read


async def _until_counted(conn: asyncpg.Connection, before: int) -> int:
    read = await _entries_read(conn) - before
    return read if read >= ROWS else 0
