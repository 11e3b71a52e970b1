"""AMQP drain: jobwire (store, ack, run) against a bare aio-pika consumer on the same broker.

1. Pre-loads N persistent messages into a fresh queue and drains it with a raw aio-pika
   consumer that acks in batches (multiple=True every 500): the broker's ceiling here.
2. Pre-loads N persistent messages into another fresh queue, starts ``jobwire run`` (real
   CLI, subprocess, no-op handler, durable commits) and waits until every job succeeded.
   The time is taken from the rows: first job stored -> last job finished.
Prints both rates and their ratio.

    .venv/bin/python bench/amqp_drain.py --messages 50000
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

import aio_pika
import asyncpg
import yaml

from jobwire.store.postgres import migrate

REPO = Path(__file__).resolve().parents[1]


async def preload(url: str, queue: str, n: int) -> None:
    connection = await aio_pika.connect(url)
    channel = await connection.channel(publisher_confirms=True)
    await channel.declare_queue(queue, durable=True)
    body = b'{"bench": true}'
    for start in range(0, n, 1000):
        await asyncio.gather(
            *(
                channel.default_exchange.publish(
                    aio_pika.Message(
                        body,
                        message_id=uuid.uuid4().hex,
                        content_type="application/json",
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ),
                    routing_key=queue,
                )
                for _ in range(min(1000, n - start))
            )
        )
    await connection.close()


async def raw_drain(url: str, queue: str, n: int, prefetch: int) -> float:
    connection = await aio_pika.connect(url)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=prefetch)
    q = await channel.declare_queue(queue, durable=True)
    done = asyncio.Event()
    seen = 0
    t0 = time.perf_counter()

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        nonlocal seen
        seen += 1
        if seen % 500 == 0 or seen == n:
            await message.ack(multiple=True)
        if seen == n:
            done.set()

    await q.consume(on_message)
    await done.wait()
    elapsed = time.perf_counter() - t0
    await channel.queue_delete(queue)
    await connection.close()
    return elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument(
        "--server",
        default=os.environ.get("JOBWIRE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres"),
    )
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--prefetch", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    n = args.messages

    raw_queue = f"jw-bench-raw-{uuid.uuid4().hex[:8]}"
    await preload(args.amqp, raw_queue, n)
    raw = await raw_drain(args.amqp, raw_queue, n, args.prefetch)
    print(f"raw aio-pika consume, batched acks: {n} msgs in {raw:.2f}s = {n / raw:,.0f} msg/s")

    name = f"jwbench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(args.server)
    await admin.execute(f'CREATE DATABASE "{name}"')
    db_url = args.server.rpartition("/")[0] + "/" + name
    queue = f"jw-bench-{uuid.uuid4().hex[:8]}"
    try:
        await migrate(db_url, "jobwire")
        await preload(args.amqp, queue, n)
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "jobwire.yaml"
            config.write_text(
                yaml.safe_dump(
                    {
                        "database": {"url": db_url},
                        "workers": {"concurrency": args.concurrency},
                        "sources": [
                            {
                                "name": "bench",
                                "type": "amqp",
                                "url": args.amqp,
                                "queue": queue,
                                "prefetch": args.prefetch,
                                "route": {"handler": "noop"},
                            }
                        ],
                        "logging": {"format": "json", "level": "info"},
                    }
                )
            )
            log_path = Path(tmp) / "daemon.log"
            log_file = log_path.open("w")
            proc = subprocess.Popen(
                [sys.executable, "-m", "jobwire", "run", "-c", str(config)],
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
            )
            conn = await asyncpg.connect(db_url)
            while (
                await conn.fetchval("SELECT count(*) FROM jobwire.jobs WHERE status = 'succeeded'")
                < n
            ):
                if proc.poll() is not None:
                    raise SystemExit(f"daemon exited early with {proc.returncode}")
                await asyncio.sleep(0.25)
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
            log_file.close()
            stopped = [
                json.loads(line)
                for line in log_path.read_text().splitlines()
                if '"pool_stopped"' in line
            ]
            reruns = await conn.fetchval("SELECT count(*) FROM jobwire.jobs WHERE attempts > 1")
            lost = await conn.fetchval(
                "SELECT count(*) FROM jobwire.job_runs WHERE status <> 'succeeded'"
            )
            row = await conn.fetchrow(
                "SELECT count(*) AS n,"
                " extract(epoch FROM max(created_at) - min(created_at)) AS intake,"
                " extract(epoch FROM max(finished_at) - min(created_at)) AS total"
                " FROM jobwire.jobs"
            )
            await conn.close()
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
        print(f"jobs run more than once: {reruns}; attempts not succeeded: {lost}")
        if stopped:
            c = stopped[-1]
            print(
                f"pool: {c['direct']} jobs handed over by the intake, {c['claimed']} claimed "
                f"in {c['claims']} claims, {c['completion_batches']} completion batches"
            )
    finally:
        connection = await aio_pika.connect(args.amqp)
        channel = await connection.channel()
        await channel.queue_delete(queue)
        await connection.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
