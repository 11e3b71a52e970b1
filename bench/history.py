"""What the operator's and the daemon's reads cost beside a long history of finished jobs.

Fills a fresh table as ``bench.common.fill_month_of_history`` does (N finished jobs, one in
every ``--failed-every`` failed, behind a few old live ones), as a table that has run for a
month looks. Then times each read the way jobwire runs it (best of five, so a
cold cache does not count), and one retention purge run. The reads meant to follow the
live jobs, not the history, should stay near a millisecond whatever N is. First, how long
migration 0004 (the two history indexes) takes on such a table, built again.

    .venv/bin/python bench/history.py --rows 1000000
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script, too

from bench.common import fill_month_of_history, fresh_database, run
from jobwire.store.postgres import PostgresStore, migrate

DAY = 86400.0


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--failed-every", type=int, default=100_000)
    args = parser.parse_args()
    async with fresh_database() as url:
        await migrate(url, "jobwire")
        await fill_month_of_history(url, args.rows, args.failed_every)
        print(f"{args.rows:,} finished jobs, 1 in {args.failed_every:,} failed:")
        print(f"  {'upgrade: migration 0004 built again':<42} {await rebuild_0004(url):8.1f} s")
        store = await PostgresStore.connect(url, min_size=1, max_size=1)
        try:
            reads: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
                ("metrics: live jobs by queue and status", lambda: store.stats(finished=False)),
                ("metrics: ready backlog", lambda: store.ready_backlog(1_000_000)),
                ("jobs list --status failed", lambda: store.list_jobs("failed")),
                ("jobs list --status pending (old ones)", lambda: store.list_jobs("pending")),
                ("jobs list --status running", lambda: store.list_jobs("running")),
                ("jobs list (newest, any status)", lambda: store.list_jobs()),
                ("recover expired leases", store.recover_expired_leases),
                ("jobwire stats (counts every row)", store.stats),
            ]
            for what, read in reads:
                print(f"  {what:<42} {await best_of(5, read) * 1e3:8.1f} ms")
            t0 = time.perf_counter()
            purged = await store.purge_finished(30 * DAY - 600, 1000)
            print(
                f"  {'purge: ten minutes of history, one batch':<42}"
                f" {(time.perf_counter() - t0) * 1e3:8.1f} ms ({purged} jobs)"
            )
            t0 = time.perf_counter()
            retried = await store.retry(status="failed")
            print(
                f"  {'jobs retry --status failed':<42}"
                f" {(time.perf_counter() - t0) * 1e3:8.1f} ms ({len(retried)} jobs)"
            )
        finally:
            await store.close()


async def rebuild_0004(url: str) -> float:
    """Seconds migration 0004 takes on this table (writes wait that long at an upgrade)."""
    conn = await asyncpg.connect(url, server_settings={"search_path": "jobwire"})
    try:
        await conn.execute("DROP INDEX jobs_finished, jobs_failed")
        await conn.execute("DELETE FROM schema_migrations WHERE version = 4")
    finally:
        await conn.close()
    t0 = time.perf_counter()
    assert await migrate(url, "jobwire") == ["0004_history_indexes"]
    return time.perf_counter() - t0


async def best_of(times: int, read: Callable[[], Awaitable[Any]]) -> float:
    """The fastest of ``times`` runs, in seconds."""
    best = float("inf")
    for _ in range(times):
        t0 = time.perf_counter()
        await read()
        best = min(best, time.perf_counter() - t0)
    return best


if __name__ == "__main__":
    run(main())
