"""The retention purge alone: milliseconds to delete one batch of finished jobs, by table size.

Fills a fresh table with N finished jobs (inserted as running, then completed, each with its
job_runs row), then times ``purge_finished`` batches as the scheduler's leader runs them.

    .venv/bin/python bench/purge.py --rows 50000 200000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script, too

from bench.common import fresh_database, run
from jobwire.models import JobSpec, JobStatus, Outcome
from jobwire.store.base import DirectStart
from jobwire.store.postgres import PostgresStore, migrate

FILL_BATCH = 5000


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[50_000, 200_000])
    parser.add_argument("--batch", type=int, default=1000, help="retention.batch")
    parser.add_argument("--batches", type=int, default=3)
    args = parser.parse_args()
    for rows in args.rows:
        async with fresh_database() as url:
            await migrate(url, "jobwire")
            store = await PostgresStore.connect(url, min_size=1, max_size=1)
            for start in range(0, rows, FILL_BATCH):
                count = min(FILL_BATCH, rows - start)
                specs = [JobSpec("noop", dedup_key=f"{start}/{i}") for i in range(count)]
                ids = await store.enqueue_many(specs, DirectStart("bench", 60.0, [True] * count))
                outcomes = [Outcome(i, 1, JobStatus.SUCCEEDED, 0.0) for i in ids if i is not None]
                await store.complete_many("bench", outcomes)
            for _ in range(args.batches):
                t0 = time.perf_counter()
                deleted = await store.purge_finished(0.0, args.batch)
                elapsed = time.perf_counter() - t0
                print(
                    f"table of {rows:,} finished jobs: purged {deleted} in {elapsed * 1e3:,.0f} ms"
                )
            await store.close()


if __name__ == "__main__":
    run(main())
