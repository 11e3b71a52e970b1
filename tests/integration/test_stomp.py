"""STOMP intake against RabbitMQ's STOMP plugin: a fresh uuid-named destination per test."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest

from jobwire.adapters.stomp import StompAdapter, StompSource
from jobwire.adapters.stomp import adapter as stomp_adapter
from jobwire.config import Config
from tests.support.daemon import jobwire, write_config
from tests.support.inprocess import running_daemon
from tests.support.rows import fetch, job_count, jobs_at_least, scalar
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


def test_dead_letter_without_a_destination_is_refused(tmp_path: Any) -> None:
    """A STOMP NACK without requeue makes RabbitMQ drop the message: no destination, no run."""
    source = {
        "name": "koha",
        "type": "stomp",
        "destination": "/queue/jobs",
        "on_invalid": "dead-letter",
        "route": {"handler": "noop"},
    }
    config = write_config(tmp_path / "jobwire.yaml", {"sources": [source]})
    for command in ("check-config", "run"):
        proc = jobwire(command, "-c", str(config), check=False, timeout=30)
        assert proc.returncode == 2, proc.stderr
        assert "sources[0].dead_letter_destination: on_invalid dead-letter needs" in proc.stderr
        assert "Traceback" not in proc.stderr


@contextlib.asynccontextmanager
async def dead_letter_queue(
    destination: str,
) -> AsyncIterator[tuple[str, aio_pika.abc.AbstractQueue]]:
    """A ``/queue/`` destination for poison and the RabbitMQ queue behind it (deleted after)."""
    name = f"{destination.removeprefix('/queue/')}.dlq"
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        # Declared as RabbitMQ's STOMP plugin declares a SEND's /queue/ (durable).
        queue = await channel.declare_queue(name, durable=True)
        yield f"/queue/{name}", queue
        await channel.queue_delete(name)
    finally:
        await connection.close()


async def test_dead_letter_sends_poison_to_its_destination_and_stores_the_rest(
    database_url: str, destination: str
) -> None:
    async with dead_letter_queue(destination) as (dead_letters, dlq):
        config = stomp_config(
            database_url,
            destination,
            route={"handler_from": "json:$.type"},
            on_invalid="dead-letter",
            dead_letter_destination=dead_letters,
        )
        poison = b"this is not JSON \x00\xff"
        async with running_daemon(config) as daemon:
            sender = publisher(destination)
            await sender.publish(b'{"type": "echo", "n": 1}', {"amqp-message-id": "good-1"})
            await sender.publish(poison, {"amqp-message-id": "bad", "trace": "abc"})
            await sender.publish(b'{"type": "echo", "n": 2}', {"amqp-message-id": "good-2"})

            async def both_done() -> bool:
                return await job_count(database_url, "status = 'succeeded'") == 2

            await wait_for(both_done, what="the two good messages run")
            counters = daemon.sources[0].intake.counters
            await wait_for(lambda: counters.dead_lettered == 1, what="poison dead-lettered")
            copy = await wait_for(lambda: dlq.get(no_ack=True, fail=False), what="the copy")
        assert await queue_depth(destination) == 0  # the original was acked, not left behind
    assert copy.body == poison
    headers = {k: v.decode() if isinstance(v, bytes) else v for k, v in copy.headers.items()}
    assert headers["trace"] == "abc"  # the producer's headers travel with it
    assert headers["x-jobwire-original-destination"] == destination
    assert headers["x-jobwire-source"] == "koha"
    assert headers["x-jobwire-reason"]
    rows = await fetch(database_url, "SELECT payload->>'n' AS n, body FROM jobwire.jobs")
    assert sorted(r["n"] for r in rows) == ["1", "2"]  # no row for the poison
    assert all(r["body"] != poison for r in rows)


async def test_dead_letter_copy_refused_keeps_the_original_as_a_failed_job(
    database_url: str, destination: str
) -> None:
    """The copy is not confirmed (no such exchange): the original is not acked then, so it
    comes back; its redelivery is kept as a failed job at once, not copied again and again."""
    config = stomp_config(
        database_url,
        destination,
        route={"handler_from": "json:$.type"},
        on_invalid="dead-letter",
        dead_letter_destination=f"/exchange/jw-missing-{uuid.uuid4().hex[:10]}",
    )
    async with running_daemon(config) as daemon:
        adapter = daemon.sources[0].adapter
        assert isinstance(adapter, StompAdapter)
        await publisher(destination).publish(b"not json", {"amqp-message-id": "bad"})
        await wait_for(lambda: adapter.dead_letter_failures >= 1, what="the copy refused")
        await wait_for(lambda: _kept_as_failed(database_url), what="kept as a failed job")
        await wait_for(lambda: _settled(destination), what="the original settled", timeout=20)
        assert adapter.dead_letter_failures == 1  # not tried again: no loop
    rows = await fetch(database_url, "SELECT status, body FROM jobwire.jobs")
    assert [(r["status"], r["body"]) for r in rows] == [("failed", b"not json")]


async def _kept_as_failed(database_url: str) -> bool:
    rows = await fetch(database_url, "SELECT status FROM jobwire.jobs")
    return [r["status"] for r in rows] == ["failed"]


async def _settled(destination: str) -> bool:
    return await queue_depth(destination) == 0


async def test_dead_letter_receipt_that_never_comes_never_loses_the_original(
    database_url: str, destination: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker takes the copy but its RECEIPT is lost: after the timeout the connection
    is given up, so the original is not acked then; it comes back and is kept as a failed
    job. Copies may repeat; the original is never lost."""
    monkeypatch.setattr(StompAdapter, "_on_receipt", lambda self, frame: None)
    monkeypatch.setattr(stomp_adapter, "DEAD_LETTER_TIMEOUT", 0.5)
    async with dead_letter_queue(destination) as (dead_letters, dlq):
        config = stomp_config(
            database_url,
            destination,
            route={"handler_from": "json:$.type"},
            on_invalid="dead-letter",
            dead_letter_destination=dead_letters,
        )
        async with running_daemon(config) as daemon:
            adapter = daemon.sources[0].adapter
            assert isinstance(adapter, StompAdapter)
            await publisher(destination).publish(b"not json", {"amqp-message-id": "bad"})
            await wait_for(lambda: adapter.dead_letter_failures >= 1, what="copy unconfirmed")

            def given_up() -> bool:
                return "dead-letter copy not confirmed" in (adapter.last_error or "")

            await wait_for(given_up, what="the connection given up")
            await wait_for(lambda: _kept_as_failed(database_url), what="kept as a failed job")
            await wait_for(lambda: _settled(destination), what="the original settled")
        copy = await wait_for(lambda: dlq.get(no_ack=True, fail=False), what="a copy")
    assert copy.body == b"not json"


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


