"""AMQP drain: jobwire (store, ack, run) against a bare aio-pika consumer on the same broker.

1. Pre-loads N persistent messages into a fresh queue and drains it with a raw aio-pika
   consumer that acks in batches (multiple=True every 500, or half a smaller prefetch): the
   broker's ceiling here.
   Then the same with jobwire's AMQP adapter alone, in this process, no store: what
   consuming alone costs jobwire.
2. Pre-loads N persistent messages into another fresh queue, starts ``jobwire run`` (real
   CLI, subprocess, no-op handler, durable commits) and waits until every job succeeded.
   The time is taken from the rows: first job stored -> last job finished.
Prints both rates and their ratio.

    .venv/bin/python bench/amqp_drain.py --messages 50000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
import uuid
from pathlib import Path

import aio_pika

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script, too

from bench.common import Drain, drain_source, run
from jobwire.adapters import build_adapter
from jobwire.adapters.amqp import AmqpSource
from jobwire.adapters.base import Message
from jobwire.logs import configure_logging


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


def ack_every(prefetch: int) -> int:
    """How many deliveries one multiple ack covers: 500, or half the prefetch when that is
    smaller (the broker stops at the prefetch, so waiting for more would wait forever); a
    prefetch of 0 is no limit."""
    return 500 if prefetch == 0 else max(1, min(500, prefetch // 2))


async def raw_drain(url: str, queue: str, n: int, prefetch: int) -> float:
    connection = await aio_pika.connect(url)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=prefetch)
    q = await channel.declare_queue(queue, durable=True)
    done = asyncio.Event()
    seen = 0
    every = ack_every(prefetch)
    t0 = time.perf_counter()

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        nonlocal seen
        seen += 1
        if seen % every == 0 or seen == n:
            await message.ack(multiple=True)
        if seen == n:
            done.set()

    tag = await q.consume(on_message)
    await done.wait()
    elapsed = time.perf_counter() - t0
    await q.cancel(tag)  # before the delete: else aio-pika prints "cancelled by the broker"
    await channel.queue_delete(queue)
    await connection.close()
    return elapsed


async def adapter_drain(url: str, queue: str, n: int, prefetch: int) -> float:
    """Seconds for jobwire's AMQP adapter alone (in this process, no store, no pool) to take
    n deliveries, acked as the bare consumer acks them (``ack_every``): what consuming costs
    jobwire, beside what it costs aio-pika."""
    cfg = AmqpSource.model_validate(
        {"name": "bench", "type": "amqp", "url": url, "queue": queue, "prefetch": prefetch}
        | {"route": {"handler": "noop"}}
    )
    configure_logging(level="warning")  # the adapter's state lines are not the bench's output
    adapter = build_adapter(cfg)  # as the daemon builds it: with the fast frame path
    done = asyncio.Event()
    taken: list[Message] = []
    acks: set[asyncio.Task[None]] = set()
    seen = 0
    every = ack_every(prefetch)

    def sink(message: Message) -> None:
        nonlocal seen
        seen += 1
        taken.append(message)
        if len(taken) >= every or seen == n:
            task = asyncio.get_running_loop().create_task(adapter.ack_many(list(taken)))
            acks.add(task)
            task.add_done_callback(acks.discard)
            taken.clear()
        if seen == n:
            done.set()

    t0 = time.perf_counter()
    consuming = asyncio.create_task(adapter.run(sink))
    await done.wait()
    elapsed = time.perf_counter() - t0
    await asyncio.gather(*acks)
    consuming.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await consuming
    await delete_queue(url, queue)
    return elapsed


async def drain(
    url: str, n: int, prefetch: int, concurrency: int, profile: str | None = None
) -> Drain:
    """N persistent messages pre-loaded into a fresh queue, drained by jobwire."""
    queue = f"jw-bench-{uuid.uuid4().hex[:8]}"
    await preload(url, queue, n)
    try:
        source = {"type": "amqp", "url": url, "queue": queue, "prefetch": prefetch}
        return await drain_source(source, n, concurrency, profile)
    finally:
        await delete_queue(url, queue)


async def delete_queue(url: str, queue: str) -> None:
    """Delete a bench queue on a connection of its own."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        await channel.queue_delete(queue)
    finally:
        await connection.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--prefetch", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--profile", help="py-spy the daemon for 10 s; raw stacks to this file")
    args = parser.parse_args()
    n = args.messages

    raw_queue = f"jw-bench-raw-{uuid.uuid4().hex[:8]}"
    await preload(args.amqp, raw_queue, n)
    raw = await raw_drain(args.amqp, raw_queue, n, args.prefetch)
    print(f"raw aio-pika consume, batched acks: {n} msgs in {raw:.2f}s = {n / raw:,.0f} msg/s")
    adapter_queue = f"jw-bench-adapter-{uuid.uuid4().hex[:8]}"
    await preload(args.amqp, adapter_queue, n)
    alone = await adapter_drain(args.amqp, adapter_queue, n, args.prefetch)
    print(
        f"jobwire's AMQP adapter alone (no store), same acks: {n} msgs in {alone:.2f}s"
        f" = {n / alone:,.0f} msg/s"
    )
    result = await drain(args.amqp, n, args.prefetch, args.concurrency, args.profile)
    result.report(ceiling_seconds=raw)


if __name__ == "__main__":
    run(main())
