"""STOMP and MQTT drains: jobwire beside each bare client's ceiling on the same broker.

STOMP (RabbitMQ's STOMP plugin, 127.0.0.1:61613): N persistent messages are pre-loaded
over AMQP (each with a message id, which RabbitMQ hands STOMP as ``amqp-message-id``,
jobwire's default dedup key) into a durable queue read as ``/amq/queue/<name>``.
Ceiling: a bare stomp.py 1.2 consumer with ``client-individual`` acks, one ACK per
message from its listener, as jobwire acknowledges them, with the same prefetch.

MQTT: a private Mosquitto on a free port with the settings jobwire ships
(deploy/mosquitto/jobwire.conf), as tests/support/mqtt.py runs it: Mosquitto's defaults,
which the machine's 1883 has, drop QoS 1 messages beyond 1,000 queued for a session.
A persistent session (MQTT 5, Receive Maximum = the prefetch) subscribes first, then N
messages ``{"i": n}`` are published at QoS 1; jobwire's route dedups on ``json:$.i``.
Ceiling: a bare aiomqtt client resuming the same kind of session, paho's manual acks on
(as jobwire's adapter runs it), one PUBACK per message.

Both ceilings are timed from their first message, as jobwire's drains are timed from the
first row stored (connecting and subscribing are left out of both).

    .venv/bin/python -m bench.stomp_mqtt --messages 20000
    .venv/bin/python -m bench.stomp_mqtt --stomp-clients asyncio nul-safe --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import stomp
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from tests.support.mqtt import Mosquitto, publish

from bench import amqp_drain
from bench.common import AMQP, Drain, drain_source, run

STOMP_HOST = ("127.0.0.1", 61613)
SESSION_EXPIRY = 600  # seconds: outlives a drain, gone soon after (private broker anyway)
# aiomqtt warns at every publish beyond its 10th in flight: the pre-load keeps 200 in flight.
logging.getLogger("mqtt").setLevel(logging.ERROR)


# -- STOMP ---------------------------------------------------------------------------


async def stomp_ceiling(n: int, prefetch: int = 1000) -> float:
    """Messages per second a bare stomp.py consumer takes and ACKs one by one."""
    queue = f"jw-bench-stomp-raw-{uuid.uuid4().hex[:8]}"
    await amqp_drain.preload(AMQP, queue, n)
    try:
        return n / await asyncio.to_thread(_stomp_consume, queue, n, prefetch)
    finally:
        await amqp_drain.delete_queue(AMQP, queue)


class _Acking(stomp.ConnectionListener):  # type: ignore[misc]
    """ACKs each MESSAGE from stomp.py's receiver thread; sets ``done`` at the n-th."""

    def __init__(self, conn: stomp.Connection12, n: int) -> None:
        self.conn = conn
        self.n = n
        self.seen = 0
        self.first = 0.0  # when the first MESSAGE came
        self.done = threading.Event()

    def on_message(self, frame: Any) -> None:
        if not self.seen:
            self.first = time.perf_counter()
        self.conn.ack(frame.headers["ack"])
        self.seen += 1
        if self.seen >= self.n:
            self.done.set()


def _stomp_consume(queue: str, n: int, prefetch: int) -> float:
    conn = stomp.Connection12([STOMP_HOST], vhost="/", auto_decode=False)
    listener = _Acking(conn, n)
    conn.set_listener("bench", listener)
    conn.connect("guest", "guest", wait=True)
    try:
        conn.subscribe(
            f"/amq/queue/{queue}",
            "1",
            ack="client-individual",
            headers={"prefetch-count": str(prefetch)},
        )
        if not listener.done.wait(600):
            raise TimeoutError(f"stomp.py took {listener.seen} of {n} in 600 s")
        # From the first message, as jobwire's drain counts from its first row; n - 1
        # intervals, scaled to n so the caller's n / seconds is the rate.
        return (time.perf_counter() - listener.first) * n / (n - 1)
    finally:
        conn.disconnect()


async def stomp_drain(n: int, prefetch: int = 1000, concurrency: int | None = 256) -> Drain:
    """N persistent messages drained by jobwire's STOMP source."""
    queue = f"jw-bench-stomp-{uuid.uuid4().hex[:8]}"
    await amqp_drain.preload(AMQP, queue, n)
    try:
        source = {"type": "stomp", "destination": f"/amq/queue/{queue}", "prefetch": prefetch}
        return await drain_source(source, n, concurrency)
    finally:
        await amqp_drain.delete_queue(AMQP, queue)


# -- MQTT ----------------------------------------------------------------------------


@dataclass(frozen=True)
class MqttBacklog:
    """N messages waiting at a private Mosquitto in the persistent session ``client_id``."""

    port: int
    topic: str
    client_id: str


@contextlib.asynccontextmanager
async def mqtt_backlog(n: int, prefetch: int) -> AsyncIterator[MqttBacklog]:
    """A private Mosquitto holding n QoS 1 messages for a session, stopped afterwards."""
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(Path(tmp))
        broker.start()
        try:
            backlog = MqttBacklog(
                broker.port,
                f"jw-bench/{uuid.uuid4().hex[:8]}",
                f"jw-bench-{uuid.uuid4().hex[:8]}",
            )
            async with _session(backlog, prefetch) as client:
                await client.subscribe(backlog.topic, qos=1)
            bodies = [b'{"i": %d}' % i for i in range(n)]
            if await publish(backlog.port, backlog.topic, bodies) != n:
                raise RuntimeError("Mosquitto did not acknowledge every message")
            yield backlog
        finally:
            broker.stop()


