"""Drill: PostgreSQL cut away mid-stream (a proxy closes both ends), then back, per broker.

While the store is away each source stops taking messages: AMQP and STOMP send the batch
back (NACK), Kafka and MQTT keep it and store it again (a log must stay in order; MQTT
redelivers only on reconnect). Afterwards the confirmed publishes are counted against job
rows: nothing lost, no duplicate jobs.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.faults.harness import Broker, drill_config, tally
from tests.support.inprocess import running_daemon
from tests.support.proxy import TcpProxy
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(180)
N = 3000


async def test_store_cut_mid_stream_loses_nothing_and_duplicates_nothing(
    database_url: str, broker: Broker
) -> None:
    proxy = await TcpProxy("127.0.0.1", 5432).start()
    proxied = database_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    config = drill_config(
        proxied, broker, broker.port, command_timeout="2s", pool={"min": 1, "max": 6}
    )
    try:
        async with running_daemon(config) as daemon:
            intake, adapter = daemon.sources[0].intake, daemon.sources[0].adapter
            producer = asyncio.create_task(broker.publish(0, N))
            await wait_for(lambda: intake.counters.stored >= N // 10, timeout=60, what="under way")
            proxy.cut()
            try:
                await wait_for(lambda: "store" in intake.held, what="intake held for the store")
                await asyncio.sleep(1.5)  # the outage itself: the store is away this long
            finally:
                proxy.restore()
            published = await producer

            async def all_stored() -> bool:
                return (await tally(database_url, broker.kind, published, 0)).jobs >= published

            await wait_for(all_stored, timeout=90, what=f"{published} jobs")
            if adapter.requeue_redelivers:
                assert intake.counters.nacked > 0  # the failed batch went back to the broker
            if broker.kind == "kafka":
                # Polling went on through the outage: no rebalance, one consumer session.
                assert adapter.assignments == 1  # type: ignore[attr-defined]
            redeliveries = intake.counters.duplicate
    finally:
        await proxy.close()
    result = await tally(database_url, broker.kind, published, redeliveries)
    print(result.line("store-cut"))
    assert published == N
    assert (result.jobs, result.duplicates) == (N, 0)
