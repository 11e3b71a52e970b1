"""Kafka (tansu): the broker suite, and the Kafka source's own tests (partitions, offsets
stored with the jobs, consumer groups, key and position).

tansu (memory storage) stands in for Apache Kafka here. Differences seen and allowed for:
its data lives only as long as its process, so a broker restart is not tested against it.
Kafka has no message id: the source's dedup key is topic/partition/offset, and the
redelivery test's route names one (``json:$.id``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from structlog.testing import capture_logs

from jobwire.app import Daemon as InProcessDaemon
from tests.integration.brokers.base import BrokerSuite, Outage, cut_proxy, proxied
from tests.support import hostile as h
from tests.support.daemon import Daemon as DaemonProcess
from tests.support.daemon import one_source_config, publish_confirmed
from tests.support.inprocess import running_daemon
from tests.support.kafka import TansuBroker, create_topic, produce
from tests.support.processes import free_port
from tests.support.rows import assert_exactly, fetch, job_count, jobs_at_least, scalar
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(180)
Target = tuple[str, str]  # bootstrap, topic


async def stored_offsets(url: str, group: str) -> dict[int, int]:
    rows = await fetch(
        url, "SELECT partition, next_offset FROM jobwire.kafka_offsets WHERE group_id = $1", group
    )
    return {r["partition"]: r["next_offset"] for r in rows}


def bodies(n: int, start: int = 0) -> list[bytes]:
    return [b'{"i": %d}' % i for i in range(start, start + n)]


class TestKafka(BrokerSuite):
    """The session's tansu, a fresh three-partition topic per test."""

    source_name = "events"
    many = 10_000  # over three partitions
    concurrency = 64
    ordered = False  # "same" twice may go to two partitions: either may be stored first
    dedup_route = {"dedup_key": "json:$.id"}
    # A short session: the killed member's partitions are handed on sooner.
    kill_source_extra = {"session_timeout": "3s", "heartbeat_interval": "1s"}

    @pytest.fixture
    def target(self, kafka_broker: TansuBroker, kafka_topic: str) -> Target:
        return kafka_broker.bootstrap, kafka_topic

    def source(self, target: Target) -> dict[str, Any]:
        bootstrap, topic = target
        return {
            "type": "kafka",
            "bootstrap_servers": bootstrap,
            "topics": [topic],
            "group_id": f"g-{topic}",
        }

    def publish(self, target: Target, outgoing: Sequence[h.Outgoing]) -> list[str | None]:
        return h.publish_kafka(*target, outgoing)

    async def left_behind(self, target: Target, database_url: str, published: int) -> int | None:
        """Offsets not stored: the topic is fresh, so the next offsets add up to all sent."""
        stored = await stored_offsets(database_url, f"g-{target[1]}")
        return published - sum(stored.values())

    async def check_many(self, target: Target, database_url: str, daemon: InProcessDaemon) -> None:
        offsets = await stored_offsets(database_url, f"g-{target[1]}")
        assert sorted(offsets) == [0, 1, 2]  # the messages were spread over all three

    async def check_many_stopped(self, target: Target, database_url: str, n: int) -> None:
        # Kafka's own committed offsets followed the store (what lag tools read).
        bootstrap, topic = target
        offsets = await stored_offsets(database_url, f"g-{topic}")
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=f"g-{topic}")
        await consumer.start()
        try:
            committed = {p: await consumer.committed(TopicPartition(topic, p)) for p in offsets}
        finally:
            await consumer.stop()
        assert committed == offsets

    def check_restarted(self, second: DaemonProcess) -> None:
        # The second daemon started from the offset stored with the first batch, not from 0.
        assigned = [e for e in second.events() if e.get("event") == "kafka_partitions_assigned"]
        assert assigned and any(assigned[0]["from_store"].values())

    @contextlib.asynccontextmanager
    async def outage(self, target: Target) -> AsyncIterator[Outage]:
        """A tansu of the test's own behind a proxy, advertising the proxy's port: Kafka
        clients go where the metadata says, so every connection passes the proxy."""
        proxy_port = free_port()
        logs = tempfile.TemporaryDirectory(prefix="jw-tansu-")
        tansu = TansuBroker(Path(logs.name) / "tansu.log", advertised_port=proxy_port).start()
        try:
            async with proxied(tansu.port, port=proxy_port) as proxy:
                topic = f"jw-test-{uuid.uuid4().hex[:10]}"
                await create_topic(f"127.0.0.1:{proxy_port}", topic, partitions=3)
                yield Outage(
                    (f"127.0.0.1:{proxy_port}", topic),
                    lambda adapter: cut_proxy(proxy, adapter),
                    {"session_timeout": "6s", "heartbeat_interval": "1s"},
                )
        finally:
            tansu.stop()
            logs.cleanup()

    # --- Kafka's own --------------------------------------------------------------------

    async def test_batches_compressed_with_every_codec_become_jobs(
        self, database_url: str, target: Target
    ) -> None:
        """A batch compressed with a codec the consumer cannot read raised in every fetch:
        the source reconnected at the same offset for good, and no record of its partitions
        became a job (lz4, snappy and zstd need cramjam, a declared dependency now)."""
        bootstrap, topic = target
        codecs = ["gzip", "lz4", "snappy", "zstd"]
        for codec in codecs:
            bodies = [
                b'{"type": "echo", "codec": "%s", "i": %d}' % (codec.encode(), i) for i in range(5)
            ]
            assert await produce(bootstrap, topic, bodies, compression=codec) == 5
        config = self.config(database_url, target, {"handler_from": "json:$.type"})
        async with running_daemon(config):

            async def all_ran() -> bool:
                return await job_count(database_url, "status = 'succeeded'") == 20

            await wait_for(all_ran, what="20 jobs from compressed batches")
        rows = await fetch(database_url, "SELECT payload FROM jobwire.jobs")
        assert sorted(json.loads(r["payload"])["codec"] for r in rows) == sorted(codecs * 5)

    async def test_a_record_aiokafka_cannot_decode_is_a_failed_job_and_the_rest_run(
        self, database_url: str, target: Target
    ) -> None:
        """A header name that is not UTF-8 (against Kafka's protocol; aiokafka raises on
        it) failed every fetch of its partition: the source reconnected at that offset for
        good. It is a failed job at its offset now, and the records around it run."""
        bootstrap, topic = target
        await produce_raw_header_names(_PRODUCE_RAW_HEADER_NAME, bootstrap, topic)
        config = self.config(database_url, target, {"handler_from": "json:$.type"})
        async with running_daemon(config):
            await wait_for(lambda: jobs_at_least(database_url, 7), what="seven jobs")
            await wait_for(
                lambda: jobs_at_least(database_url, 6, "status = 'succeeded'"), what="six ran"
            )
        rows = await fetch(
            database_url, "SELECT status, headers, last_error, dedup_key FROM jobwire.jobs"
        )
        assert len(rows) == 7
        (bad,) = [r for r in rows if r["status"] == "failed"]
        assert "could not be decoded" in bad["last_error"]
        assert json.loads(bad["headers"])["kafka-offset"] == "3"
        assert bad["dedup_key"] == f"events:{topic}/0/3"
        assert (await stored_offsets(database_url, f"g-{topic}"))[0] == 7

    async def test_an_undecodable_record_mid_batch_beside_busy_partitions_loses_nothing(
        self, database_url: str, target: Target
    ) -> None:
        """The bad record third of five in one batch of partition 1, hundreds of good ones
        in partitions 0 and 2. Before, the probe found it in no partition but the first
        (aiokafka's spent fetch answered empty) and partition 1 stopped for good; and what
        getmany had taken from the other partitions before the raise was dropped."""
        bootstrap, topic = target
        await produce_raw_header_names(_PRODUCE_BAD_MID_BATCH, bootstrap, topic)
        config = self.config(database_url, target, {"handler_from": "json:$.type"})
        async with running_daemon(config):
            await wait_for(lambda: jobs_at_least(database_url, 615), what="615 jobs")
            await wait_for(
                lambda: jobs_at_least(database_url, 612, "status = 'succeeded'"), what="612 ran"
            )
        rows = await fetch(
            database_url, "SELECT status, headers, last_error, dedup_key FROM jobwire.jobs"
        )
        assert len(rows) == 615
        failed = [json.loads(r["headers"]) for r in rows if r["status"] == "failed"]
        # The bad record, and the two after it in its batch (aiokafka decodes in order).
        assert sorted((h["kafka-partition"], h["kafka-offset"]) for h in failed) == [
            ("1", "2"),
            ("1", "3"),
            ("1", "4"),
        ]
        assert len({r["dedup_key"] for r in rows}) == 615
        assert await stored_offsets(database_url, f"g-{topic}") == {0: 300, 1: 15, 2: 300}

    async def test_headers_key_and_position_travel_with_the_job_and_poison_fails(
        self, database_url: str, target: Target
    ) -> None:
        bootstrap, topic = target
        await produce(
            bootstrap,
            topic,
            [b'{"type": "echo", "i": 1}'],
            headers=[("trace", b"abc")],
            keys=[b"customer-7"],
        )
        await produce(bootstrap, topic, [b"not json", b'{"type": "rm -rf"}'])
        config = self.config(database_url, target, {"handler_from": "json:$.type"})
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
        assert headers["kafka-topic"] == topic
        assert good["dedup_key"] == (
            f"events:{topic}/{headers['kafka-partition']}/{headers['kafka-offset']}"
        )
        failed = [r for r in rows if r["status"] == "failed"]
        assert len(failed) == 2
        assert {bytes(r["body"]) for r in failed} == {b"not json", b'{"type": "rm -rf"}'}
        assert all(r["last_error"] for r in failed)

    async def test_where_a_record_came_from_survives_more_headers_than_the_store_keeps(
        self, database_url: str, target: Target
    ) -> None:
        # The kafka-* headers were added after the producer's, so 300 headers pushed them
        # past the 256 the store keeps.
        bootstrap, topic = target
        many = [(f"h{i:03}", b"v") for i in range(300)]
        assert await produce(bootstrap, topic, [b'{"type": "echo"}'], headers=many) == 1
        config = self.config(database_url, target, {"handler_from": "json:$.type"})
        async with running_daemon(config):
            await wait_for(lambda: jobs_at_least(database_url, 1), what="the job")
        headers = json.loads(await scalar(database_url, "SELECT headers FROM jobwire.jobs"))
        assert headers["kafka-topic"] == topic and headers["kafka-offset"] == "0"
        assert "kafka-partition" in headers and "h000" in headers

    async def test_stored_offsets_past_the_log_end_are_warned_of(
        self, database_url: str, target: Target
    ) -> None:
        # As after the topic was deleted and created again: offsets stored by its first
        # life, past the new log's end. Kafka starts such a partition over quietly (tansu
        # even serves nothing from there), and an old job's dedup key could swallow a new
        # record: nothing was said.
        bootstrap, topic = target
        assert await produce(bootstrap, topic, [b'{"type": "echo"}']) == 1
        conn = await asyncpg.connect(database_url)
        try:
            await conn.executemany(
                "INSERT INTO jobwire.kafka_offsets (group_id, topic, partition, next_offset)"
                " VALUES ($1, $2, $3, $4)",
                [(f"g-{topic}", topic, p, 500) for p in range(3)],
            )
        finally:
            await conn.close()
        config = self.config(database_url, target, {"handler_from": "json:$.type"})
        with capture_logs() as logs:

            def warned() -> list[dict[str, Any]]:
                return [e for e in logs if e["event"] == "kafka_stored_offset_past_log_end"]

            async with running_daemon(config):
                await wait_for(lambda: bool(warned()), what="the warning")
        (warning,) = warned()
        assert sorted(warning["partitions"]) == [f"{topic}/{p}" for p in range(3)]
        assert sorted(v["log_end"] for v in warning["partitions"].values()) == [0, 0, 1]
        assert {v["stored"] for v in warning["partitions"].values()} == {500}
        assert "deleted and created again" in warning["hint"]

    def test_sigkill_mid_stream_then_restart_makes_exactly_n_jobs(
        self, database_url: str, target: Target, tmp_path: Path
    ) -> None:
        n = 10_000
        bootstrap, topic = target
        # Small batches: many commits, so the kill lands between two of them.
        source = self.source_config(target, batch_size=100, **self.kill_source_extra)
        config = one_source_config(tmp_path, database_url, source, poll_interval="200ms")
        # The operator's way in: jobwire publish, acked by the broker (acks=all).
        publish_confirmed(config, "events", 10)
        assert asyncio.run(produce(bootstrap, topic, bodies(n - 10))) == n - 10

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
            asyncio.run(
                wait_for(lambda: jobs_at_least(database_url, n), timeout=90, what=f"{n} jobs")
            )
            assert second.terminate() == 0
        finally:
            second.stop_quietly()
        doubled = asyncio.run(
            scalar(database_url, "SELECT count(*) - count(DISTINCT dedup_key) FROM jobwire.jobs")
        )
        assert doubled == 0
        assert asyncio.run(job_count(database_url)) == n
        offsets = asyncio.run(stored_offsets(database_url, f"g-{topic}"))
        assert sum(offsets.values()) == n

    async def test_two_daemons_in_one_group_share_the_partitions_and_make_exactly_n_jobs(
        self, database_url: str, target: Target
    ) -> None:
        n = 6000
        config = self.config(database_url, target)
        async with running_daemon(config) as one, running_daemon(config) as two:
            adapters = [d.sources[0].adapter for d in (one, two)]

            def shared() -> bool:
                owned = [a._consumer.assignment() if a._consumer else set() for a in adapters]
                return all(owned) and len(owned[0] | owned[1]) == 3 and not owned[0] & owned[1]

            await wait_for(shared, timeout=60, what="both instances own partitions")
            assert await produce(target[0], target[1], bodies(n)) == n
            await wait_for(lambda: jobs_at_least(database_url, n), timeout=90, what=f"{n} jobs")
            stored = [d.sources[0].intake.counters.stored for d in (one, two)]
            assert all(stored), f"one instance stored nothing: {stored}"
            assert sum(stored) == n
        await assert_exactly(database_url, n)

    async def test_a_rebalance_while_the_intake_holds_deliveries_loses_and_doubles_nothing(
        self, database_url: str, target: Target
    ) -> None:
        """The first instance, alone, paces its intake to a small pool of slow jobs under a
        stream faster than the pool, so it holds deliveries it has not stored (their
        offsets not committed) when a second instance joins and takes partitions from it."""
        n, chunk = 4000, 40
        bootstrap, topic = target
        config = self.config(
            database_url,
            target,
            {"handler": "sleep"},
            workers={"concurrency": 4},
            **self.kill_source_extra,  # a short heartbeat: the rebalance comes sooner
        )

        async def stream() -> None:
            # About 400 messages a second; the pool runs about 200 (4 slots, 20 ms each).
            producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
            await producer.start()
            try:
                for start in range(0, n, chunk):
                    sent = [
                        await producer.send(topic, b'{"i": %d, "seconds": 0.02}' % i)
                        for i in range(start, start + chunk)
                    ]
                    await asyncio.gather(*sent)
                    await asyncio.sleep(0.1)
            finally:
                await producer.stop()

        async with running_daemon(config) as one:
            producing = asyncio.create_task(stream())
            intake = one.sources[0].intake
            await wait_for(lambda: intake.waiting > 0, timeout=30, what="deliveries held")
            async with running_daemon(config) as two:
                adapters = [d.sources[0].adapter for d in (one, two)]

                def shared() -> bool:
                    owned = [a.partitions for a in adapters]
                    return all(owned) and not owned[0] & owned[1]

                await wait_for(shared, timeout=60, what="the partitions shared")
                assert not producing.done(), "the rebalance came after the stream"
                await producing
                await wait_for(
                    lambda: jobs_at_least(database_url, n, "status = 'succeeded'"),
                    timeout=120,
                    what=f"{n} jobs succeeded",
                )
            assert one.pool.figures()["direct"] > 0  # it was pacing: jobs went straight to it
            assert two.sources[0].intake.counters.stored > 0
        await assert_exactly(database_url, n)
        runs = await fetch(
            database_url,
            "SELECT count(*) AS runs, count(DISTINCT job_id) AS jobs FROM jobwire.job_runs",
        )
        assert (runs[0]["runs"], runs[0]["jobs"]) == (n, n)  # none ran twice


