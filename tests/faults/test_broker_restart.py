"""Drill: the broker itself restarted mid-stream (STOMP's RabbitMQ, a private Mosquitto).

Half the messages are published (confirmed) before the restart and half after; every one
must become exactly one job. The AMQP restart drill is in
tests/integration/brokers/test_amqp.py; Kafka's test broker (tansu, memory storage in this
build) loses its data on restart, so it has none.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.faults.harness import Broker, MqttBroker, StompBroker, drill_config, tally
from tests.support.inprocess import running_daemon
from tests.support.mqtt import Mosquitto
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]
HALF = 1000


async def rabbitmqctl(*args: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        "rabbitmqctl", *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    assert await asyncio.wait_for(proc.wait(), 120) == 0


class Restartable:
    """How to restart each broker; always brought back, even when the drill fails."""

    def __init__(self, kind: str, mosquitto: Mosquitto | None) -> None:
        self.kind = kind
        self.mosquitto = mosquitto

    async def stop(self) -> None:
        if self.mosquitto is not None:
            await asyncio.to_thread(self.mosquitto.stop)  # SIGTERM: it saves its sessions
        else:
            await rabbitmqctl("stop_app")

    async def start(self) -> None:
        if self.mosquitto is not None:
            await asyncio.to_thread(self.mosquitto.start)
        else:
            await rabbitmqctl("start_app")
            await rabbitmqctl("await_online_nodes", "1")


@pytest.fixture(params=["stomp", "mqtt"])
async def broker(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Broker, Restartable]]:
    mosquitto = None
    if request.param == "mqtt":
        mosquitto = Mosquitto(tmp_path).start()
        subject: Broker = MqttBroker(mosquitto)
    else:
        subject = StompBroker()
    restart = Restartable(request.param, mosquitto)
    await subject.prepare()
    try:
        yield subject, restart
    finally:
        if mosquitto is not None:
            mosquitto.stop()
        else:
            await restart.start()  # whatever happened, RabbitMQ is left running
            await subject.cleanup()


async def test_broker_restart_mid_stream_loses_nothing(
    database_url: str, broker: tuple[Broker, Restartable]
) -> None:
    subject, restart = broker
    config = drill_config(database_url, subject, subject.port)
    async with running_daemon(config) as daemon:
        intake, adapter = daemon.sources[0].intake, daemon.sources[0].adapter
        published = await subject.publish(0, HALF)
        await wait_for(lambda: intake.counters.stored >= HALF // 4, what="mid-stream")
        await restart.stop()
        try:
            await wait_for(
                lambda: adapter.state.value in ("down", "connecting"),
                timeout=30,
                what="the source noticed the broker stop",
            )
        finally:
            await restart.start()
        await wait_for(lambda: adapter.state.value == "up", timeout=90, what="reconnected")
        published += await subject.publish(HALF, HALF)

        async def all_stored() -> bool:
            return (await tally(database_url, subject.kind, published, 0)).jobs >= published

        await wait_for(all_stored, timeout=90, what=f"{published} jobs")
        redeliveries = intake.counters.duplicate
    result = await tally(database_url, subject.kind, published, redeliveries)
    print(result.line("broker-restart"))
    assert published == 2 * HALF
    assert (result.jobs, result.duplicates, result.reruns) == (2 * HALF, 0, 0)
