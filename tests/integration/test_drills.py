"""Drills: a broker that is not there at start-up, and a half-open AMQP connection."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import asyncpg
import pytest

from jobwire import Client
from jobwire.config import Config
from tests.support.inprocess import running_daemon
from tests.support.proxy import TcpProxy
from tests.support.waiting import wait_for

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


async def succeeded(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(
            await conn.fetchval("SELECT count(*) FROM jobwire.jobs WHERE status = 'succeeded'")
        )
    finally:
        await conn.close()


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
        await wait_for(lambda: _at_least(database_url, 1), what="a job run without the broker")
        rabbit_proxy.restore()  # the broker appears
        await wait_for(
            lambda: _true(adapter.state.value == "up"),
            timeout=40,
            what="source connected once the broker appeared",
        )
        await publish(queue_name, 10)
        await wait_for(lambda: _at_least(database_url, 11), what="messages became jobs")


async def test_half_open_amqp_connection_is_noticed_by_heart_beats(
    database_url: str, queue_name: str, rabbit_proxy: TcpProxy
) -> None:
    config = config_via(database_url, rabbit_proxy.port, queue_name, heartbeat="1s")
    async with running_daemon(config) as daemon:
        adapter = daemon.sources[0].adapter
        loop = asyncio.get_running_loop()
        rabbit_proxy.hang()
        hung_at = loop.time()
        await wait_for(
            lambda: _true(adapter.state.value != "up"),
            timeout=10,
            interval=0.05,
            what="half-open connection noticed",
        )
        noticed_after = loop.time() - hung_at
        rabbit_proxy.unhang()
        await wait_for(lambda: _true(adapter.state.value == "up"), timeout=40, what="reconnected")
        await publish(queue_name, 5)
        await wait_for(lambda: _at_least(database_url, 5), what="jobs after reconnecting")
    # aiormq gives up after missing heart-beats; three intervals (+1s of scheduling slack).
    assert noticed_after <= 4.0, noticed_after


async def _at_least(url: str, n: int) -> bool:
    return await succeeded(url) >= n


async def _true(value: bool) -> bool:
    return value