# A producer writing a header name that is not UTF-8 (aiokafka's pure-Python record builder
# calls the name's encode()): three records, that one at offset 3, three more; partition 0.
# A producer that can send a header name that is not UTF-8 (aiokafka's pure-Python encoder
# calls the name's encode()), in a process of its own: the switch to that encoder is global.
_RAW_NAMES = """
import asyncio, os, sys
os.environ["AIOKAFKA_NO_EXTENSIONS"] = "1"
from aiokafka import AIOKafkaProducer

class RawName(str):
    def __new__(cls, raw):
        name = str.__new__(cls, raw.decode("latin-1"))
        name.raw = raw
        return name

    def encode(self, *args, **kwargs):
        return self.raw
"""


async def produce_raw_header_names(script: str, bootstrap: str, topic: str) -> None:
    """Run a ``_RAW_NAMES`` producer script to its end."""
    await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", _RAW_NAMES + script, bootstrap, topic],
        check=True,
        timeout=60,
    )


_PRODUCE_RAW_HEADER_NAME = """
async def main(bootstrap, topic):
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for i in range(7):
            body = b'{"type": "echo", "i": %d}' % i
            headers = [(RawName(b"x-\\xff\\xfe"), b"v")] if i == 3 else []
            await producer.send_and_wait(topic, body, partition=0, headers=headers)
    finally:
        await producer.stop()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


_PRODUCE_BAD_MID_BATCH = """
async def main(bootstrap, topic):
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=50)
    await producer.start()
    try:
        batch = producer.create_batch()
        for i in range(5):
            headers = [(RawName(b"x-\\xff"), b"v")] if i == 2 else []
            body = b'{"type": "echo", "p": 1, "i": %d}' % i
            batch.append(key=None, value=body, timestamp=None, headers=headers)
        batch.close()
        await (await producer.send_batch(batch, topic, partition=1))
        sent = []
        for partition, count in ((0, 300), (2, 300), (1, 10)):
            for i in range(count):
                body = b'{"type": "echo", "p": %d, "i": %d}' % (partition, 100 + i)
                sent.append(await producer.send(topic, body, partition=partition))
        await asyncio.gather(*sent)
    finally:
        await producer.stop()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""
