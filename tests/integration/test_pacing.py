"""Pacing against a real pool and PostgreSQL: a stream faster than the pool goes to it
directly rather than through the database and a claim; a pool held by long jobs does not
hold the intake; and work the intake did not bring (a retry come due) is not starved."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from typing import Any

import pytest

from jobwire.config import Config
from jobwire.handlers import JobContext
from jobwire.intake import Intake
from jobwire.routing import Router
from jobwire.store.postgres import PostgresStore
from jobwire.worker import WorkerPool, fleet
from tests.support.fake_adapter import FakeAdapter
from tests.support.pools import fast_config, make_pool
from tests.support.rows import fetch, job_count, jobs_at_least, scalar
from tests.support.waiting import wait_for

SOURCE = {
    "name": "stream",
    "type": "amqp",
    "queue": "q",
    "route": {"handler": "work", "dedup_key": "json:$.id"},
}


class Stream:
    """An intake on a fake broker feeding a real pool."""

    def __init__(
        self, store: PostgresStore, handler: Any, concurrency: int, **workers: Any
    ) -> None:
        config: Config = fast_config(
            workers={"concurrency": concurrency, **workers}, sources=[SOURCE]
        )
        self.adapter = FakeAdapter()
        self.pool: WorkerPool = make_pool(store, {"work": handler}, config)
        router = Router(config.sources[0], {"work"}, self.adapter.default_dedup)
        self.intake = Intake(config.sources[0], self.adapter, router, store, self.pool)
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Stream:
        await self.pool.start()
        self._task = asyncio.create_task(self.intake.run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self.pool.stop()

    def send(self, ids: range) -> None:
        for i in ids:
            self.intake.submit(self.adapter.message(json.dumps({"id": i}).encode()))


def succeeded(url: str, n: int) -> Awaitable[bool]:
    return jobs_at_least(url, n, "status = 'succeeded'")


async def test_a_stream_faster_than_the_pool_goes_to_it_directly(
    database_url: str, pg_store: PostgresStore
) -> None:
    async def work(payload: Any, ctx: JobContext) -> None:
        await asyncio.sleep(0.002)

    n = 1500
    # The whole stream arrives at once, and no delivery waits past hand_off_wait: at the
    # longest wait the pool need not run it all within the default half second, which a
    # slow machine did not.
    async with Stream(pg_store, work, concurrency=8, hand_off_wait="5s") as stream:
        stream.send(range(n))
        await wait_for(lambda: succeeded(database_url, n), timeout=60, what="all ran")
        figures = stream.pool.figures()
    # Without pacing all but the first 8 would be stored ready and claimed back.
    assert figures["direct"] > n // 2, figures
    assert await scalar(database_url, "SELECT count(*) FROM jobwire.job_runs") == n
    assert len(stream.adapter.settled) == n


async def test_a_pool_held_by_long_jobs_does_not_hold_the_intake(
    database_url: str, pg_store: PostgresStore
) -> None:
    gate = asyncio.Event()

    async def work(payload: Any, ctx: JobContext) -> None:
        await gate.wait()

    async with Stream(pg_store, work, concurrency=4) as stream:
        stream.send(range(60))
        # Pacing waits once, then stores the rest as ready jobs and acks them: the broker
        # is not held until a slot frees.
        await wait_for(lambda: len(stream.adapter.settled) == 60, what="all stored and acked")
        assert await job_count(database_url, "status = 'running'") == 4
        assert await job_count(database_url, "status = 'pending'") == 56
        gate.set()
        await wait_for(lambda: succeeded(database_url, 60), timeout=60, what="all ran")
    assert await scalar(database_url, "SELECT count(*) FROM jobwire.job_runs") == 60


async def test_a_retry_comes_due_and_runs_while_a_stream_fills_every_slot(
    database_url: str, pg_store: PostgresStore
) -> None:
    failed_once: set[int] = set()

    async def work(payload: Any, ctx: JobContext) -> None:
        if payload["id"] == 0 and not failed_once:
            failed_once.add(0)
            raise RuntimeError("first attempt fails")
        await asyncio.sleep(0.01)

    n = 1200
    async with Stream(pg_store, work, concurrency=4) as stream:
        stream.send(range(n))
        await wait_for(lambda: succeeded(database_url, n), timeout=90, what="all ran")
    rows = await fetch(
        database_url,
        "SELECT j.payload->>'id' AS id, r.attempt, r.finished_at FROM jobwire.job_runs r "
        "JOIN jobwire.jobs j ON j.id = r.job_id ORDER BY r.finished_at",
    )
    retried = next(i for i, r in enumerate(rows) if r["id"] == "0" and r["attempt"] == 2)
    # The retry is found by a poll (every 100 ms here) while the intake hands each freed
    # slot a new job: it must run within the stream, not after it.
    assert retried < len(rows) - 200, (retried, len(rows))


@pytest.mark.parametrize("other", ["instance", "setting"])
async def test_with_another_instance_or_no_wait_set_the_stream_is_stored_for_any_to_claim(
    database_url: str, pg_store: PostgresStore, other: str
) -> None:
    async def work(payload: Any, ctx: JobContext) -> None:
        await asyncio.sleep(0.002)

    if other == "instance":
        # Another daemon (perhaps one with workers only) could run what this one stores.
        await pg_store.register_worker("elsewhere", "host", 1, "test")
    n = 600
    workers = {"hand_off_wait": 0} if other == "setting" else {}
    async with Stream(pg_store, work, concurrency=8, **workers) as stream:
        stream.send(range(n))
        await wait_for(lambda: succeeded(database_url, n), timeout=60, what="all ran")
        figures = stream.pool.figures()
    assert figures["claimed"] > n // 2, figures


@pytest.mark.parametrize(
    ("twin", "path"),
    [
        ("consumes the same queue", "direct"),  # what this intake holds back, the broker
        ("serves other queues only", "direct"),  # gives the twin; or it could not run it
        ("has no sources", "claimed"),
    ],
)
async def test_beside_a_twin_fed_from_the_same_queue_the_stream_still_goes_direct(
    database_url: str, pg_store: PostgresStore, twin: str, path: str
) -> None:
    async def work(payload: Any, ctx: JobContext) -> None:
        await asyncio.sleep(0.002)

    mine = fast_config(sources=[SOURCE])
    if twin == "consumes the same queue":
        state = fleet.describe(mine, ["default"])
    else:
        state = fleet.describe(fast_config(), ["other" if twin.startswith("serves") else "default"])
    await pg_store.register_worker("twin", "host", 1, "test", state)
    n = 600
    async with Stream(pg_store, work, concurrency=8, hand_off_wait="5s") as stream:
        stream.send(range(n))
        await wait_for(lambda: succeeded(database_url, n), timeout=60, what="all ran")
        figures = stream.pool.figures()
    assert figures[path] > n // 2, figures


async def test_an_instance_whose_heartbeat_stopped_does_not_count(
    database_url: str, pg_store: PostgresStore
) -> None:
    await pg_store.register_worker("gone", "host", 1, "test")
    await pg_store.register_worker("me", "host", 2, "test")
    assert len(await pg_store.other_workers("me", 60)) == 1
    await scalar(
        database_url,
        "UPDATE jobwire.workers SET heartbeat_at = now() - interval '2 minutes' WHERE id = 'gone'",
    )
    assert await pg_store.other_workers("me", 60) == []


async def test_a_row_whose_state_is_not_an_object_reads_as_saying_nothing(
    database_url: str, pg_store: PostgresStore
) -> None:
    await pg_store.register_worker("odd", "host", 1, "test")
    await scalar(database_url, "UPDATE jobwire.workers SET state = '[1, \"x\"]' WHERE id = 'odd'")
    assert await pg_store.other_workers("me", 60) == [{}]
