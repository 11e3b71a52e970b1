"""One drill shape for every broker: an independent producer, a daemon behind a TCP proxy.

Each ``Broker`` knows how to publish N confirmed messages without jobwire (its own client,
straight to the broker), and the source config that reaches the broker through a proxy the
drill can cut or hang. The drill then counts broker-confirmed publishes against job rows.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from jobwire.config import Config
from tests.support.activemq import ActiveMQBroker
from tests.support.hostile import Outgoing, publish_stomp
from tests.support.kafka import TansuBroker, create_topic, produce
from tests.support.mqtt import Mosquitto
from tests.support.mqtt import publish as mqtt_publish
from tests.support.processes import free_port
from tests.support.proxy import TcpProxy
from tests.support.rows import fetch

AMQP = "amqp://guest:guest@127.0.0.1"


def body(i: int) -> bytes:
    """Message i: a distinct id, and how long the built-in sleep handler takes for it."""
    return b'{"i": %d, "seconds": 0.005}' % i


class Broker(abc.ABC):
    """A broker as a drill sees it."""

    kind: str
    port: int  # where the broker itself listens (the proxy's target)

    def __init__(self) -> None:
        self.name = f"jw-drill-{uuid.uuid4().hex[:10]}"

    @abc.abstractmethod
    def source(self, proxy_port: int) -> dict[str, Any]:
        """A source reaching the broker through the proxy; short heart-beats."""

    @abc.abstractmethod
    async def publish(self, start: int, n: int) -> int:
        """Publish bodies start..start+n straight to the broker; returns the confirmed."""

    async def prepare(self) -> None:  # noqa: B027 - an optional hook
        """Create what the source consumes from (queue, topic)."""

    async def cleanup(self) -> None:  # noqa: B027 - an optional hook
        """Remove it again."""

    @property
    def publishes_through_proxy(self) -> bool:
        """Kafka: clients follow advertised listeners, so the producer passes the proxy too."""
        return False


class AmqpBroker(Broker):
    kind = "amqp"
    port = 5672

    async def prepare(self) -> None:
        connection = await aio_pika.connect(f"{AMQP}:5672/")
        channel = await connection.channel()
        await channel.declare_queue(self.name, durable=True)
        await connection.close()

    def source(self, proxy_port: int) -> dict[str, Any]:
        return {
            "type": "amqp",
            "url": f"{AMQP}:{proxy_port}/",
            "queue": self.name,
            "heartbeat": "1s",
        }

    async def publish(self, start: int, n: int) -> int:
        connection = await aio_pika.connect(f"{AMQP}:5672/")
        channel = await connection.channel(publisher_confirms=True)
        confirmed = 0
        for first in range(start, start + n, 200):
            batch = range(first, min(start + n, first + 200))
            await asyncio.gather(
                *(
                    channel.default_exchange.publish(
                        aio_pika.Message(
                            body(i),
                            message_id=f"m-{i}",
                            content_type="application/json",
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        ),
                        routing_key=self.name,
                    )
                    for i in batch
                )
            )
            confirmed += len(batch)
        await connection.close()
        return confirmed

    async def cleanup(self) -> None:
        connection = await aio_pika.connect(f"{AMQP}:5672/")
        channel = await connection.channel()
        await channel.queue_delete(self.name)
        await connection.close()


class StompBroker(AmqpBroker):
    """RabbitMQ's STOMP plugin; the producer publishes over AMQP to the same queue."""

    kind = "stomp"
    port = 61613

    def source(self, proxy_port: int) -> dict[str, Any]:
        return {
            "type": "stomp",
            "port": proxy_port,
            "destination": f"/amq/queue/{self.name}",
            "heartbeat": "1s",
        }


class ActiveMqBroker(Broker):
    """A private ActiveMQ over STOMP (flavor activemq); the producer is stomp.py with a
    receipt per persistent SEND, straight to the broker."""

    kind = "activemq"

    def __init__(self, broker: ActiveMQBroker) -> None:
        super().__init__()
        self.port = broker.port

    def source(self, proxy_port: int) -> dict[str, Any]:
        return {
            "type": "stomp",
            "flavor": "activemq",
            "port": proxy_port,
            "destination": f"/queue/{self.name}",
            "heartbeat": "1s",
        }

    async def publish(self, start: int, n: int) -> int:
        outgoing = [Outgoing(body(i), f"m-{i}") for i in range(start, start + n)]
        sent = await asyncio.to_thread(publish_stomp, f"/queue/{self.name}", outgoing, self.port)
        return len(sent)


