"""What a drain writes to PostgreSQL, per job: WAL bytes, transactions, rows, statements.

Taken from the server's own counters before the daemon starts and after it has stopped
(its backends flush their statistics when they exit), on the drain's fresh database:

- WAL bytes: with ``pg_walinspect`` (a contrib module of PostgreSQL 15+; superuser), the
  WAL records between the two positions that touch this database's relations, and the
  records (commits) of the transactions that wrote them: this database's WAL alone, even
  while other databases write. A temporary physical replication slot (dropped with its
  connection) keeps those WAL segments until they are read. Without the module: the
  whole server's ``pg_current_wal_lsn()`` difference, and the line says so;
- transactions and rows written: ``pg_stat_database`` for the drain's own database
  (xact_commit + xact_rollback; tup_inserted, tup_updated, tup_deleted), less the bench's
  own progress polls;
- the share of the jobs table's updates that were HOT (``pg_stat_user_tables``);
- statements: from ``pg_stat_statements`` only where the server loads it
  (shared_preload_libraries); otherwise left out and the line says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg


@dataclass(frozen=True)
class Counters:
    """The server's counters at one moment, for one database."""

    wal_lsn: str
    xacts: int
    inserted: int
    updated: int
    deleted: int
    jobs_updated: int
    jobs_hot_updated: int
    statements: int | None  # None: pg_stat_statements is not loaded


@dataclass(frozen=True)
class WritesPerJob:
    """The difference of two ``Counters`` divided by the jobs drained."""

    wal_bytes: float
    wal_scope: str  # "this database" (pg_walinspect) or "whole server"
    xacts: float
    inserted: float
    updated: float
    deleted: float
    hot_share: float | None  # of the jobs table's updates; None without updates
    statements: float | None

    def line(self) -> str:
        """One line for the report."""
        hot = f"{self.hot_share:.0%}" if self.hot_share is not None else "n/a"
        statements = (
            f"{self.statements:.2f} statements (pg_stat_statements)"
            if self.statements is not None
            else "statements n/a (pg_stat_statements not loaded)"
        )
        return (
            f"WAL {self.wal_bytes:,.0f} B ({self.wal_scope}), {self.xacts:.3f} transactions, "
            f"rows {self.inserted:.2f} ins / {self.updated:.2f} upd / {self.deleted:.2f} del, "
            f"HOT {hot} of job updates, {statements}"
        )

    def as_dict(self) -> dict[str, float | str | None]:
        """For the JSON results."""
        return dict(self.__dict__)


class Counting:
    """Counts a drain's writes: open it before the daemon starts, ``per_job`` once it has
    stopped."""

    def __init__(self, url: str, before: Counters, walinspect: bool, hold_pid: int) -> None:
        self.url = url
        self.before = before
        self.walinspect = walinspect
        self.hold_pid = hold_pid

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, url: str) -> AsyncIterator[Counting]:
        """Counters now; the WAL from here kept (a temporary slot) until the block ends."""
        hold = await asyncpg.connect(url)
        try:
            walinspect = await _hold_wal(hold)
            # Its own statements (the extension's catalog rows) counted before, not after.
            await hold.execute("SELECT pg_stat_force_next_flush()")
            pid = hold.get_server_pid()
            yield cls(url, await snapshot(url, [pid]), walinspect, pid)
        finally:
            await hold.close()  # the temporary slot goes with it

    async def per_job(self, jobs: int, own_polls: int = 0) -> WritesPerJob:
        """The writes since opening, per job. ``own_polls``: the bench's progress polls in
        between (each a transaction and a statement), taken off; the handful of statements
        of the snapshots themselves are not."""
        before = self.before
        after = await snapshot(self.url, [self.hold_pid])
        own_wal = await self._database_wal(after) if self.walinspect else None
        wal = own_wal if own_wal is not None else _lsn(after.wal_lsn) - _lsn(before.wal_lsn)
        xacts = after.xacts - before.xacts - own_polls
        jobs_updated = after.jobs_updated - before.jobs_updated
        statements = (
            after.statements - before.statements - own_polls
            if after.statements is not None and before.statements is not None
            else None
        )
        return WritesPerJob(
            wal / jobs,
            "this database" if own_wal is not None else "whole server",
            max(0, xacts) / jobs,
            (after.inserted - before.inserted) / jobs,
            (after.updated - before.updated) / jobs,
            (after.deleted - before.deleted) / jobs,
            (after.jobs_hot_updated - before.jobs_hot_updated) / jobs_updated
            if jobs_updated
            else None,
            max(0, statements) / jobs if statements is not None else None,
        )

    async def _database_wal(self, after: Counters) -> int | None:
        conn = await asyncpg.connect(self.url)
        try:
            value = await conn.fetchval(
                "WITH r AS (SELECT xid, record_length, block_ref"
                "  FROM pg_get_wal_records_info($1::text::pg_lsn, $2::text::pg_lsn)),"
                " db AS (SELECT '%/' || oid || '/%' AS pattern"
                "  FROM pg_database WHERE datname = current_database()),"
                " mine AS (SELECT DISTINCT xid FROM r, db"
                "  WHERE r.block_ref LIKE db.pattern AND r.xid <> 0)"
                " SELECT coalesce(sum(record_length), 0) FROM r, db"
                " WHERE r.block_ref LIKE db.pattern OR r.xid IN (SELECT xid FROM mine)",
                self.before.wal_lsn,
                after.wal_lsn,
            )
        except asyncpg.PostgresError:
            return None  # e.g. a segment already recycled: the whole server's figure
        finally:
            await conn.close()
        return int(value)


