"""The retention purge alone: milliseconds to delete one batch of finished jobs, by table size.

Two tables per size. "Oldest first": N finished jobs inserted as running and completed (each
with its job_runs row), so the oldest rows lead the heap; batches are timed as the scheduler's
leader runs them. "Ages spread": N finished jobs whose finish times are spread over 30 days
in random physical order (``bench.common.fill_month_of_history``), as in a table whose
purged space was reused; a run (batches until
one comes back short) is timed for the oldest day, then for a steady run's share (ten
minutes' worth, the default retention.every), as the leader meets it every time.

    .venv/bin/python bench/purge.py --rows 50000 200000 1000000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script, too

from bench.common import fill_month_of_history, fresh_database, run
from jobwire.models import JobSpec, JobStatus, Outcome
from jobwire.store.base import DirectStart
from jobwire.store.postgres import PostgresStore, migrate

FILL_BATCH = 5000
DAY = 86400.0


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[50_000, 200_000, 1_000_000])
    parser.add_argument("--batch", type=int, default=1000, help="retention.batch")
    parser.add_argument("--batches", type=int, default=3)
    args = parser.parse_args()
    for rows in args.rows:
        await oldest_first(rows, args.batch, args.batches)
        await ages_spread(rows, args.batch)


async def oldest_first(rows: int, batch: int, batches: int) -> None:
    """Batches out of a table filled in time order (the oldest rows lead the heap)."""
    async with fresh_database() as url:
        await migrate(url, "jobwire")
        store = await PostgresStore.connect(url, min_size=1, max_size=1)
        for start in range(0, rows, FILL_BATCH):
            count = min(FILL_BATCH, rows - start)
            specs = [JobSpec("noop", dedup_key=f"{start}/{i}") for i in range(count)]
            ids = await store.enqueue_many(specs, DirectStart("bench", 60.0, [True] * count))
            outcomes = [Outcome(i, 1, JobStatus.SUCCEEDED, 0.0) for i in ids if i is not None]
            await store.complete_many("bench", outcomes)
        for _ in range(batches):
            t0 = time.perf_counter()
            deleted = await store.purge_finished(0.0, batch)
            elapsed = time.perf_counter() - t0
            print(
                f"oldest first, {rows:,} finished jobs: purged {deleted} in {elapsed * 1e3:,.0f} ms"
            )
        await store.close()


async def ages_spread(rows: int, batch: int) -> None:
    """Whole purge runs out of a table whose finish times are spread in random order."""
    async with fresh_database() as url:
        await migrate(url, "jobwire")
        store = await PostgresStore.connect(url, min_size=1, max_size=1)
        await fill_month_of_history(url, rows)
        runs_timed = (("the oldest day", 29 * DAY), ("ten minutes' share", 29 * DAY - 600))
        for what, older_than in runs_timed:
            t0 = time.perf_counter()
            deleted, slowest, runs = 0, 0.0, 0
            while True:
                b0 = time.perf_counter()
                got = await store.purge_finished(older_than, batch)
                slowest = max(slowest, time.perf_counter() - b0)
                deleted, runs = deleted + got, runs + 1
                if got < batch:
                    break
            print(
                f"ages spread, {rows:,} finished jobs, {what}: purged {deleted:,} in {runs}"
                f" batches, {(time.perf_counter() - t0) * 1e3:,.0f} ms"
                f" (slowest batch {slowest * 1e3:,.0f} ms)"
            )
        await store.close()


if __name__ == "__main__":
    run(main())
