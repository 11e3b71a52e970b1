"""Drill: each broker cut away mid-stream (a proxy closes both ends), then back.

An independent producer publishes straight to the broker while the daemon consumes through
a proxy; the proxy is cut for a while in the middle. At the end the confirmed publishes are
counted against job rows: nothing lost, no duplicate jobs, no job run twice.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.faults.harness import (
    Broker,
    drill_config,
    tally,
)
from tests.support.inprocess import running_daemon
from tests.support.proxy import TcpProxy
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(180)
N = 3000


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