async def _hold_wal(conn: asyncpg.Connection) -> bool:
    """pg_walinspect in this database and a temporary slot holding the WAL from now;
    False where either cannot be had (not a superuser, no contrib modules, no slots)."""
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
        await conn.execute(
            "SELECT pg_create_physical_replication_slot($1, true, true)",
            f"jwbench_{uuid.uuid4().hex[:12]}",
        )
    except asyncpg.PostgresError:
        return False
    return True


async def snapshot(url: str, ignored: list[int]) -> Counters:
    """The counters once no other backend is connected to the database (a backend flushes
    its statistics when it exits, so only then are its writes all counted), read on a
    connection of its own (no cached statistics). ``ignored``: backends of ours (pids)."""
    conn = await asyncpg.connect(url)
    try:
        await _others_gone(conn, ignored)
        row = await conn.fetchrow(
            # The flushed position: pg_walinspect reads no further.
            "SELECT pg_current_wal_flush_lsn()::text AS lsn,"
            " xact_commit + xact_rollback AS xacts, tup_inserted, tup_updated, tup_deleted"
            " FROM pg_stat_database WHERE datname = current_database()"
        )
        jobs = await conn.fetchrow(
            "SELECT coalesce(sum(n_tup_upd), 0) AS upd, coalesce(sum(n_tup_hot_upd), 0) AS hot"
            " FROM pg_stat_user_tables WHERE schemaname = 'jobwire' AND relname = 'jobs'"
        )
        statements = await _statements(conn)
    finally:
        await conn.close()
    return Counters(
        row["lsn"],
        int(row["xacts"]),
        int(row["tup_inserted"]),
        int(row["tup_updated"]),
        int(row["tup_deleted"]),
        int(jobs["upd"]),
        int(jobs["hot"]),
        statements,
    )


async def _statements(conn: asyncpg.Connection) -> int | None:
    # Only where the server preloads the module; creating the extension elsewhere would
    # succeed and then fail on every read.
    loaded = await conn.fetchval("SELECT current_setting('shared_preload_libraries')")
    if "pg_stat_statements" not in (loaded or ""):
        return None
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        value = await conn.fetchval(
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements"
            " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
    except asyncpg.PostgresError:
        return None
    return int(value)


def _lsn(text: str) -> int:
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) + int(low, 16)


async def _others_gone(conn: asyncpg.Connection, ignored: list[int], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND pid <> pg_backend_pid() AND pid <> ALL($1::int[])",
        ignored,
    ):
        if time.monotonic() > deadline:
            return  # figures a little short rather than none
        await asyncio.sleep(0.05)
