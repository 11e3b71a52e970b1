"""Kafka intake against a real Kafka-protocol broker (tansu): offsets stored with the jobs.

tansu (memory storage) stands in for Apache Kafka here. Differences seen and allowed for:
its data lives only as long as its process, so a broker restart is not tested against it.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from jobwire.config import Config
from tests.support.daemon import Daemon as DaemonProcess
from tests.support.daemon import one_source_config, publish_confirmed
from tests.support.inprocess import running_daemon
from tests.support.kafka import TansuBroker, produce
from tests.support.rows import assert_exactly, fetch, job_count, jobs_at_least, scalar
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(180)


def kafka_source(bootstrap: str, topic: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": "events",
        "type": "kafka",
        "bootstrap_servers": bootstrap,
        "topics": [topic],
        "group_id": f"g-{topic}",
        "route": {"handler": "noop"},
        **extra,
    }


def kafka_config(database_url: str, bootstrap: str, topic: str, **extra: Any) -> Config:
    return Config.model_validate(
        {
            "database": {"url": database_url},
            "workers": {"poll_interval": "200ms", "concurrency": 64},
            "sources": [kafka_source(bootstrap, topic, **extra)],
        }
    )


async def stored_offsets(url: str, group: str) -> dict[int, int]:
    rows = await fetch(
        url, "SELECT partition, next_offset FROM jobwire.kafka_offsets WHERE group_id = $1", group
    )
    return {r["partition"]: r["next_offset"] for r in rows}


def bodies(n: int, start: int = 0) -> list[bytes]:
    return [b'{"i": %d}' % i for i in range(start, start + n)]


async def test_ten_thousand_messages_over_three_partitions_become_exactly_as_many_jobs(
    database_url: str, kafka_broker: TansuBroker, kafka_topic: str
) -> None:
    n = 10_000
    assert await produce(kafka_broker.bootstrap, kafka_topic, bodies(n)) == n
    config = kafka_config(database_url, kafka_broker.bootstrap, kafka_topic)
    async with running_daemon(config) as daemon:

        async def all_succeeded() -> bool:
            return await job_count(database_url, "status = 'succeeded'") == n

        await wait_for(all_succeeded, timeout=90, what=f"{n} succeeded jobs")
        counters = daemon.sources[0].intake.counters
        assert (counters.received, counters.stored, counters.duplicate) == (n, n, 0)
    await assert_exactly(database_url, n)
    offsets = await stored_offsets(database_url, f"g-{kafka_topic}")
    assert sorted(offsets) == [0, 1, 2]  # the messages were spread over all three partitions
    assert sum(offsets.values()) == n  # each partition's next offset = its message count

    # Kafka's own committed offsets followed the store (what lag tools read).
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka_broker.bootstrap, group_id=f"g-{kafka_topic}"
    )
    await consumer.start()
    try:
        committed = {p: await consumer.committed(TopicPartition(kafka_topic, p)) for p in offsets}
    finally:
        await consumer.stop()
    assert committed == offsets


async def test_headers_key_and_position_travel_with_the_job_and_poison_fails_with_its_reason(
    database_url: str, kafka_broker: TansuBroker, kafka_topic: str
) -> None:
    await produce(
        kafka_broker.bootstrap,
        kafka_topic,
        [b'{"type": "echo", "i": 1}'],
        headers=[("trace", b"abc")],
        keys=[b"customer-7"],
    )
    await produce(kafka_broker.bootstrap, kafka_topic, [b"not json", b'{"type": "rm -rf"}'])
    config = kafka_config(
        database_url,
        kafka_broker.bootstrap,
        kafka_topic,
        route={"handler_from": "json:$.type"},
    )
    async with running_daemon(config):
        await wait_for(lambda: jobs_at_least(database_url, 3), what="three jobs")
        await wait_for(
            lambda: jobs_at_least(database_url, 1, "status = 'succeeded'"), what="echo ran"
        )
    rows = await fetch(
        database_url,
        "SELECT handler, status, headers, last_error, body, dedup_key FROM jobwire.jobs"
        " ORDER BY id",
    )
    good = next(r for r in rows if r["status"] == "succeeded")
    headers = json.loads(good["headers"])
    assert headers["trace"] == "abc"
    assert headers["kafka-key"] == "customer-7"
    assert headers["kafka-topic"] == kafka_topic
    assert good["dedup_key"] == (
        f"events:{kafka_topic}/{headers['kafka-partition']}/{headers['kafka-offset']}"
    )
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == 2
    assert {bytes(r["body"]) for r in failed} == {b"not json", b'{"type": "rm -rf"}'}
    assert all(r["last_error"] for r in failed)


def test_sigkill_mid_stream_then_restart_makes_exactly_n_jobs(
    database_url: str, kafka_broker: TansuBroker, kafka_topic: str, tmp_path: Path
) -> None:
    n = 10_000
    # Small batches: many commits, so the kill lands between two of them. A short session:
    # the killed member's partitions are handed on sooner.
    source = kafka_source(
        kafka_broker.bootstrap,
        kafka_topic,
        batch_size=100,
        session_timeout="3s",
        heartbeat_interval="1s",
    )
    config = one_source_config(tmp_path, database_url, source, poll_interval="200ms")
    # The operator's way in: jobwire publish, acked by the broker (acks=all).
    publish_confirmed(config, "events", 10)
    assert asyncio.run(produce(kafka_broker.bootstrap, kafka_topic, bodies(n - 10))) == n - 10

    first = DaemonProcess(config, tmp_path / "first.log")
    try:
        first.wait_ready()
        asyncio.run(
            wait_for(lambda: jobs_at_least(database_url, 2000), timeout=60, what="mid-stream")
        )
        first.kill()
    finally:
        first.stop_quietly()
    at_kill = asyncio.run(job_count(database_url))
    assert at_kill < n, "the kill came too late to be mid-stream"

    second = DaemonProcess(config, tmp_path / "second.log")
    try:
        second.wait_ready()
        asyncio.run(wait_for(lambda: jobs_at_least(database_url, n), timeout=90, what=f"{n} jobs"))
        assert second.terminate() == 0
    finally:
        second.stop_quietly()
    conn_rows = asyncio.run(
        scalar(database_url, "SELECT count(*) - count(DISTINCT dedup_key) FROM jobwire.jobs")
    )
    assert conn_rows == 0
    assert asyncio.run(job_count(database_url)) == n
    offsets = asyncio.run(stored_offsets(database_url, f"g-{kafka_topic}"))
    assert sum(offsets.values()) == n


def test_failpoint_kill_between_commit_and_kafka_commit_reads_on_from_the_store(
    database_url: str, kafka_broker: TansuBroker, kafka_topic: str, tmp_path: Path
) -> None:
    n = 600
    asyncio.run(produce(kafka_broker.bootstrap, kafka_topic, bodies(n)))
    source = kafka_source(
        kafka_broker.bootstrap,
        kafka_topic,
        batch_size=50,
        session_timeout="3s",
        heartbeat_interval="1s",
    )
    config = one_source_config(tmp_path, database_url, source)
    first = DaemonProcess(
        config, tmp_path / "first.log", env={"JOBWIRE_FAILPOINT": "intake.after_commit"}
    )
    assert first.wait(60) == -9  # killed itself right after its first store commit
    stored_first = asyncio.run(job_count(database_url))
    assert 0 < stored_first < n
    second = DaemonProcess(config, tmp_path / "second.log")
    try:
        second.wait_ready()
        asyncio.run(wait_for(lambda: jobs_at_least(database_url, n), timeout=60, what="all"))
        assert second.terminate() == 0
    finally:
        second.stop_quietly()
    asyncio.run(assert_exactly(database_url, n))
    # The second daemon started from the offset stored with the first batch, not from 0:
    # nothing it read was a duplicate of what the first had stored.
    counters = [e for e in second.events() if e.get("event") == "kafka_partitions_assigned"]
    assert counters and any(counters[0]["from_store"].values())


async def test_two_daemons_in_one_group_share_the_partitions_and_make_exactly_n_jobs(
    database_url: str, kafka_broker: TansuBroker, kafka_topic: str
) -> None:
    n = 6000
    config = kafka_config(database_url, kafka_broker.bootstrap, kafka_topic)
    async with running_daemon(config) as one, running_daemon(config) as two:
        adapters = [d.sources[0].adapter for d in (one, two)]

        def shared() -> bool:
            owned = [a._consumer.assignment() if a._consumer else set() for a in adapters]
            return all(owned) and len(owned[0] | owned[1]) == 3 and not owned[0] & owned[1]

        await wait_for(shared, timeout=60, what="both instances own partitions")
        assert await produce(kafka_broker.bootstrap, kafka_topic, bodies(n)) == n
        await wait_for(lambda: jobs_at_least(database_url, n), timeout=90, what=f"{n} jobs")
        stored = [d.sources[0].intake.counters.stored for d in (one, two)]
        assert all(stored), f"one instance stored nothing: {stored}"
        assert sum(stored) == n
    await assert_exactly(database_url, n)
