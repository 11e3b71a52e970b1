"""Peer job systems, each draining N no-op jobs in a worker process of its own.

``python -m bench.peers pgqueuer|procrastinate DSN N SETTING`` fills a fresh database with N
jobs, then drains them and prints the seconds the drain took (the fill is not timed).
SETTING is the knob each peer's docs name for throughput: PgQueuer's batch size,
Procrastinate's worker concurrency. Celery's worker is the celery CLI, started by the
scenario with its concurrency; its task module is this one, and its prefetch multiplier
comes from ``BENCH_CELERY_PREFETCH``.
"""

from __future__ import annotations

import os
import sys
import time

import asyncpg

from bench.common import run


async def pgqueuer_drain(dsn: str, n: int, batch_size: int = 10) -> float:
    from pgqueuer import QueueManager
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.queries import Queries
    from pgqueuer.types import QueueExecutionMode

    conn = await asyncpg.connect(dsn)
    driver = AsyncpgDriver(conn)
    queries = Queries(driver)
    await queries.install()
    del driver
    for start in range(0, n, 5000):
        count = min(5000, n - start)
        await queries.enqueue(["noop"] * count, [None] * count, [0] * count)
    qm = QueueManager(queries)

    @qm.entrypoint("noop")
    async def noop(job: object) -> None:
        return None

    t0 = time.perf_counter()
    # Its default batch is 10; drain mode exits when the queue is empty.
    await qm.run(batch_size=batch_size, mode=QueueExecutionMode.drain)
    elapsed = time.perf_counter() - t0
    await conn.close()
    return elapsed


async def procrastinate_drain(dsn: str, n: int, concurrency: int = 10) -> float:
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))

    @app.task(name="noop")
    async def noop() -> None:
        return None

    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        for start in range(0, n, 1000):
            await noop.batch_defer_async(*({} for _ in range(min(1000, n - start))))
        t0 = time.perf_counter()
        await app.run_worker_async(
            wait=False, concurrency=concurrency, install_signal_handlers=False
        )
        return time.perf_counter() - t0


# -- Celery --------------------------------------------------------------------------


def celery_app() -> object:
    from celery import Celery

    app = Celery("bench", broker=os.environ.get("BENCH_AMQP", "amqp://guest:guest@127.0.0.1//"))
    app.conf.update(
        task_acks_late=True,
        task_ignore_result=True,
        result_backend=None,
        task_default_queue=os.environ.get("BENCH_CELERY_QUEUE", "celery"),
        worker_prefetch_multiplier=int(os.environ.get("BENCH_CELERY_PREFETCH", "4")),
        broker_connection_retry_on_startup=True,
    )

    @app.task(name="noop")
    def noop() -> None:
        return None

    return app


app = celery_app() if os.environ.get("BENCH_CELERY_QUEUE") else None


if __name__ == "__main__":
    which, dsn, count, setting = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    runner = {"pgqueuer": pgqueuer_drain, "procrastinate": procrastinate_drain}[which]
    print(f"{run(runner(dsn, count, setting)):.6f}")
