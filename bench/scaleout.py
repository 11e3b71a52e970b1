"""Drains by one or more daemons (separate ``jobwire run`` processes, or one ``jobwire run``
with ``workers.processes`` = the cores) on one database.

- a filled table: N pending jobs inserted first, then the daemons started; the time is
  taken from the rows, first job started -> last job finished;
- AMQP: N persistent messages pre-loaded into one queue, consumed by every daemon
  (RabbitMQ's competing consumers); first job stored -> last job finished.

The daemons are started together, yet come up a fraction of a second apart (imports on
busy cores), which in a short drain the first one would count as its own. So the
scale-out is taken from the moment every daemon had started a job (the latest of each
worker id's first ``job_runs.started_at``) to the last finish, the same way for one
daemon and for two (``common.steady_rate``); each child of ``workers.processes`` is a worker
id of its own.

    .venv/bin/python -m bench.scaleout --jobs 20000
"""

from __future__ import annotations

import argparse
import contextlib
import uuid
from dataclasses import dataclass

import asyncpg

from bench import amqp_drain, pgstats
from bench.common import (
    AMQP,
    Drain,
    JobsWatch,
    daemon,
    drain_source,
    fresh_database,
    run,
    steady_rate,
    until,
)
from jobwire.models import JobSpec
from jobwire.processes import available_cores
from jobwire.store.postgres import PostgresStore, migrate


@dataclass(frozen=True)
class TableDrain:
    """A filled table drained: its rate and what it wrote per job."""

    rate: float
    writes: pgstats.WritesPerJob
    steady_rate: float  # from the moment every daemon had started a job


async def table_drain(
    n: int, concurrency: int | None = 256, daemons: int = 1, processes: int = 1
) -> TableDrain:
    """N pending no-op jobs drained by ``daemons`` daemons of ``processes`` processes each
    (``concurrency``: None leaves the daemon's default)."""
    async with fresh_database() as url:
        await migrate(url, "jobwire")
        store = await PostgresStore.connect(url, min_size=1, max_size=2)
        for start in range(0, n, 5000):
            await store.enqueue_many([JobSpec("noop") for _ in range(min(5000, n - start))])
        await store.close()
        workers: dict[str, int] = {} if concurrency is None else {"concurrency": concurrency}
        if processes > 1:
            workers["processes"] = processes
        config = {"database": {"url": url}, "workers": workers}
        async with pgstats.Counting.open(url) as counting:
            with contextlib.ExitStack() as stack:
                procs = [stack.enter_context(daemon(config)) for _ in range(daemons)]
                async with JobsWatch.open(url) as watch:
                    await until(watch.none_left, 600, *procs)
                    polls = watch.polls
            writes = await counting.per_job(n, polls)
        conn = await asyncpg.connect(url)
        try:
            span = await conn.fetchval(
                "SELECT extract(epoch FROM max(finished_at) - min(started_at)) FROM jobwire.jobs"
            )
            steady = await steady_rate(conn)
        finally:
            await conn.close()
    return TableDrain(n / float(span), writes, steady)


async def amqp_drain_by(
    n: int, daemons: int, prefetch: int = 1000, concurrency: int | None = 256, processes: int = 1
) -> Drain:
    """N persistent messages in one queue drained by ``daemons`` daemons of ``processes``
    processes each."""
    queue = f"jw-bench-scale-{uuid.uuid4().hex[:8]}"
    await amqp_drain.preload(AMQP, queue, n)
    try:
        source = {"type": "amqp", "url": AMQP, "queue": queue, "prefetch": prefetch}
        return await drain_source(source, n, concurrency, daemons=daemons, processes=processes)
    finally:
        await amqp_drain.delete_queue(AMQP, queue)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument(
        "--processes",
        type=int,
        default=available_cores(),
        help="workers.processes for the 'processes = cores' case (default: the cores here)",
    )
    args = parser.parse_args()
    n, cores = args.jobs, args.processes
    one, two = await table_drain(n, daemons=1), await table_drain(n, daemons=2)
    many = await table_drain(n, processes=cores)
    print(
        f"filled table, 1 daemon: {one.steady_rate:,.0f} jobs/s; "
        f"2 daemons: {two.steady_rate:,.0f} jobs/s; "
        f"1 daemon of {cores} processes: {many.steady_rate:,.0f} jobs/s "
        "(from when every process had started a job)"
    )
    print(f"scale-out, filled table: 2 daemons {two.steady_rate / one.steady_rate:.2f}x")
    print(f"scale-out, filled table: processes = {cores} {many.steady_rate / one.steady_rate:.2f}x")
    first, second = await amqp_drain_by(n, 1), await amqp_drain_by(n, 2)
    children = await amqp_drain_by(n, 1, processes=cores)
    print(
        f"AMQP, 1 daemon: {first.steady_rate:,.0f} jobs/s; "
        f"2 daemons: {second.steady_rate:,.0f} jobs/s; "
        f"1 daemon of {cores} processes: {children.steady_rate:,.0f} jobs/s "
        "(from when every process had started a job)"
    )
    print(f"scale-out, AMQP: 2 daemons {second.steady_rate / first.steady_rate:.2f}x")
    print(f"scale-out, AMQP: processes = {cores} {children.steady_rate / first.steady_rate:.2f}x")


if __name__ == "__main__":
    run(main())