class KafkaBroker(Broker):
    """A tansu of the drill's own, advertising the proxy's port (see publishes_through_proxy)."""

    kind = "kafka"

    def __init__(self, tansu: TansuBroker, proxy_port: int) -> None:
        super().__init__()
        self.tansu = tansu
        self.port = tansu.port
        self.proxy_port = proxy_port

    @property
    def publishes_through_proxy(self) -> bool:
        return True

    async def prepare(self) -> None:
        await create_topic(f"127.0.0.1:{self.port}", self.name, partitions=3)

    def source(self, proxy_port: int) -> dict[str, Any]:
        return {
            "type": "kafka",
            "bootstrap_servers": f"127.0.0.1:{proxy_port}",
            "topics": [self.name],
            "group_id": self.name,
            "session_timeout": "6s",
            "heartbeat_interval": "1s",
        }

    async def publish(self, start: int, n: int) -> int:
        bodies = [body(i) for i in range(start, start + n)]
        return await produce(f"127.0.0.1:{self.proxy_port}", self.name, bodies)


class MqttBroker(Broker):
    """A private Mosquitto with the shipped limits (the defaults drop queued messages)."""

    kind = "mqtt"

    def __init__(self, mosquitto: Mosquitto) -> None:
        super().__init__()
        self.port = mosquitto.port

    def source(self, proxy_port: int) -> dict[str, Any]:
        return {
            "type": "mqtt",
            "url": f"mqtt://127.0.0.1:{proxy_port}",
            "topics": [self.name],
            "client_id": self.name,
            "keepalive": "1s",
            "session_expiry": "10m",
            "route": {"handler": "noop", "dedup_key": "json:$.i"},
        }

    async def publish(self, start: int, n: int) -> int:
        return await mqtt_publish(self.port, self.name, [body(i) for i in range(start, start + n)])


@contextlib.asynccontextmanager
async def behind_proxy(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Broker, TcpProxy]]:
    """A broker of this kind and a TCP proxy in front of it, for the daemon to consume
    through. Kafka gets its own tansu that advertises the proxy's port: Kafka clients go
    where the broker's metadata says, so every connection, the producer's too, passes it."""
    tansu = None
    if kind == "kafka":
        proxy_port = free_port()
        tansu = TansuBroker(tmp_path / "tansu.log", advertised_port=proxy_port).start()
        broker: Broker = KafkaBroker(tansu, proxy_port)
        proxy = await TcpProxy("127.0.0.1", tansu.port, port=proxy_port).start()
    else:
        if kind == "mqtt":
            broker = MqttBroker(request.getfixturevalue("mosquitto"))
        elif kind == "activemq":
            broker = ActiveMqBroker(request.getfixturevalue("activemq"))
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


def drill_config(database_url: str, broker: Broker, port: int, **database: Any) -> Config:
    """A daemon consuming ``broker`` at ``port`` (a proxy's, or the broker's own);
    ``database`` adds settings (a short command_timeout for database drills)."""
    source = {"name": "drill", "route": {"handler": "noop"}, **broker.source(port)}
    return Config.model_validate(
        {
            "database": {"url": database_url, **database},
            "workers": {"poll_interval": "200ms", "concurrency": 64},
            "sources": [source],
        }
    )


@dataclass
class Tally:
    """What a drill counted at the end."""

    broker: str
    published: int
    jobs: int
    duplicates: int
    redeliveries: int
    reruns: int

    def line(self, drill: str) -> str:
        """One line for the drill log and the closing note."""
        return (
            f"DRILL {drill} {self.broker}: published={self.published} jobs={self.jobs} "
            f"duplicates={self.duplicates} redeliveries={self.redeliveries} "
            f"attempts_beyond_first={self.reruns}"
        )


async def tally(url: str, broker: str, published: int, redeliveries: int) -> Tally:
    """Rows against confirmed publishes: jobs, payload duplicates, attempts beyond the first."""
    (row,) = await fetch(
        url,
        "SELECT count(*) AS n, count(*) - count(DISTINCT payload->>'i') AS d,"
        " coalesce(sum(greatest(attempts - 1, 0)), 0) AS r FROM jobwire.jobs",
    )
    return Tally(broker, published, row["n"], row["d"], redeliveries, int(row["r"]))


def free_ports(n: int) -> list[int]:
    """Distinct free ports."""
    ports: set[int] = set()
    while len(ports) < n:
        ports.add(free_port())
    return sorted(ports)
