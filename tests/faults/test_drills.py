"""Drills: a broker that is not there at start-up, and a database that stops answering."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest

from jobwire import Client
from jobwire.config import Config
from tests.support.inprocess import running_daemon
from tests.support.proxy import TcpProxy
from tests.support.rows import job_count, jobs_at_least
from tests.support.waiting import wait_for

SUCCEEDED = "status = 'succeeded'"
pytestmark = pytest.mark.timeout(120)
AMQP = "amqp://guest:guest@127.0.0.1"


@pytest.fixture
async def rabbit_proxy() -> AsyncIterator[TcpProxy]:
    proxy = await TcpProxy("127.0.0.1", 5672).start()
    yield proxy
    await proxy.close()


@pytest.fixture
async def queue_name() -> AsyncIterator[str]:
    name = f"jw-drill-{uuid.uuid4().hex[:10]}"
    yield name
    connection = await aio_pika.connect(f"{AMQP}:5672/")
    channel = await connection.channel()
    await channel.queue_delete(name)
    await connection.close()


def config_via(database_url: str, port: int, queue: str, **source: Any) -> Config:
    return Config.model_validate(
        {
            "database": {"url": database_url},
            "workers": {"poll_interval": "200ms"},
            "sources": [
                {
                    "name": "orders",
                    "type": "amqp",
                    "url": f"{AMQP}:{port}/",
                    "queue": queue,
                    "route": {"handler": "noop"},
                    **source,
                }
            ],
        }
    )


async def publish(queue: str, count: int) -> None:
    connection = await aio_pika.connect(f"{AMQP}:5672/")
    channel = await connection.channel(publisher_confirms=True)
    await channel.declare_queue(queue, durable=True)
    for _ in range(count):
        await channel.default_exchange.publish(
            aio_pika.Message(b"{}", message_id=uuid.uuid4().hex), routing_key=queue
        )
    await connection.close()


async def test_broker_absent_at_start_up_then_appearing(
    database_url: str, queue_name: str, rabbit_proxy: TcpProxy
) -> None:
    rabbit_proxy.cut()  # the broker is "not there"
    config = config_via(database_url, rabbit_proxy.port, queue_name)
    async with running_daemon(config, wait_sources=False) as daemon, Client(database_url) as client:
        adapter = daemon.sources[0].adapter

        async def retrying() -> bool:
            return adapter.state.value in ("down", "connecting") and adapter.last_error is not None

        await wait_for(retrying, what="source retrying while the broker is away")
        # Meanwhile jobs written to the database run.
        await client.enqueue("noop")
        await wait_for(
            lambda: jobs_at_least(database_url, 1, SUCCEEDED), what="a job run without the broker"
        )
        rabbit_proxy.restore()  # the broker appears
        await wait_for(
            lambda: adapter.state.value == "up",
            timeout=40,
            what="source connected once the broker appeared",
        )
        await publish(queue_name, 10)
        await wait_for(
            lambda: jobs_at_least(database_url, 11, SUCCEEDED), what="messages became jobs"
        )


async def test_slow_database_times_out_recovers_and_runs_nothing_twice_at_once(
    database_url: str,
) -> None:
    from collections import Counter

    from jobwire import JobContext, JobSpec
    from jobwire.store.postgres import PostgresStore
    from tests.support.pools import fast_config, make_pool

    proxy = await TcpProxy("127.0.0.1", 5432).start()
    proxied = database_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    active: set[int] = set()
    overlaps: list[int] = []
    starts: Counter[int] = Counter()

    async def record(payload: Any, ctx: JobContext) -> None:
        if ctx.job_id in active:
            overlaps.append(ctx.job_id)
        active.add(ctx.job_id)
        starts[ctx.job_id] += 1
        try:
            await asyncio.sleep(0.01)
        finally:  # a run stopped by its pool (lease lost) has ended too
            active.discard(ctx.job_id)

    store = await PostgresStore.connect(proxied, min_size=1, max_size=6, command_timeout=0.5)
    pool = make_pool(
        store,
        {"record": record},
        fast_config(workers={"concurrency": 8, "lease": "2s", "poll_interval": "100ms"}),
    )
    try:
        async with Client(database_url) as client:
            ids = await client.enqueue_many([JobSpec("record", i) for i in range(300)])
        await pool.start()
        await wait_for(lambda: len(starts) > 30, what="work under way")
        proxy.latency = 0.4  # every round trip now takes longer than the statement timeout
        try:
            await asyncio.sleep(3)  # the slow spell: claims and completions time out
        finally:
            proxy.latency = 0.0

        async def all_done() -> bool:
            return await job_count(database_url, SUCCEEDED) == 300

        await wait_for(all_done, timeout=60, what="all 300 jobs done after the slow spell")
    finally:
        await pool.stop()
        await store.close()
        await proxy.close()
    assert overlaps == []  # never two runs of one job at the same time
    assert set(starts) == set(ids)
