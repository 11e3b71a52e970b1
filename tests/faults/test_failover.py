"""Drill: a PostgreSQL primary fails over to its synchronous secondary, twice, mid-stream.

A pg_auto_failover cluster of our own (tests/support/autofailover.py); the daemon connects
with a multi-host URL and ``target_session_attrs=read-write``. AMQP and Kafka publish
throughout, the pool is busy, and ``pg_autoctl perform failover`` runs twice. Then the rows
are counted: nothing lost, no duplicate job, no job run twice at once, and the pool back at
work within seconds of each promotion.

Not in the default run (marker ``failover``, about two minutes):
``.venv/bin/pytest -m failover tests/faults/test_failover.py -s``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import aio_pika
import aiohttp
import pytest

from jobwire.app import Daemon
from jobwire.config import Config
from jobwire.store.postgres import migrate
from tests.faults.harness import body
from tests.support import hostile as h
from tests.support.autofailover import AutoFailoverCluster
from tests.support.inprocess import running_daemon
from tests.support.kafka import TansuBroker, create_topic
from tests.support.rows import fetch, job_count
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.failover, pytest.mark.timeout(600)]
PER_SOURCE = 4000
BATCH = 100


async def publish_slowly(send: object, n: int, stop_after: asyncio.Event) -> int:
    """Publish n messages in batches spread over the drill; returns the confirmed count."""
    sent = 0
    while sent < n:
        count = min(BATCH, n - sent)
        await asyncio.to_thread(send, sent, count)  # type: ignore[operator]
        sent += count
        if not stop_after.is_set():
            await asyncio.sleep(0.25)
    return sent


async def watch_readyz(daemon: Daemon, seen: dict[str, int], stop: asyncio.Event) -> None:
    """Poll /readyz every 100 ms; count the answers by (status, store)."""
    assert daemon.http is not None and daemon.http.port
    url = f"http://127.0.0.1:{daemon.http.port}/readyz"
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            try:
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as answer:
                    store = (await answer.json()).get("store", "?")
                    key = f"{answer.status} store={store}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                key = f"no answer: {type(exc).__name__}"
            seen[key] = seen.get(key, 0) + 1
            await asyncio.sleep(0.1)


async def overlapping_runs(url: str) -> int:
    """Pairs of attempts of one job whose intervals overlap (a job run twice at once)."""
    rows = await fetch(
        url,
        "SELECT count(*) AS n FROM jobwire.job_runs a JOIN jobwire.job_runs b"
        " ON a.job_id = b.job_id AND a.id < b.id"
        " AND a.started_at < b.finished_at AND b.started_at < a.finished_at",
    )
    return int(rows[0]["n"])


async def test_two_failovers_mid_stream_lose_nothing_and_run_nothing_twice_at_once(
    cluster: AutoFailoverCluster, kafka_broker: TansuBroker
) -> None:
    url = cluster.url()
    await migrate(url, "jobwire")
    queue = f"jw-failover-{uuid.uuid4().hex[:8]}"
    topic = f"jw-failover-{uuid.uuid4().hex[:8]}"
    await create_topic(kafka_broker.bootstrap, topic, partitions=3)
    connection = await aio_pika.connect(h.AMQP_URL)
    channel = await connection.channel()
    await channel.declare_queue(queue, durable=True)

    def amqp_send(start: int, n: int) -> None:
        # Distinct payload ids per source: AMQP 0.., Kafka 1,000,000..
        outgoing = [h.Outgoing(body(i), f"a-{i}") for i in range(start, start + n)]
        assert len(h.publish_amqp(queue, outgoing)) == n

    def kafka_send(start: int, n: int) -> None:
        outgoing = [h.Outgoing(body(1_000_000 + i), f"k-{i}") for i in range(start, start + n)]
        assert len(h.publish_kafka(kafka_broker.bootstrap, topic, outgoing)) == n

    config = Config.model_validate(
        {
            "database": {"url": url, "command_timeout": "5s"},
            "workers": {"poll_interval": "200ms", "concurrency": 64, "lease": "10s"},
            "sources": [
                {
                    "name": "orders",
                    "type": "amqp",
                    "url": h.AMQP_URL,
                    "queue": queue,
                    "route": {"handler": "sleep"},
                },
                {
                    "name": "events",
                    "type": "kafka",
                    "bootstrap_servers": kafka_broker.bootstrap,
                    "topics": [topic],
                    "group_id": f"g-{topic}",
                    "route": {"handler": "sleep"},
                },
            ],
        }
    )
    failovers: list[tuple[float, float]] = []
    try:
        async with running_daemon(config) as daemon:
            calm = asyncio.Event()
            watched = asyncio.Event()
            readyz: dict[str, int] = {}
            watcher = asyncio.create_task(watch_readyz(daemon, readyz, watched))
            producers = [
                asyncio.create_task(publish_slowly(amqp_send, PER_SOURCE, calm)),
                asyncio.create_task(publish_slowly(kafka_send, PER_SOURCE, calm)),
            ]
            for _ in range(2):
                await wait_for(
                    lambda: _succeeded_at_least(url, 200 + len(failovers) * 1500),
                    timeout=120,
                    what="the pool busy before the failover",
                )
                took = await asyncio.to_thread(cluster.failover)
                before = await _succeeded(url)
                promoted = time.monotonic()
                await wait_for(
                    lambda b=before: _succeeded_at_least(url, b + 50),
                    timeout=60,
                    what="jobs finishing again after the promotion",
                )
                failovers.append((took, time.monotonic() - promoted))
            calm.set()
            watched.set()
            await watcher
            published = sum(await asyncio.gather(*producers))
            await wait_for(
                lambda: _succeeded_at_least(url, published),
                timeout=180,
                what=f"{published} jobs succeeded",
            )
    finally:
        await channel.queue_delete(queue)
        await connection.close()

    rows = await fetch(
        url,
        "SELECT count(*) AS n, count(DISTINCT payload->>'i') AS distinct_ids,"
        " count(*) FILTER (WHERE status <> 'succeeded') AS unfinished,"
        " coalesce(sum(greatest(attempts - 1, 0)), 0) AS reruns FROM jobwire.jobs",
    )
    jobs, distinct_ids = rows[0]["n"], rows[0]["distinct_ids"]
    overlaps = await overlapping_runs(url)
    lost_runs = await job_count(
        url, "id IN (SELECT job_id FROM jobwire.job_runs WHERE status = 'lost')"
    )
    print(
        "DRILL failover:",
        json.dumps(
            {
                "published": published,
                "jobs": jobs,
                "duplicates": jobs - distinct_ids,
                "unfinished": rows[0]["unfinished"],
                "attempts_beyond_first": int(rows[0]["reruns"]),
                "jobs_with_a_lost_attempt": lost_runs,
                "overlapping_runs": overlaps,
                "failover_seconds": [round(t, 1) for t, _ in failovers],
                "back_to_work_seconds": [round(b, 1) for _, b in failovers],
                "readyz_answers": readyz,
            }
        ),
    )
    assert published == 2 * PER_SOURCE
    assert (jobs, distinct_ids, rows[0]["unfinished"], overlaps) == (published, published, 0, 0)
    assert all(back < 30 for _, back in failovers), failovers
    # /readyz said so while the primary was away, and said ready again afterwards.
    assert any(k.startswith("503") for k in readyz) and "200 store=up" in readyz, readyz


async def _succeeded(url: str) -> int:
    return await job_count(url, "status = 'succeeded'")


async def _succeeded_at_least(url: str, n: int) -> bool:
    return await _succeeded(url) >= n
