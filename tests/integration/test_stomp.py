"""STOMP intake against RabbitMQ's STOMP plugin: a fresh uuid-named destination per test."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest

from jobwire.adapters.stomp import StompAdapter
from jobwire.config import Config, StompSource
from tests.support.inprocess import running_daemon
from tests.support.rows import job_count, jobs_at_least, scalar
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(120)
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


@pytest.fixture
async def destination() -> AsyncIterator[str]:
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 61613)) != 0:
            pytest.skip("RabbitMQ's STOMP plugin is not listening on 61613 (scripts/services)")
    name = f"jw-stomp-{uuid.uuid4().hex[:10]}"
    yield f"/queue/{name}"
    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel()
    await channel.queue_delete(name)
    await connection.close()


def stomp_config(
    database_url: str,
    destination: str,
    port: int = 61613,
    route: dict[str, Any] | None = None,
    **source: Any,
) -> Config:
    return Config.model_validate(
        {
            "database": {"url": database_url},
            "workers": {"poll_interval": "200ms", "concurrency": 32},
            "sources": [
                {
                    "name": "koha",
                    "type": "stomp",
                    "port": port,
                    "destination": destination,
                    "heartbeat": "2s",
                    "route": route or {"handler": "noop"},
                    **source,
                }
            ],
        }
    )


def publisher(destination: str) -> StompAdapter:
    cfg = StompSource.model_validate(
        {"name": "pub", "type": "stomp", "destination": destination, "route": {"handler": "noop"}}
    )
    return StompAdapter(cfg)


async def queue_depth(destination: str) -> int:
    """Ready messages left in the RabbitMQ queue behind a /queue/ destination."""
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(destination.removeprefix("/queue/"), passive=True)
        return queue.declaration_result.message_count or 0
    finally:
        await connection.close()


async def test_thousand_messages_and_a_repeated_message_id(
    database_url: str, destination: str
) -> None:
    config = stomp_config(database_url, destination, route={"handler": "echo"})
    async with running_daemon(config) as daemon:
        assert await publisher(destination).publish(b'{"n": 1}', {}, count=1000) == 1000
        await publisher(destination).publish(b"{}", {"amqp-message-id": "same"}, count=2)

        async def all_done() -> bool:
            return await job_count(database_url, "status = 'succeeded'") == 1001

        await wait_for(all_done, timeout=60, what="1001 succeeded jobs")
        counters = daemon.sources[0].intake.counters

        async def all_acked() -> bool:
            return counters.acked == 1002

        await wait_for(all_acked, what="1002 deliveries acked")
        assert (counters.stored, counters.duplicate) == (1001, 1)
    assert await job_count(database_url) == 1001
    assert await queue_depth(destination) == 0  # nothing came back unacked after the stop


async def test_poison_message_fails_with_its_reason(database_url: str, destination: str) -> None:
    config = stomp_config(database_url, destination, route={"handler_from": "header:type"})
    async with running_daemon(config):
        await publisher(destination).publish(b"{}", {"type": "not-allowed"})
        await publisher(destination).publish(b"{}", {"type": "echo"})

        async def two() -> bool:
            return await job_count(database_url, "status IN ('failed', 'succeeded')") == 2

        await wait_for(two, what="two finished jobs")
    assert (
        await job_count(
            database_url, "status = 'failed' AND last_error LIKE 'handler ''not-allowed''%'"
        )
        == 1
    )


async def test_connection_closed_by_the_broker_twice_reconnects_each_time(
    database_url: str, destination: str
) -> None:
    config = stomp_config(database_url, destination)
    async with running_daemon(config) as daemon:
        adapter = daemon.sources[0].adapter
        sent = 0
        for _ in range(2):
            await publisher(destination).publish(b"{}", {}, count=50)
            sent += 50
            await wait_for(lambda s=sent: jobs_at_least(database_url, s), what=f"{sent} jobs")
            proc = await asyncio.create_subprocess_exec(
                "rabbitmqctl",
                "close_all_connections",
                "test: stomp drop",
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            assert await asyncio.wait_for(proc.wait(), 60) == 0

            async def back_up() -> bool:
                return adapter.state.value == "up" and adapter.last_error is not None

            await wait_for(back_up, timeout=30, what="source reconnected")
            adapter.last_error = None
        await publisher(destination).publish(b"{}", {}, count=50)
        await wait_for(lambda: jobs_at_least(database_url, 150), what="150 jobs")
    assert await job_count(database_url) == 150


def test_cli_publish_through_a_stomp_source(destination: str, tmp_path: Any) -> None:
    from tests.support.daemon import jobwire, write_config

    config = write_config(
        tmp_path / "jobwire.yaml",
        {
            "sources": [
                {
                    "name": "koha",
                    "type": "stomp",
                    "destination": destination,
                    "route": {"handler": "noop"},
                }
            ]
        },
    )
    out = jobwire(
        "publish",
        "koha",
        "--body",
        '{"job_id": 1}',
        "--header",
        "type=x",
        "--count",
        "3",
        "-c",
        str(config),
    )
    assert out.stdout.strip() == "published 3, confirmed 3"
    assert asyncio.run(queue_depth(destination)) == 3


async def test_notify_mode_rows_first_then_notifications_even_without_the_broker(
    database_url: str, destination: str
) -> None:
    from jobwire import Client, JobSpec

    config = stomp_config(database_url, destination, route={"mode": "notify"})
    async with running_daemon(config) as daemon, Client(database_url) as client:
        # Koha's way: the producer writes the row, then sends {"job_id": N}.
        ids = await client.enqueue_many([JobSpec("echo", {"n": i}) for i in range(100)])
        sender = publisher(destination)
        for job_id in ids:
            await sender.publish(b'{"job_id": %d}' % job_id, {})

        async def all_done() -> bool:
            return await job_count(database_url, "status = 'succeeded'") == 100

        await wait_for(all_done, what="100 notified jobs succeeded")
        counters = daemon.sources[0].intake.counters
        await wait_for(lambda: counters.acked == 100, what="100 notifications acked")

        # The broker goes away: jobs written meanwhile still run, found by polling.
        proc = await asyncio.create_subprocess_exec(
            "rabbitmqctl",
            "stop_app",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        assert await asyncio.wait_for(proc.wait(), 120) == 0
        try:
            more = await client.enqueue_many([JobSpec("echo", {"m": i}) for i in range(20)])

            async def ran_without_broker() -> bool:
                return await job_count(database_url, "status = 'succeeded'") == 120

            await wait_for(ran_without_broker, what="20 jobs run with the broker stopped")
        finally:
            proc = await asyncio.create_subprocess_exec(
                "rabbitmqctl",
                "start_app",
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            assert await asyncio.wait_for(proc.wait(), 120) == 0
        assert len(more) == 20
    runs = await scalar(database_url, "SELECT count(*) FROM jobwire.job_runs")
    twice = await job_count(database_url, "attempts <> 1")
    assert (runs, twice) == (120, 0)  # each job ran exactly once
