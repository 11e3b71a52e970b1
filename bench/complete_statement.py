"""The pool's completion statement alone: milliseconds per batch of outcomes, by batch size.

Jobs are inserted as running (the intake's hand-off) into a table that already holds
100,000 finished jobs, then completed in one ``complete_many`` per batch, as the pool's
completion writer does; prints the median time per batch and per outcome. Nothing else
runs, so this is the statement's own cost (in the daemon it shares the cores).

    .venv/bin/python bench/complete_statement.py --sizes 50 200 1000 2000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script, too

from bench.common import fresh_database, run
from jobwire.models import JobSpec, JobStatus, Outcome
from jobwire.store.base import DirectStart
from jobwire.store.postgres import PostgresStore, migrate


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 200, 1000, 2000])
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    async with fresh_database() as url:
        await migrate(url, "jobwire")
        store = await PostgresStore.connect(url, min_size=1, max_size=1)
        await _batches(store, "history", 20, 5000)  # a table with a past, as in service
        for size in args.sizes:
            seconds = await _batches(store, f"size{size}", args.repeats, size)
            median = statistics.median(seconds)
            print(
                f"complete {size:>5} outcomes: {median * 1e3:6.1f} ms"
                f" = {median * 1e6 / size:5.1f} us each"
            )
        await store.close()


async def _batches(store: PostgresStore, name: str, count: int, size: int) -> list[float]:
    """Insert ``count`` batches of ``size`` running jobs, complete each; seconds per complete."""
    seconds = []
    for batch in range(count):
        specs = [JobSpec("noop", dedup_key=f"{name}/{batch}/{i}") for i in range(size)]
        ids = await store.enqueue_many(specs, DirectStart("bench", 60.0, [True] * size))
        outcomes = [Outcome(i, 1, JobStatus.SUCCEEDED, 0.001) for i in ids if i is not None]
        t0 = time.perf_counter()
        await store.complete_many("bench", outcomes)
        seconds.append(time.perf_counter() - t0)
    return seconds


if __name__ == "__main__":
    run(main())
