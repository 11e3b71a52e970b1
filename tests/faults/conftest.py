"""Every test under tests/faults is a drill: ``pytest -m drill`` runs them alone."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.faults.harness import (
    ActiveMqBroker,
    AmqpBroker,
    Broker,
    KafkaBroker,
    MqttBroker,
    StompBroker,
    behind_proxy,
)
from tests.support.autofailover import AutoFailoverCluster, available
from tests.support.proxy import TcpProxy

BROKERS = [
    "amqp",
    "stomp",
    pytest.param("activemq", marks=pytest.mark.activemq),
    "kafka",
    "mqtt",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/faults/" in str(item.path).replace("\\", "/"):
            item.add_marker(pytest.mark.drill)


@pytest.fixture(params=BROKERS)
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[Broker]:
    """Each broker in turn, consumed directly (no proxy): the session's tansu for Kafka,
    the private Mosquitto (shipped limits) for MQTT."""
    kind = request.param
    if kind == "kafka":
        tansu = request.getfixturevalue("kafka_broker")
        subject: Broker = KafkaBroker(tansu, tansu.port)
    elif kind == "mqtt":
        subject = MqttBroker(request.getfixturevalue("mosquitto"))
    elif kind == "activemq":
        subject = ActiveMqBroker(request.getfixturevalue("activemq"))
    else:
        subject = AmqpBroker() if kind == "amqp" else StompBroker()
    await subject.prepare()
    try:
        yield subject
    finally:
        await subject.cleanup()


@pytest.fixture(params=BROKERS)
async def broker_and_proxy(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Broker, TcpProxy]]:
    """Each broker in turn, consumed through a TCP proxy the drill can cut or hang."""
    async with behind_proxy(request.param, request, tmp_path) as pair:
        yield pair


@pytest.fixture(scope="module")
def cluster() -> Iterator[AutoFailoverCluster]:
    """A pg_auto_failover cluster of the module's own (monitor, primary, secondary)."""
    missing = available()
    if missing is not None:
        pytest.skip(missing)
    nodes = AutoFailoverCluster().start()
    try:
        yield nodes
    finally:
        nodes.stop()