def _session(backlog: MqttBacklog, prefetch: int) -> aiomqtt.Client:
    """A client of the persistent session, as jobwire's adapter connects (never clean)."""
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = SESSION_EXPIRY
    properties.ReceiveMaximum = prefetch
    return aiomqtt.Client(
        "127.0.0.1",
        backlog.port,
        identifier=backlog.client_id,
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=False,
        properties=properties,
        timeout=10,
    )


async def mqtt_ceiling(n: int, prefetch: int = 1000) -> float:
    """Messages per second a bare aiomqtt QoS 1 client takes with manual PUBACKs."""
    async with mqtt_backlog(n, prefetch) as backlog:
        client = _session(backlog, prefetch)
        # aiomqtt acks inside paho otherwise; the same switch jobwire's adapter sets.
        client._client.manual_ack_set(True)
        seen, t0 = 0, 0.0
        async with client:
            async with asyncio.timeout(600):
                async for message in client.messages:
                    if not seen:
                        # From the first message, as jobwire's drain counts from its first
                        # row: the connect and the session's resumption are left out.
                        t0 = time.perf_counter()
                    client._client.ack(message.mid, message.qos)
                    seen += 1
                    if seen >= n:
                        break
            elapsed = time.perf_counter() - t0
        # n - 1 intervals after the first message.
        return (n - 1) / elapsed


async def mqtt_drain(n: int, prefetch: int = 1000, concurrency: int | None = 256) -> Drain:
    """N QoS 1 messages drained by jobwire's MQTT source from its persistent session."""
    async with mqtt_backlog(n, prefetch) as backlog:
        source = {
            "type": "mqtt",
            "url": f"mqtt://127.0.0.1:{backlog.port}",
            "topics": [backlog.topic],
            "client_id": backlog.client_id,
            "session_expiry": f"{SESSION_EXPIRY}s",
            "prefetch": prefetch,
            "route": {"handler": "noop", "dedup_key": "json:$.i"},
        }
        return await drain_source(source, n, concurrency)


async def compare_stomp_clients(
    n: int, clients: list[str], rounds: int, prefetch: int, concurrency: int
) -> None:
    """The STOMP drain on each client ``JOBWIRE_STOMP_FRAME_READER`` names (asyncio,
    nul-safe, stomp.py), alternating within each round after a bare stomp.py ceiling."""
    figures: dict[str, list[tuple[float, float, float, float]]] = {c: [] for c in clients}
    for number in range(1, rounds + 1):
        ceiling = await stomp_ceiling(n, prefetch)
        print(f"round {number}: bare stomp.py consumer {ceiling:,.0f} msg/s", flush=True)
        for client in clients:
            os.environ["JOBWIRE_STOMP_FRAME_READER"] = client  # the daemon inherits it
            try:
                drain = await stomp_drain(n, prefetch, concurrency)
            finally:
                del os.environ["JOBWIRE_STOMP_FRAME_READER"]
            intake = drain.jobs / drain.intake_seconds
            row = (drain.rate, drain.rate / ceiling, intake, drain.cpu_us_per_job)
            figures[client].append(row)
            print(
                f"  {client:>9}: drain {row[0]:,.0f} jobs/s ({row[1]:.0%} of the ceiling), "
                f"intake {intake:,.0f} msg/s, daemon {row[3]:.0f} us/job",
                flush=True,
            )
    print(f"medians of {rounds} rounds:")
    for client, rows in figures.items():
        drain, ratio, intake, cpu = (statistics.median(col) for col in zip(*rows, strict=True))
        print(
            f"  {client:>9}: drain {drain:,.0f} jobs/s ({ratio:.0%}), intake {intake:,.0f} "
            f"msg/s, daemon {cpu:.0f} us/job"
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--prefetch", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument(
        "--stomp-clients",
        nargs="+",
        choices=["asyncio", "nul-safe", "stomp.py"],
        help="only STOMP: the drain on each of these clients, alternating (see --rounds)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="with --stomp-clients")
    args = parser.parse_args()
    n = args.messages
    if args.stomp_clients:
        await compare_stomp_clients(
            n, args.stomp_clients, args.rounds, args.prefetch, args.concurrency
        )
        return
    rate = await stomp_ceiling(n, args.prefetch)
    print(f"bare stomp.py consumer, client-individual acks: {rate:,.0f} msg/s")
    result = await stomp_drain(n, args.prefetch, args.concurrency)
    result.report(ceiling_seconds=n / rate)
    rate = await mqtt_ceiling(n, args.prefetch)
    print(f"bare aiomqtt QoS 1 consumer, manual acks: {rate:,.0f} msg/s")
    result = await mqtt_drain(n, args.prefetch, args.concurrency)
    result.report(ceiling_seconds=n / rate)


if __name__ == "__main__":
    run(main())
