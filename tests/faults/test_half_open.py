"""Drill: a half-open connection (the proxy stops forwarding, sockets stay open) to each
broker is noticed within three heart-beats, and the source comes back when traffic does.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.faults.harness import Broker, drill_config
from tests.support.inprocess import running_daemon
from tests.support.proxy import TcpProxy
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(120)
HEARTBEAT = 1.0


async def test_half_open_connection_is_noticed_within_three_heart_beats(
    database_url: str, broker_and_proxy: tuple[Broker, TcpProxy]
) -> None:
    broker, proxy = broker_and_proxy
    config = drill_config(database_url, broker, proxy.port)
    async with running_daemon(config) as daemon:
        adapter = daemon.sources[0].adapter
        loop = asyncio.get_running_loop()
        proxy.hang()
        hung_at = loop.time()
        await wait_for(
            lambda: adapter.state.value != "up",
            timeout=15,
            interval=0.05,
            what="half-open connection noticed",
        )
        noticed_after = loop.time() - hung_at
        proxy.unhang()
        await wait_for(lambda: adapter.state.value == "up", timeout=60, what="up again")
        assert await broker.publish(0, 20) == 20

        async def stored() -> bool:
            return daemon.sources[0].intake.counters.stored >= 20

        await wait_for(stored, timeout=60, what="messages after the connection came back")
    print(f"DRILL half-open {broker.kind}: noticed after {noticed_after:.2f}s")
    # Three heart-beat intervals, plus one second of scheduling slack on a busy machine.
    assert noticed_after <= 3 * HEARTBEAT + 1.0, noticed_after