def _send_with_stomp_py(destination: str, messages: list[tuple[bytes, dict[str, str]]]) -> None:
    """SEND through stomp.py itself (not jobwire's publish), waiting for each RECEIPT."""
    import threading

    import stomp

    receipts: set[str] = set()
    changed = threading.Condition()

    class Receipts(stomp.ConnectionListener):  # type: ignore[misc]
        def on_receipt(self, frame: Any) -> None:
            with changed:
                receipts.add(frame.headers["receipt-id"])
                changed.notify_all()

    conn = stomp.Connection12([("127.0.0.1", 61613)], vhost="/", auto_decode=False)
    conn.set_listener("receipts", Receipts())
    conn.connect("guest", "guest", wait=True)
    try:
        for n, (body, headers) in enumerate(messages):
            extra = {"persistent": "true", "receipt": f"r-{n}", **headers}
            conn.send(destination, body, content_type="application/json", headers=extra)
        wanted = {f"r-{n}" for n in range(len(messages))}
        with changed:
            assert changed.wait_for(lambda: wanted <= receipts, timeout=30), "no receipts"
    finally:
        conn.disconnect()


async def test_a_nul_in_a_header_value_keeps_the_message_whole(
    database_url: str, destination: str
) -> None:
    """STOMP 1.2 allows a NUL in a header and RabbitMQ forwards it raw, while a NUL also ends
    a frame: the frame is read whole (by its content-length), so the body and the dedup key
    are kept and only the header the store cannot hold is replaced by a marker."""
    import json

    config = stomp_config(database_url, destination, route={"handler": "echo"})
    async with running_daemon(config):
        await asyncio.to_thread(
            _send_with_stomp_py,
            destination,
            [
                (b'{"n": 1}', {"amqp-message-id": "good-1"}),
                (b'{"n": 2}', {"x-hostile": "a\x00b", "amqp-message-id": "nul-1"}),
                (b'{"n": 3}', {"amqp-message-id": "good-2"}),
            ],
        )

        async def three_done() -> bool:
            return await job_count(database_url, "status IN ('succeeded', 'failed')") == 3

        await wait_for(three_done, what="three finished jobs")
    rows = await fetch(
        database_url,
        "SELECT dedup_key, status, payload::text AS payload, headers::text AS headers"
        " FROM jobwire.jobs",
    )
    # A JSON body is kept as the payload.
    jobs = {r["dedup_key"]: (r["status"], json.loads(r["payload"] or "null")) for r in rows}
    assert jobs == {
        "koha:good-1": ("succeeded", {"n": 1}),
        "koha:nul-1": ("succeeded", {"n": 2}),
        "koha:good-2": ("succeeded", {"n": 3}),
    }
    headers = json.loads(next(r["headers"] for r in rows if r["dedup_key"] == "koha:nul-1"))
    assert headers["x-hostile"].startswith("[jobwire: header"), headers
    assert headers["amqp-message-id"] == "nul-1"
