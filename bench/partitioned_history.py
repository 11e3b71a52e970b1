"""Retention at scale: today's batched purge against dropping a day's partition.

One fresh database holds two copies of the same history: N finished jobs (3,000,000 by
default, each with a dedup key as a broker source writes it) created over ``--days`` whole
days, in random physical order (as in a table whose purged space was reused; ``--in-order``
for a table filled once in time order):

- "today": jobwire's own ``jobs`` table (``migrate``), purged as the scheduler's leader
  does it: ``purge_finished`` batches of ``--batch`` rows with a 50 ms pause between them,
  until a batch comes back short, with the cutoff at the end of the oldest day;
- "partitioned": a copy of ``jobs`` partitioned by range on ``created_at``, one partition
  a day, with the same indexes (the primary key and the dedup key's unique index carry
  ``created_at``, as PostgreSQL demands); the oldest day goes by DETACH + DROP.

For each: the time, the WAL it wrote (this database's records through pg_walinspect, and
the whole server's ``pg_current_wal_lsn()`` difference, which counts other databases'
writes too), rows left, table and index sizes and dead tuples afterwards. Autovacuum is off
on both tables while measuring; the VACUUM that a DELETE leaves behind is then run and
measured as part of the purge's cost. A CHECKPOINT before each makes both pay their full
page images alike.

Why ``created_at`` and not ``finished_at``: ``finished_at`` is NULL while a job lives and is
set at completion, so every job would be born in a default partition and moved (DELETE +
INSERT) into a day's partition when it finishes, and a worker locking a row that has just
moved gets an error instead of skipping it. ``created_at`` never changes.

    .venv/bin/python bench/partitioned_history.py --rows 3000000 --days 30
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script, too

from bench.common import fresh_database, run
from bench.pgstats import Counting
from jobwire.store.postgres import PostgresStore, migrate

PAUSE = 0.05  # the leader's pause between batches (maintenance.Maintenance.purge)
PARTITIONED = "jobs_by_day"


@dataclass(frozen=True)
class Footprint:
    """A table's size and leftovers at one moment."""

    rows: int
    table_bytes: int
    index_bytes: int
    dead: int

    def line(self) -> str:
        """One line for the report."""
        return (
            f"{self.rows:,} rows, table {self.table_bytes / 2**20:,.0f} MiB,"
            f" indexes {self.index_bytes / 2**20:,.0f} MiB, dead tuples {self.dead:,}"
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--batch", type=int, default=1000, help="retention.batch")
    parser.add_argument("--in-order", action="store_true", help="rows in time order on disk")
    args = parser.parse_args()
    if args.days < 2 or args.rows < args.days:
        parser.error("--days must be at least 2 and --rows at least --days")
    async with fresh_database() as url:
        await migrate(url, "jobwire")
        t0 = time.perf_counter()
        await fill(url, args.rows, args.days, args.in_order)
        order = "in time order" if args.in_order else "in random physical order"
        print(
            f"{args.rows:,} finished jobs over {args.days} days, {order}, both tables filled"
            f" in {time.perf_counter() - t0:,.0f} s; retention removes the oldest day"
        )
        await today(url, args.days, args.batch)
        await partitioned(url)


async def fill(url: str, rows: int, days: int, in_order: bool) -> None:
    """Both tables with the same rows; day d's jobs created in [start + d, start + d + 1)."""
    conn = await connect(url)
    try:
        # The fill only: no per-row triggers (foreign keys, fingerprints) on rows that need
        # none, so 3,000,000 rows go in within the time box.
        await conn.execute("SET session_replication_role = replica")
        await conn.execute("SELECT setseed(0.25)")
        order = "ORDER BY t" if in_order else ""
        await conn.execute(
            "INSERT INTO jobs (handler, status, attempts, payload, source, dedup_key,"
            " created_at, started_at, finished_at)"
            " OVERRIDING SYSTEM VALUE"
            " SELECT 'noop', 'succeeded', 1, '{\"bench\": true}', 'orders',"
            " 'orders:' || md5(g::text), t, t + interval '10 ms', t + interval '20 ms'"
            " FROM (SELECT g, date_trunc('day', now()) - $2 * interval '1 day'"
            "  + random() * $2 * interval '1 day' AS t"
            "  FROM generate_series(1, $1) AS g) AS s " + order,
            rows,
            days,
        )
        await create_partitioned(conn, days)
        await conn.execute(f"INSERT INTO {PARTITIONED} SELECT * FROM jobs")
        # Off while measuring: the VACUUM a purge leaves is run and counted by hand. (A
        # partitioned table takes no storage options: each part does.)
        for part in ["jobs", *await partitions(conn)]:
            await conn.execute(f"ALTER TABLE {part} SET (autovacuum_enabled = false)")
        await conn.execute(f"VACUUM ANALYZE jobs, {PARTITIONED}")
    finally:
        await conn.close()


async def create_partitioned(conn: asyncpg.Connection, days: int) -> None:
    """jobs' columns and indexes on a table partitioned by day of created_at."""
    await conn.execute(
        f"CREATE TABLE {PARTITIONED} (LIKE jobs INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
        " PARTITION BY RANGE (created_at)"
    )
    for day in range(-days, 2):  # the history, today and tomorrow (where new jobs go)
        await conn.execute(
            f"CREATE TABLE {PARTITIONED}_d{day + days:03d} PARTITION OF {PARTITIONED}"
            f" FOR VALUES FROM (date_trunc('day', now()) + interval '{day} days')"
            f" TO (date_trunc('day', now()) + interval '{day + 1} days')"
        )
    # A unique index on a partitioned table must contain the partition key: the primary key
    # becomes (id, created_at), dedup_key unique only within a day.
    await conn.execute(f"ALTER TABLE {PARTITIONED} ADD PRIMARY KEY (id, created_at)")
    await conn.execute(
        f"CREATE UNIQUE INDEX {PARTITIONED}_dedup ON {PARTITIONED} (dedup_key, created_at)"
    )
    definitions = await conn.fetch(
        "SELECT indexname, indexdef FROM pg_indexes"
        " WHERE schemaname = 'jobwire' AND tablename = 'jobs'"
    )
    for row in definitions:
        if row["indexdef"].startswith("CREATE UNIQUE"):
            continue  # the two above
        statement = re.sub(r" ON jobwire\.jobs ", f" ON {PARTITIONED} ", row["indexdef"])
        statement = statement.replace(row["indexname"], f"{row['indexname']}_p", 1)
        await conn.execute(statement)


async def today(url: str, days: int, batch: int) -> None:
    """The leader's purge of the oldest day, batch by batch, and the VACUUM after it."""
    conn = await connect(url)
    try:
        await conn.execute("CHECKPOINT")
        # Seconds from now back to the end of the oldest day, the run's cutoff.
        older_than = await conn.fetchval(
            "SELECT extract(epoch FROM now() - (date_trunc('day', now())"
            " - $1 * interval '1 day' + interval '1 day'))::float8",
            days,
        )
        print(f"today: before: {(await footprint(conn, 'jobs')).line()}")
    finally:
        await conn.close()
    async with Counting.open(url) as counting:
        lsn = await server_lsn(url)
        store = await PostgresStore.connect(url, min_size=1, max_size=1)
        t0 = time.perf_counter()
        deleted = batches = 0
        busy = slowest = 0.0
        try:
            while True:
                b0 = time.perf_counter()
                got = await store.purge_finished(older_than, batch)
                spent = time.perf_counter() - b0
                busy, slowest = busy + spent, max(slowest, spent)
                deleted, batches = deleted + got, batches + 1
                if got < batch:
                    break
                await asyncio.sleep(PAUSE)
        finally:
            await store.close()
        wall = time.perf_counter() - t0
        server = await server_lsn(url) - lsn
        writes = await counting.per_job(1)
    print(
        f"today: purge_finished x {batches} batches of {batch}: {deleted:,} jobs in"
        f" {wall:,.1f} s ({busy:,.1f} s in statements, slowest batch {slowest * 1e3:,.0f} ms,"
        f" the rest the leader's pauses)"
    )
    print(
        f"today: WAL {mib(writes.wal_bytes)} ({writes.wal_scope}),"
        f" {mib(server)} whole server, {writes.wal_bytes / max(deleted, 1):,.0f} B per job"
    )
    conn = await connect(url)
    try:
        print(f"today: after the purge: {(await footprint(conn, 'jobs')).line()}")
    finally:
        await conn.close()
    async with Counting.open(url) as counting:
        lsn = await server_lsn(url)
        conn = await connect(url)
        try:
            t0 = time.perf_counter()
            await conn.execute("VACUUM jobs")  # what autovacuum would do next
            vacuum = time.perf_counter() - t0
        finally:
            await conn.close()
        server = await server_lsn(url) - lsn
        writes = await counting.per_job(1)
    conn = await connect(url)
    try:
        print(
            f"today: the VACUUM it leaves: {vacuum:,.1f} s, WAL {mib(writes.wal_bytes)}"
            f" ({writes.wal_scope}), {mib(server)} whole server;"
            f" after: {(await footprint(conn, 'jobs')).line()}"
        )
    finally:
        await conn.close()


async def partitioned(url: str) -> None:
    """DETACH + DROP of the oldest day's partition."""
    conn = await connect(url)
    try:
        await conn.execute("CHECKPOINT")
        oldest = (await partitions(conn))[0]
        print(f"partitioned: before: {(await footprint(conn, PARTITIONED)).line()}")
    finally:
        await conn.close()
    async with Counting.open(url) as counting:
        lsn = await server_lsn(url)
        conn = await connect(url)
        try:
            t0 = time.perf_counter()
            gone = await conn.fetchval(f"SELECT count(*) FROM {oldest}")
            live = await conn.fetchval(
                f"SELECT count(*) FROM {oldest} WHERE finished_at IS NULL"
            )  # a day still holding live jobs must wait (or have them moved first)
            c0 = time.perf_counter()
            # CONCURRENTLY: no lock that stops the claim on the other partitions.
            await conn.execute(f"ALTER TABLE {PARTITIONED} DETACH PARTITION {oldest} CONCURRENTLY")
            await conn.execute(f"DROP TABLE {oldest}")
            drop = time.perf_counter() - c0
            total = time.perf_counter() - t0
        finally:
            await conn.close()
        server = await server_lsn(url) - lsn
        writes = await counting.per_job(1)
    print(
        f"partitioned: DETACH CONCURRENTLY + DROP {oldest}: {gone:,} jobs ({live} live) in"
        f" {drop * 1e3:,.0f} ms ({total * 1e3:,.0f} ms with the counts before it)"
    )
    print(
        f"partitioned: WAL {writes.wal_bytes / 1024:,.1f} KiB ({writes.wal_scope}),"
        f" {mib(server)} whole server; no VACUUM owed"
    )
    conn = await connect(url)
    try:
        print(f"partitioned: after: {(await footprint(conn, PARTITIONED)).line()}")
    finally:
        await conn.close()


async def footprint(conn: asyncpg.Connection, table: str) -> Footprint:
    """Rows, sizes and dead tuples of a table, or of all of a partitioned table's parts."""
    await conn.execute("SELECT pg_stat_force_next_flush()")
    await asyncio.sleep(0.6)  # other backends flush their statistics at most every 0.5 s
    row = await conn.fetchrow(
        # A plain table is its own only part (pg_partition_tree has no row for it).
        "WITH t AS (SELECT relid FROM pg_partition_tree($1::regclass) WHERE isleaf"
        " UNION SELECT $1::regclass)"
        " SELECT coalesce(sum(pg_table_size(relid)), 0)::bigint AS heap,"
        " coalesce(sum(pg_indexes_size(relid)), 0)::bigint AS idx,"
        " (SELECT coalesce(sum(n_dead_tup), 0)::bigint FROM pg_stat_user_tables"
        "  WHERE relid IN (SELECT relid FROM t)) AS dead FROM t",
        table,
    )
    rows = await conn.fetchval(f"SELECT count(*) FROM {table}")
    return Footprint(rows, row["heap"], row["idx"], row["dead"])


async def partitions(conn: asyncpg.Connection) -> list[str]:
    """The partitioned table's parts, oldest first."""
    return [
        r["relname"]
        for r in await conn.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = $1::regclass ORDER BY c.relname",
            PARTITIONED,
        )
    ]


async def server_lsn(url: str) -> int:
    """The whole server's WAL position, in bytes."""
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"))
    finally:
        await conn.close()


async def connect(url: str) -> asyncpg.Connection:
    """A connection on the jobwire schema."""
    return await asyncpg.connect(url, server_settings={"search_path": "jobwire"})


def mib(size: float) -> str:
    """Bytes as MiB."""
    return f"{size / 2**20:,.1f} MiB"


if __name__ == "__main__":
    run(main())
