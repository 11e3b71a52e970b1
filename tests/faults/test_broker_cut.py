"""Drill: each broker cut away mid-stream (a proxy closes both ends), then back.

An independent producer publishes straight to the broker while the daemon consumes through
a proxy; the proxy is cut for a while in the middle. At the end the confirmed publishes are
counted against job rows: nothing lost, no duplicate jobs, no job run twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.faults.harness import (
    AmqpBroker,
    Broker,
    KafkaBroker,
    MqttBroker,
    StompBroker,
    drill_config,
    tally,
)
from tests.support.inprocess import running_daemon
from tests.support.kafka import TansuBroker
from tests.support.processes import free_port
from tests.support.proxy import TcpProxy
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(180)
N = 3000


@pytest.fixture(params=["amqp", "stomp", "kafka", "mqtt"])
async def broker_and_proxy(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Broker, TcpProxy]]:
    kind = request.param
    tansu = None
    if kind == "kafka":
        # Kafka clients go where the broker's metadata says: this tansu advertises the
        # proxy's port, so every connection, the producer's too, passes the proxy.
        proxy_port = free_port()
        tansu = TansuBroker(tmp_path / "tansu.log")
        tansu.argv = (
            lambda: [  # type: ignore[method-assign]
                *TansuBroker.argv(tansu)[:3],
                f"tcp://127.0.0.1:{tansu.port}",
                "--advertised-listener-url",
                f"tcp://127.0.0.1:{proxy_port}",
            ]
        )
        tansu.start()
        broker: Broker = KafkaBroker(tansu, proxy_port)
        proxy = await TcpProxy("127.0.0.1", tansu.port, port=proxy_port).start()
    else:
        if kind == "mqtt":
            broker = MqttBroker(request.getfixturevalue("mosquitto"))
        else:
            broker = AmqpBroker() if kind == "amqp" else StompBroker()
        proxy = await TcpProxy("127.0.0.1", broker.port).start()
    await broker.prepare()
    try:
        yield broker, proxy
    finally:
        await proxy.close()
        await broker.cleanup()
        if tansu is not None:
            tansu.stop()


async def test_broker_cut_mid_stream_loses_nothing_and_runs_nothing_twice(
    database_url: str, broker_and_proxy: tuple[Broker, TcpProxy]
) -> None:
    broker, proxy = broker_and_proxy
    config = drill_config(database_url, broker, proxy.port)
    async with running_daemon(config) as daemon:
        intake, adapter = daemon.sources[0].intake, daemon.sources[0].adapter
        if broker.publishes_through_proxy:
            # The producer would be cut too: publish everything first, cut mid-consumption.
            published = await broker.publish(0, N)
            producer = None
        else:
            producer = asyncio.create_task(broker.publish(0, N))
        await wait_for(lambda: intake.counters.stored >= N // 5, timeout=60, what="mid-stream")
        proxy.cut()
        await wait_for(
            lambda: adapter.state.value in ("down", "connecting"),
            timeout=30,
            what="the source noticed the cut",
        )
        await asyncio.sleep(1.0)  # the outage: the broker stays away this long
        proxy.restore()
        if producer is not None:
            published = await producer
        await wait_for(lambda: adapter.state.value == "up", timeout=60, what="reconnected")

        async def all_stored() -> bool:
            return (await tally(database_url, broker.kind, published, 0)).jobs >= published

        await wait_for(all_stored, timeout=90, what=f"{published} jobs")
        await wait_for(
            lambda: daemon.pool is not None and daemon.pool.figures()["running"] == 0,
            what="every job finished",
        )
        redeliveries = intake.counters.duplicate
    result = await tally(database_url, broker.kind, published, redeliveries)
    print(result.line("broker-cut"))
    assert published == N
    assert (result.jobs, result.duplicates, result.reruns) == (N, 0, 0)
