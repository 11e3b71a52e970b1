"""Outbox relay throughput per protocol, beside the bare client with the same confirmation.

For each output type (AMQP, Kafka on tansu, MQTT, STOMP):

1. bare: the broker's client publishes N messages in batches of B, each batch waiting for
   the broker's confirmation (AMQP publisher confirms, Kafka acks=all, MQTT QoS 1 PUBACK);
   for STOMP, which has no asyncio client, jobwire's own SEND+RECEIPT publisher alone (no
   store): the ceiling of the publishing part;
2. relay: N rows put in the outbox of a fresh database, then one ``OutboxRelay`` drains
   them (claim with a lease, publish, confirm, mark) with the same batch size; the time is
   first claim -> every row marked sent.

Bare and relay alternate for ``--rounds`` rounds; prints the medians of both, the median of
the rounds' ratios (target: relay >= 70% of bare) and each round's ratio.

    .venv/bin/python bench/outbox.py --messages 20000 --batch 500 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aio_pika
import aiomqtt
import asyncpg
from aiokafka import AIOKafkaProducer
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script, too

from tests.support.kafka import TansuBroker, create_topic

from bench.common import fresh_database, run
from jobwire.adapters.registry import build_publisher
from jobwire.config import Config
from jobwire.effects import OutboxRow
from jobwire.outbox import OutboxRelay
from jobwire.store.postgres import PostgresStore, migrate

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
BODY = b'{"bench": true, "padding": "' + b"x" * 100 + b'"}'


def rows(n: int) -> list[OutboxRow]:
    """Synthetic outbox rows (the bare STOMP case)."""
    return [OutboxRow(i, 1, i, None, {}, BODY) for i in range(1, n + 1)]


async def timed(n: int, batch: int, send: Callable[[int], Awaitable[None]]) -> float:
    """Messages per second of ``send(count)`` called batch by batch."""
    started = time.perf_counter()
    for start in range(0, n, batch):
        await send(min(batch, n - start))
    return n / (time.perf_counter() - started)


async def bare_amqp(queue: str, n: int, batch: int) -> float:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = channel.default_exchange

        async def send(count: int) -> None:
            await asyncio.gather(
                *(
                    exchange.publish(
                        aio_pika.Message(
                            BODY,
                            message_id=uuid.uuid4().hex,
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        ),
                        routing_key=queue,
                        mandatory=True,
                    )
                    for _ in range(count)
                )
            )

        return await timed(n, batch, send)


async def bare_kafka(bootstrap: str, topic: str, n: int, batch: int) -> float:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:

        async def send(count: int) -> None:
            futures = [
                await producer.send(topic, BODY, headers=[("jobwire-id", b"x")])
                for _ in range(count)
            ]
            await asyncio.gather(*futures)

        return await timed(n, batch, send)
    finally:
        await producer.stop()


async def bare_mqtt(topic: str, n: int, batch: int) -> float:
    # The relay's settings: no in-flight window of paho's own (the batch bounds it; with one,
    # paho rescans every unacknowledged message on each PUBACK). A message carries an id as
    # a user property, as the relay's do (and the bare Kafka records a header).
    properties = Properties(PacketTypes.PUBLISH)
    properties.UserProperty = [("jobwire-id", "x")]
    async with aiomqtt.Client(
        "127.0.0.1", 1883, protocol=aiomqtt.ProtocolVersion.V5, max_inflight_messages=0
    ) as client:
        # Its warning for more than 10 publishes waiting, logged for each one past that.
        client.pending_calls_threshold = batch

        async def send(count: int) -> None:
            await asyncio.gather(
                *(client.publish(topic, BODY, qos=1, properties=properties) for _ in range(count))
            )

        return await timed(n, batch, send)


async def bare_stomp(config: Config, n: int, batch: int) -> float:
    publisher = build_publisher("bench", config.outputs["bench"])
    await publisher.connect()
    try:
        all_rows = rows(n)
        started = time.perf_counter()
        for start in range(0, n, batch):
            result = await publisher.publish(all_rows[start : start + batch], 30)
            assert result.error is None, result.error
        return n / (time.perf_counter() - started)
    finally:
        await publisher.close()


async def relay_rate(config: Config, n: int) -> float:
    """Fill a fresh database's outbox with n rows; one relay drains it."""
    async with fresh_database("jwoutbox") as url:
        await migrate(url, "jobwire")
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(
                "INSERT INTO jobwire.outbox (output, job_id, n, body)"
                " SELECT 'bench', g, 1, $1 FROM generate_series(1, $2) g",
                BODY,
                n,
            )
            await conn.execute("ANALYZE jobwire.outbox")
        finally:
            await conn.close()
        store = await PostgresStore.connect(url, "jobwire", min_size=1, max_size=4)
        output = config.outputs["bench"]
        relay = OutboxRelay(
            "bench",
            build_publisher("bench", output),
            store,
            batch_size=output.batch_size,
            poll_interval=0.01,
        )
        try:
            await relay.publisher.connect()
            relay._connected = True
            started = time.perf_counter()
            while relay.counters.sent < n:
                if not await relay.drain():
                    await asyncio.sleep(0.01)
            elapsed = time.perf_counter() - started
            assert relay.counters.failed == 0, relay.describe()
            return n / elapsed
        finally:
            await relay.publisher.close()
            await store.close()


