"""The AMQP output: the output suite on RabbitMQ (default exchange, a fresh queue)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aio_pika
import pytest

from jobwire.models import JobSpec
from tests.integration.outputs.base import OutputSuite, Received, collecting, enqueue
from tests.support import hostile as h
from tests.support.inprocess import running_daemon
from tests.support.rows import fetch
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(120)


def fresh_queue() -> Iterator[str]:
    """A durable queue made for one test, deleted after it."""
    name = f"jw-out-{uuid.uuid4().hex[:8]}"
    yield name
    h.delete_amqp_queue(name)


async def declare(queue: str) -> None:
    """Declare the queue (durable) before anything is published to it."""
    connection = await aio_pika.connect(h.AMQP_URL)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(queue, durable=True)


@contextlib.asynccontextmanager
async def amqp_consumer(queue: str) -> AsyncIterator[Received]:
    """Consume ``queue`` (declared here) with acks; collect (message_id, body)."""
    await declare(queue)

    async def run(got: Received) -> None:
        connection = await aio_pika.connect(h.AMQP_URL)
        async with connection:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=500)
            declared = await channel.declare_queue(queue, durable=True)
            async with declared.iterator() as messages:
                async for message in messages:
                    got.messages.append((message.message_id, message.body))
                    await message.ack()

    async with collecting(run) as got:
        yield got


class TestAmqpOutput(OutputSuite):
    """RabbitMQ through the default exchange."""

    @pytest.fixture
    def target(self) -> Iterator[str]:
        yield from fresh_queue()

    def output(self, target: Any) -> dict[str, Any]:
        return {"type": "amqp", "url": h.AMQP_URL, "routing_key": target}

    def consume(self, target: Any) -> contextlib.AbstractAsyncContextManager[Received]:
        return amqp_consumer(target)

    async def test_builtin_publish_bridges_a_jobs_payload(
        self, database_url: str, target: str
    ) -> None:
        config = self.config(database_url, target)
        config = config.model_validate(
            {**config.model_dump(), "handlers": {"out": "builtin:publish"}}
        )
        async with self.consume(target) as got, running_daemon(config):
            (job,) = await enqueue(database_url, [JobSpec("out", {"order": 7})])
            await wait_for(lambda: got.messages, timeout=30, what="the bridged message")
        assert got.messages == [(f"jobwire-{job}-1", b'{"order":7}')]

    async def test_threaded_handler_publishes_and_an_unknown_output_fails_the_job(
        self, database_url: str, target: str
    ) -> None:
        config = self.config(database_url, target)
        handlers = {"thread": "tests.integration.outputs.handlers:publish_threaded"}
        config = config.model_validate({**config.model_dump(), "handlers": handlers})
        async with self.consume(target) as got, running_daemon(config):
            good, bad = await enqueue(
                database_url, [JobSpec("thread", {}), JobSpec("thread", {"output": "nope"})]
            )
            await wait_for(lambda: got.messages, timeout=30, what="the thread's message")
            await wait_for(
                lambda: _failed(database_url, bad), timeout=30, what="the unknown output fails"
            )
        assert got.messages == [(f"jobwire-{good}-1", b"from a thread")]
        rows = await fetch(database_url, "SELECT last_error FROM jobwire.jobs WHERE id = $1", bad)
        assert "unknown output 'nope' (outputs: out)" in rows[0]["last_error"]


async def _failed(database_url: str, job_id: int) -> bool:
    rows = await fetch(database_url, "SELECT status FROM jobwire.jobs WHERE id = $1", job_id)
    return rows[0]["status"] == "failed"


async def test_an_unroutable_message_stays_in_the_outbox(database_url: str) -> None:
    """A mandatory message no queue receives is returned: its row is not marked sent, and
    not set aside either (the binding is missing, not the message at fault): it waits."""
    suite = TestAmqpOutput()
    nowhere = f"jw-nowhere-{uuid.uuid4().hex[:8]}"  # no such queue: the default exchange
    async with running_daemon(suite.config(database_url, nowhere, max_attempts=1)):
        (job,) = await enqueue(database_url, [JobSpec("pub", {"count": 1})])
        await wait_for(
            lambda: _outbox_error(database_url, job),
            timeout=30,
            what="the returned message's row gets an error",
        )
    rows = await fetch(
        database_url,
        "SELECT sent_at, failed_at, last_error FROM jobwire.outbox WHERE job_id = $1",
        job,
    )
    assert [(r["sent_at"], r["failed_at"]) for r in rows] == [(None, None)]
    assert "DeliveryError" in rows[0]["last_error"] or "NO_ROUTE" in rows[0]["last_error"]


async def _outbox_error(database_url: str, job_id: int) -> bool:
    rows = await fetch(
        database_url,
        "SELECT last_error FROM jobwire.outbox WHERE job_id = $1 AND last_error IS NOT NULL",
        job_id,
    )
    return bool(rows)


@pytest.mark.parametrize("trouble", ["no such exchange", "queue full, reject-publish"])
async def test_a_destination_the_broker_refuses_charges_no_row(
    database_url: str, trouble: str
) -> None:
    """Not the message's fault, as a return is not: with one try allowed, a charged row
    would be set aside at once (a drill saw rows set aside after ten tries, one every
    30 s, while an exchange was missing)."""
    suite = TestAmqpOutput()
    queue = f"jw-refusing-{uuid.uuid4().hex[:8]}"
    extra: dict[str, Any] = {"max_attempts": 1}
    connection = await aio_pika.connect(h.AMQP_URL)
    try:
        channel = await connection.channel()
        if trouble == "no such exchange":
            extra["exchange"] = f"jw-no-such-{uuid.uuid4().hex[:8]}"
        else:
            full = {"x-max-length": 1, "x-overflow": "reject-publish"}
            await channel.declare_queue(queue, durable=True, arguments=full)
            await channel.default_exchange.publish(aio_pika.Message(b"first"), queue)
        async with running_daemon(suite.config(database_url, queue, **extra)):
            (job,) = await enqueue(database_url, [JobSpec("pub", {"count": 1})])
            await wait_for(
                lambda: _outbox_error(database_url, job), timeout=30, what="the row's error"
            )
        rows = await fetch(
            database_url,
            "SELECT sent_at, failed_at, attempts FROM jobwire.outbox WHERE job_id = $1",
            job,
        )
        assert [(r["sent_at"], r["failed_at"], r["attempts"]) for r in rows] == [(None, None, 0)]
    finally:
        with contextlib.suppress(Exception):
            await channel.queue_delete(queue)
        await connection.close()
