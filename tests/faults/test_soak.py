"""Soak: three daemons on one database, four brokers, instances killed at random, a broker
restarted and the database failed over along the way; then every row is counted.

Not in the default run (marker ``soak``, about ten minutes):
``.venv/bin/pytest -m soak tests/faults/test_soak.py -s`` (``SOAK_SECONDS`` sets how long
the publishers run, default 300; ``SOAK_SEED`` replays a run's kills).

Independent producers publish to RabbitMQ (AMQP, pika), ActiveMQ (STOMP, stomp.py), Kafka
(tansu, kafka-python) and Mosquitto (MQTT 5, paho-mqtt) throughout; each message carries an
id of its publisher's (AMQP message_id, a STOMP header, a JSON field for Kafka, an MQTT user
property) that the routes use as the dedup key, so a publish retried after a broker restart
is the same message. A schedule ticks every second on whichever instance leads. At the end:
lost 0, duplicate jobs 0, unfinished 0, overlapping attempts of one job 0, each schedule tick
one job.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import pytest
import yaml

from jobwire.store.postgres import migrate
from tests.faults.harness import body
from tests.support import hostile as h
from tests.support.activemq import ActiveMQBroker
from tests.support.autofailover import AutoFailoverCluster
from tests.support.daemon import Daemon, write_config
from tests.support.kafka import TansuBroker, create_topic
from tests.support.mqtt import Mosquitto, clear_session
from tests.support.rows import fetch
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.soak, pytest.mark.timeout(1500)]
SECONDS = float(os.environ.get("SOAK_SECONDS", "300"))
BATCH = 25  # messages per publish, each broker, every PERIOD
PERIOD = 0.5
OFFSET = {"amqp": 0, "stomp": 1_000_000, "kafka": 2_000_000, "mqtt": 3_000_000}


@dataclass
class Soak:
    """What the soak started and counted."""

    url: str
    tmp: Path
    configs: list[Path] = field(default_factory=list)
    daemons: list[Daemon] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)
    published: dict[str, int] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)
    began: float = field(default_factory=time.monotonic)

    def note(self, what: str) -> None:
        line = f"{time.monotonic() - self.began:6.1f}s {what}"
        self.events.append(line)
        print("SOAK", line, flush=True)

    def start(self, n: int) -> None:
        self.starts[n] += 1
        log = self.tmp / f"instance{n}-{self.starts[n]}.log"
        self.daemons[n] = Daemon(self.configs[n], log)
        self.daemons[n].wait_ready(90)


def instance_config(
    tmp: Path,
    n: int,
    url: str,
    queue: str,
    activemq: ActiveMQBroker,
    kafka: TansuBroker,
    topic: str,
    mosquitto: Mosquitto,
    mqtt_topic: str,
) -> Path:
    route = {"handler": "sleep"}
    return write_config(
        tmp / f"instance{n}.yaml",
        {
            "database": {"url": url, "command_timeout": "5s", "migrate": False},
            "logging": {"format": "json"},
            "workers": {"poll_interval": "200ms", "concurrency": 32, "lease": "5s"},
            "schedules": [{"name": "tick", "every": "1s", "handler": "noop"}],
            "sources": [
                {
                    "name": "amqp",
                    "type": "amqp",
                    "url": h.AMQP_URL,
                    "queue": queue,
                    "heartbeat": "2s",
                    "route": route,
                },
                {
                    "name": "stomp",
                    "type": "stomp",
                    "flavor": "activemq",
                    "port": activemq.port,
                    "destination": f"/queue/{queue}",
                    "heartbeat": "2s",
                    "route": {**route, "dedup_key": "header:amqp-message-id"},
                },
                {
                    "name": "kafka",
                    "type": "kafka",
                    "bootstrap_servers": kafka.bootstrap,
                    "topics": [topic],
                    "group_id": f"g-{topic}",
                    "session_timeout": "6s",
                    "heartbeat_interval": "1s",
                    "route": {**route, "dedup_key": "json:$.i"},
                },
                {
                    "name": "mqtt",
                    "type": "mqtt",
                    "url": f"mqtt://127.0.0.1:{mosquitto.port}",
                    "topics": [mqtt_topic],
                    "client_id": f"jw-soak-{n}-{uuid.uuid4().hex[:6]}",
                    "shared_group": "soak",
                    "session_expiry": "10m",
                    "keepalive": "2s",
                    "route": {**route, "dedup_key": "header:msg-id"},
                },
            ],
        },
    )


async def publisher(
    kind: str, send: Callable[[list[h.Outgoing]], Any], soak: Soak, paused: asyncio.Event
) -> None:
    """Publish BATCH messages every PERIOD for SECONDS; a failed batch is sent again (the
    same ids) until the broker confirms it."""
    sent = 0
    deadline = time.monotonic() + SECONDS
    while time.monotonic() < deadline:
        first = OFFSET[kind] + sent
        batch = [h.Outgoing(body(i), f"{kind}-{i}") for i in range(first, first + BATCH)]
        while True:
            if paused.is_set():
                await asyncio.sleep(0.2)
                continue
            try:
                await asyncio.to_thread(send, batch)
                break
            except Exception as exc:  # noqa: BLE001 - a broker away: send the batch again
                soak.note(f"{kind} publish retried: {type(exc).__name__}")
                await asyncio.sleep(1)
        sent += BATCH
        soak.published[kind] = sent
        await asyncio.sleep(PERIOD)


async def chaos(
    soak: Soak,
    rng: random.Random,
    activemq: ActiveMQBroker,
    amq_paused: asyncio.Event,
    cluster: AutoFailoverCluster,
) -> None:
    """Kill an instance every 20-40 s and restart it; restart ActiveMQ at a third of the
    run and fail the database over at two thirds."""
    deadline = soak.began + SECONDS
    broker_at = soak.began + SECONDS / 3
    failover_at = soak.began + 2 * SECONDS / 3
    while time.monotonic() < deadline - 10:
        await asyncio.sleep(rng.uniform(20, 40))
        now = time.monotonic()
        if broker_at and now >= broker_at:
            broker_at = 0
            amq_paused.set()
            soak.note("ActiveMQ stopped")
            await asyncio.to_thread(activemq.stop)
            await asyncio.sleep(3)
            await asyncio.to_thread(activemq.start, 60)
            amq_paused.clear()
            soak.note("ActiveMQ started again")
            continue
        if failover_at and now >= failover_at:
            failover_at = 0
            soak.note("database failover begins")
            took = await asyncio.to_thread(cluster.failover)
            soak.note(f"database failover done in {took:.1f}s")
            continue
        victim = rng.randrange(len(soak.daemons))
        soak.daemons[victim].kill()
        soak.note(f"instance {victim} SIGKILLed")
        await asyncio.sleep(rng.uniform(1, 3))
        await asyncio.to_thread(soak.start, victim)
        soak.note(f"instance {victim} started again")


async def test_three_instances_four_brokers_kills_a_broker_restart_and_a_failover(
    cluster: AutoFailoverCluster,
    activemq: ActiveMQBroker,
    kafka_broker: TansuBroker,
    mosquitto: Mosquitto,
    tmp_path: Path,
) -> None:
    seed = int(os.environ.get("SOAK_SEED", str(random.randrange(1_000_000))))
    rng = random.Random(seed)
    url = cluster.url()
    await migrate(url, "jobwire")
    queue = f"jw-soak-{uuid.uuid4().hex[:8]}"
    topic = f"jw-soak-{uuid.uuid4().hex[:8]}"
    mqtt_topic = f"jw-soak/{uuid.uuid4().hex[:8]}"
    await create_topic(kafka_broker.bootstrap, topic, partitions=3)
    connection = await aio_pika.connect(h.AMQP_URL)
    channel = await connection.channel()
    await channel.declare_queue(queue, durable=True)

    soak = Soak(url, tmp_path)
    print(f"SOAK seed={seed} seconds={SECONDS}", flush=True)
    for n in range(3):
        soak.configs.append(
            instance_config(
                tmp_path, n, url, queue, activemq, kafka_broker, topic, mosquitto, mqtt_topic
            )
        )
        soak.daemons.append(None)  # type: ignore[arg-type]
        soak.starts.append(0)
    amq_paused = asyncio.Event()
    try:
        for n in range(3):
            await asyncio.to_thread(soak.start, n)
        soak.note("three instances ready")
        sends: dict[str, Callable[[list[h.Outgoing]], Any]] = {
            "amqp": lambda b: h.publish_amqp(queue, b),
            "stomp": lambda b: h.publish_stomp(f"/queue/{queue}", b, port=activemq.port),
            "kafka": lambda b: h.publish_kafka(kafka_broker.bootstrap, topic, b),
            "mqtt": lambda b: h.publish_mqtt(mosquitto.port, mqtt_topic, b),
        }
        never = asyncio.Event()
        tasks = [
            asyncio.create_task(
                publisher(kind, send, soak, amq_paused if kind == "stomp" else never)
            )
            for kind, send in sends.items()
        ]
        tasks.append(asyncio.create_task(chaos(soak, rng, activemq, amq_paused, cluster)))
        await asyncio.gather(*tasks)
        total = sum(soak.published.values())
        soak.note(f"publishers done: {total} confirmed")

        async def all_done() -> bool:
            rows = await fetch(
                url,
                "SELECT count(*) AS n FROM jobwire.jobs"
                " WHERE source <> 'schedule:tick' AND status = 'succeeded'",
            )
            return int(rows[0]["n"]) >= total

        await wait_for(all_done, timeout=300, interval=1.0, what=f"{total} jobs succeeded")
        soak.note("every job succeeded")
        for daemon in soak.daemons:
            assert daemon.terminate(90) == 0
    finally:
        for daemon in soak.daemons:
            if daemon is not None:
                daemon.stop_quietly()
        for config in soak.configs:
            with contextlib.suppress(Exception):
                await clear_session(mosquitto.port, _mqtt_client_id(config))
        await channel.queue_delete(queue)
        await connection.close()

    await report(soak)


def _mqtt_client_id(config: Path) -> str:
    data = yaml.safe_load(config.read_text())
    return str(next(s for s in data["sources"] if s["type"] == "mqtt")["client_id"])


async def report(soak: Soak) -> None:
    """Count, print the table, assert."""
    rows = await fetch(
        soak.url,
        "SELECT source, count(*) AS jobs, count(DISTINCT payload->>'i') AS distinct_ids,"
        " count(*) FILTER (WHERE status <> 'succeeded') AS unfinished,"
        " coalesce(sum(greatest(attempts - 1, 0)), 0) AS reruns"
        " FROM jobwire.jobs GROUP BY source ORDER BY source",
    )
    overlaps = await fetch(
        soak.url,
        "SELECT j.source, count(*) AS n FROM jobwire.job_runs a JOIN jobwire.job_runs b"
        " ON a.job_id = b.job_id AND a.id < b.id"
        " AND a.started_at < b.finished_at AND b.started_at < a.finished_at"
        " JOIN jobwire.jobs j ON j.id = a.job_id GROUP BY j.source",
    )
    overlapping = {r["source"]: int(r["n"]) for r in overlaps}
    ticks = await fetch(
        soak.url,
        "SELECT count(*) AS n, count(DISTINCT dedup_key) AS distinct_ticks"
        " FROM jobwire.jobs WHERE source = 'schedule:tick'",
    )
    by_source = {r["source"]: r for r in rows}
    print("\nSOAK events:\n  " + "\n  ".join(soak.events))
    print(
        f"\n{'source':<8} {'published':>9} {'jobs':>7} {'lost':>5} {'dup':>4} "
        f"{'unfinished':>10} {'overlaps':>8} {'reruns':>6}"
    )
    failures = []
    for kind in OFFSET:
        row = by_source.get(kind)
        jobs = int(row["jobs"]) if row else 0
        distinct = int(row["distinct_ids"]) if row else 0
        unfinished = int(row["unfinished"]) if row else 0
        reruns = int(row["reruns"]) if row else 0
        published = soak.published.get(kind, 0)
        lost, dup = published - distinct, jobs - distinct
        print(
            f"{kind:<8} {published:>9} {jobs:>7} {lost:>5} {dup:>4} {unfinished:>10} "
            f"{overlapping.get(kind, 0):>8} {reruns:>6}"
        )
        if (lost, dup, unfinished, overlapping.get(kind, 0)) != (0, 0, 0, 0):
            failures.append(kind)
    tick = ticks[0]
    print(
        f"schedule ticks: {tick['n']} jobs, {tick['distinct_ticks']} distinct ticks; "
        f"instance starts: {soak.starts}"
    )
    assert not failures, f"lost, duplicate, unfinished or overlapping jobs: {failures}"
    assert tick["n"] == tick["distinct_ticks"] and tick["n"] >= SECONDS / 3
