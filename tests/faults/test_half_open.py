"""Drill: a half-open connection (the proxy stops forwarding, sockets stay open) to Kafka and
MQTT is noticed within three heart-beats, and the source comes back when traffic does.

AMQP and STOMP have the same drill in test_drills.py and test_stomp.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.faults.harness import Broker, KafkaBroker, MqttBroker, drill_config
from tests.support.inprocess import running_daemon
from tests.support.kafka import TansuBroker
from tests.support.processes import free_port
from tests.support.proxy import TcpProxy
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(120)
HEARTBEAT = 1.0


@pytest.fixture(params=["kafka", "mqtt"])
async def broker_and_proxy(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Broker, TcpProxy]]:
    tansu = None
    if request.param == "kafka":
        proxy_port = free_port()
        tansu = TansuBroker(tmp_path / "tansu.log", advertised_port=proxy_port).start()
        broker: Broker = KafkaBroker(tansu, proxy_port)
        proxy = await TcpProxy("127.0.0.1", tansu.port, port=proxy_port).start()
    else:
        broker = MqttBroker(request.getfixturevalue("mosquitto"))
        proxy = await TcpProxy("127.0.0.1", broker.port).start()
    await broker.prepare()
    try:
        yield broker, proxy
    finally:
        await proxy.close()
        if tansu is not None:
            tansu.stop()


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
