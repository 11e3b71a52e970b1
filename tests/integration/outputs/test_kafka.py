"""The Kafka output: the output suite on tansu (a fresh topic of three partitions)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer

from jobwire.models import JobSpec
from tests.integration.outputs.base import OutputSuite, Received, collecting, enqueue
from tests.support.inprocess import running_daemon
from tests.support.kafka import TansuBroker
from tests.support.rows import fetch
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(120)


class TestKafkaOutput(OutputSuite):
    """Kafka: the row's key is the record key; the id is the ``jobwire-id`` header."""

    @pytest.fixture
    def target(self, kafka_broker: TansuBroker, kafka_topic: str) -> tuple[str, str]:
        return kafka_broker.bootstrap, kafka_topic

    def output(self, target: Any) -> dict[str, Any]:
        bootstrap, topic = target
        # tansu has no InitProducerId, which the idempotent producer needs.
        return {
            "type": "kafka",
            "bootstrap_servers": bootstrap,
            "topic": topic,
            "idempotent": False,
        }

    def consume(self, target: Any) -> contextlib.AbstractAsyncContextManager[Received]:
        return kafka_consumer(*target)

    async def test_a_record_too_large_is_set_aside_at_once(
        self, database_url: str, target: Any
    ) -> None:
        async with self.consume(target) as got, running_daemon(self.config(database_url, target)):
            (job,) = await enqueue(
                database_url, [JobSpec("pub", {"count": 3, "key": "k", "pad_first": 2_000_000})]
            )
            later = {f"jobwire-{job}-2", f"jobwire-{job}-3"}
            await wait_for(
                lambda: got.distinct() >= later, timeout=30, what="the key's later records"
            )
        rows = await fetch(
            database_url,
            "SELECT n, sent_at IS NOT NULL AS sent, failed_at IS NOT NULL AS failed, attempts,"
            " last_error FROM jobwire.outbox WHERE job_id = $1 ORDER BY n",
            job,
        )
        assert [(r["n"], r["sent"], r["failed"]) for r in rows] == [
            (1, False, True),
            (2, True, False),
            (3, True, False),
        ]
        assert rows[0]["attempts"] == 1, "refused for good: not retried"
        assert "TooLarge" in rows[0]["last_error"]
        assert f"jobwire-{job}-1" not in got.distinct()


@contextlib.asynccontextmanager
async def kafka_consumer(bootstrap: str, topic: str) -> AsyncIterator[Received]:
    """Read the topic from the start; collect (jobwire-id header, value)."""

    async def run(got: Received) -> None:
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=f"jw-out-{uuid.uuid4().hex[:8]}",
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            async for record in consumer:
                ids = [v.decode() for k, v in record.headers if k == "jobwire-id"]
                got.messages.append((ids[0] if ids else None, record.value))
        finally:
            await consumer.stop()

    async with collecting(run) as got:
        yield got