def output_config(output: dict[str, Any], batch: int) -> Config:
    return Config.model_validate({"outputs": {"bench": {**output, "batch_size": batch}}})


@contextlib.asynccontextmanager
async def amqp_queue() -> AsyncIterator[str]:
    name = f"jw-bench-out-{uuid.uuid4().hex[:8]}"
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(name, durable=True)
        try:
            yield name
        finally:
            await queue.delete(if_unused=False, if_empty=False)


async def rounds(
    count: int, bare: Callable[[], Awaitable[float]], relay: Callable[[], Awaitable[float]]
) -> tuple[list[float], list[float]]:
    """``count`` rounds of bare then relay, alternating: this machine's speed wanders from
    one second to the next, and a ratio of two measures taken side by side wanders less."""
    bares: list[float] = []
    relays: list[float] = []
    for _ in range(count):
        bares.append(await bare())
        relays.append(await relay())
    return bares, relays


async def main(n: int, batch: int, only: list[str], count: int) -> None:
    results: list[tuple[str, list[float], list[float]]] = []
    if "amqp" in only:
        async with amqp_queue() as queue:
            config = output_config({"type": "amqp", "routing_key": queue}, batch)
            results.append(
                (
                    "amqp",
                    *await rounds(
                        count,
                        lambda: bare_amqp(queue, n, batch),
                        lambda: relay_rate(config, n),
                    ),
                )
            )
    if "kafka" in only:
        with tempfile.TemporaryDirectory() as tmp:
            broker = TansuBroker(Path(tmp) / "tansu.log").start()
            try:
                topic = f"jw-bench-{uuid.uuid4().hex[:8]}"
                await create_topic(broker.bootstrap, topic, partitions=3)
                config = output_config(
                    {
                        "type": "kafka",
                        "bootstrap_servers": broker.bootstrap,
                        "topic": topic,
                        "idempotent": False,  # tansu has no InitProducerId
                    },
                    batch,
                )
                results.append(
                    (
                        "kafka",
                        *await rounds(
                            count,
                            lambda: bare_kafka(broker.bootstrap, topic, n, batch),
                            lambda: relay_rate(config, n),
                        ),
                    )
                )
            finally:
                broker.stop()
    if "mqtt" in only:
        topic = f"jw-bench/{socket.gethostname()}/{uuid.uuid4().hex[:6]}"
        config = output_config({"type": "mqtt", "topic": topic}, batch)
        results.append(
            (
                "mqtt",
                *await rounds(
                    count, lambda: bare_mqtt(topic, n, batch), lambda: relay_rate(config, n)
                ),
            )
        )
    if "stomp" in only:
        async with amqp_queue() as queue, amqp_queue() as second:
            bare_config = output_config(
                {"type": "stomp", "destination": f"/amq/queue/{queue}"}, batch
            )
            config = output_config({"type": "stomp", "destination": f"/amq/queue/{second}"}, batch)
            results.append(
                (
                    "stomp",
                    *await rounds(
                        count,
                        lambda: bare_stomp(bare_config, n, batch),
                        lambda: relay_rate(config, n),
                    ),
                )
            )
    print(f"outbox relay, {n} messages, batches of {batch}, {count} alternating rounds (medians)")
    print(f"{'protocol':<8} {'bare msg/s':>12} {'relay msg/s':>12} {'ratio':>7}  rounds")
    for name, bares, relays in results:
        ratios = [r / b for b, r in zip(bares, relays, strict=True)]
        each = ", ".join(f"{r:.0%}" for r in ratios)
        print(
            f"{name:<8} {statistics.median(bares):>12,.0f} {statistics.median(relays):>12,.0f}"
            f" {statistics.median(ratios):>7.0%}  {each}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument(
        "--only", nargs="*", default=["amqp", "kafka", "mqtt", "stomp"], help="protocols"
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternating bare/relay rounds")
    args = parser.parse_args()
    run(main(args.messages, args.batch, args.only, args.rounds))
