"""AMQP intake against the real RabbitMQ: a fresh uuid-named queue per test."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import aiormq
import aiormq.abc
import pytest

from jobwire import Client
from jobwire.adapters.amqp import install_fast_path
from jobwire.adapters.amqp.channel import InlineConsumer, InlineDeliveryChannel
from jobwire.config import Config
from tests.support.daemon import Daemon as DaemonProcess
from tests.support.daemon import jobwire, one_source_config, publish_confirmed, write_config
from tests.support.inprocess import running_daemon
from tests.support.rows import fetch, job_count, jobs_at_least
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(120)
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


@pytest.fixture
async def amqp() -> AsyncIterator[aio_pika.abc.AbstractConnection]:
    try:
        connection = await aio_pika.connect(AMQP_URL)
    except OSError as exc:
        pytest.skip(f"no RabbitMQ at {AMQP_URL}: {exc}")
    yield connection
    await connection.close()


@pytest.fixture
async def queue_name() -> AsyncIterator[str]:
    name = f"jw-test-{uuid.uuid4().hex[:10]}"
    yield name
    # A fresh connection: a test may have had the broker close its others.
    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel()
    for queue in (name, f"{name}.dlq"):
        await channel.queue_delete(queue)
    await channel.exchange_delete(f"{name}.dlx")
    await connection.close()


def amqp_config(
    database_url: str, queue: str, route: dict[str, Any] | None = None, **source: Any
) -> Config:
    return Config.model_validate(
        {
            "database": {"url": database_url},
            "workers": {"poll_interval": "200ms", "concurrency": 32},
            "sources": [
                {
                    "name": "orders",
                    "type": "amqp",
                    "url": AMQP_URL,
                    "queue": queue,
                    "prefetch": 500,
                    "route": route or {"handler": "noop"},
                    **source,
                }
            ],
        }
    )


async def publish(
    amqp: aio_pika.abc.AbstractConnection,
    queue: str,
    bodies: list[bytes],
    message_ids: list[str | None] | None = None,
    content_type: str = "application/json",
    headers: dict[str, Any] | None = None,
) -> int:
    """Publish with confirms; returns how many the broker confirmed."""
    channel = await amqp.channel(publisher_confirms=True)
    await channel.declare_queue(queue, passive=True)  # the daemon declared it, with its arguments
    ids = message_ids or [uuid.uuid4().hex for _ in bodies]
    confirmed = 0
    for start in range(0, len(bodies), 500):
        await asyncio.gather(
            *(
                channel.default_exchange.publish(
                    aio_pika.Message(
                        body,
                        message_id=mid,
                        content_type=content_type,
                        headers=headers,
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ),
                    routing_key=queue,
                )
                for body, mid in zip(
                    bodies[start : start + 500], ids[start : start + 500], strict=True
                )
            )
        )
        confirmed += len(bodies[start : start + 500])
    await channel.close()
    return confirmed


async def queue_counts(amqp: aio_pika.abc.AbstractConnection, queue: str) -> tuple[int, int]:
    """(ready messages, consumers) as the broker reports them."""
    channel = await amqp.channel()
    try:
        declared = await channel.declare_queue(queue, passive=True)
        result = declared.declaration_result
        return result.message_count or 0, result.consumer_count or 0
    finally:
        await channel.close()


async def test_thousand_messages_become_thousand_succeeded_jobs(
    database_url: str, queue_name: str, amqp: aio_pika.abc.AbstractConnection
) -> None:
    n = 1000
    config = amqp_config(database_url, queue_name, {"handler": "echo"})
    async with running_daemon(config) as daemon:
        assert await publish(amqp, queue_name, [b'{"n": %d}' % i for i in range(n)]) == n

        async def all_succeeded() -> bool:
            return await job_count(database_url, "status = 'succeeded'") == n

        await wait_for(all_succeeded, timeout=60, what=f"{n} succeeded jobs")
        assert await queue_counts(amqp, queue_name) == (0, 1)
        counters = daemon.sources[0].intake.counters
        assert (counters.received, counters.stored, counters.acked) == (n, n, n)
    rows = await fetch(database_url, "SELECT payload, source, dedup_key FROM jobwire.jobs")
    assert sorted(json.loads(r["payload"])["n"] for r in rows) == list(range(n))
    assert {r["source"] for r in rows} == {"orders"}
    assert all(r["dedup_key"].startswith("orders:") for r in rows)
    assert await queue_counts(amqp, queue_name) == (0, 0)  # nothing left unacked after stop


async def test_same_message_id_twice_makes_one_job_and_both_are_acked(
    database_url: str, queue_name: str, amqp: aio_pika.abc.AbstractConnection
) -> None:
    config = amqp_config(database_url, queue_name)
    async with running_daemon(config) as daemon:
        await publish(amqp, queue_name, [b"{}", b"{}", b"{}"], ["same", "same", "other"])
        counters = daemon.sources[0].intake.counters

        async def settled() -> bool:
            return counters.acked == 3

        await wait_for(settled, what="three deliveries acked")
        assert (counters.stored, counters.duplicate) == (2, 1)
    assert await job_count(database_url) == 2
    assert await queue_counts(amqp, queue_name) == (0, 0)


async def test_poison_messages_fail_with_reasons_and_consuming_goes_on(
    database_url: str, queue_name: str, amqp: aio_pika.abc.AbstractConnection
) -> None:
    config = amqp_config(
        database_url, queue_name, {"handler_from": "json:$.type"}, max_body_bytes=100
    )
    async with running_daemon(config):
        await publish(amqp, queue_name, [b"{not json"], ["bad-json"])
        await publish(amqp, queue_name, [b'{"type": "os:system"}'], ["not-allowed"])
        await publish(amqp, queue_name, [b'{"no_type": 1}'], ["unroutable"])
        await publish(
            amqp, queue_name, [b'{"type": "echo", "pad": "%s"}' % (b"x" * 200)], ["too-big"]
        )
        await publish(
            amqp, queue_name, [b"\x00\x01"], ["binary"], content_type="application/octet-stream"
        )
        await publish(amqp, queue_name, [b'{"type": "echo", "ok": true}'], ["good"])

        async def six_jobs() -> bool:
            return await job_count(database_url, "status IN ('failed', 'succeeded')") == 6

        await wait_for(six_jobs, what="six jobs finished")
    rows = {
        r["dedup_key"].split(":", 1)[1]: r
        for r in await fetch(
            database_url, "SELECT dedup_key, status, last_error, body FROM jobwire.jobs"
        )
    }
    assert rows["good"]["status"] == "succeeded"
    expected = {
        "bad-json": "body is not valid JSON",
        "not-allowed": "handler 'os:system' (from json:$.type) is not in the allow-list",
        "unroutable": "no handler: json:$.type is missing",
        "too-big": "body of 227 bytes exceeds max_body_bytes 100",
        "binary": "route reads json:$.type but the body is application/octet-stream, not JSON",
    }
    for key, reason in expected.items():
        assert rows[key]["status"] == "failed"
        assert rows[key]["last_error"].startswith(reason), rows[key]["last_error"]
        assert rows[key]["body"]  # the raw body is kept
    assert await queue_counts(amqp, queue_name) == (0, 0)


async def test_dead_letter_mode_sends_poison_to_the_broker_dlx(
    database_url: str, queue_name: str, amqp: aio_pika.abc.AbstractConnection
) -> None:
    channel = await amqp.channel()
    dlx = await channel.declare_exchange(f"{queue_name}.dlx", "fanout", durable=True)
    dlq = await channel.declare_queue(f"{queue_name}.dlq", durable=True)
    await dlq.bind(dlx)
    config = amqp_config(
        database_url,
        queue_name,
        {"handler_from": "json:$.type"},
        on_invalid="dead-letter",
        dead_letter_exchange=f"{queue_name}.dlx",
    )
    poison = [b"not JSON at all", b'{"type": "rm -rf"}']  # unreadable; not allow-listed
    async with running_daemon(config):
        await publish(
            amqp,
            queue_name,
            [b'{"type": "echo", "n": 1}', poison[0], poison[1], b'{"type": "echo", "n": 2}'],
            ["good-1", "poison-1", "poison-2", "good-2"],
            headers={"trace": "abc"},
        )

        async def both_done() -> bool:
            return await job_count(database_url, "status = 'succeeded'") == 2

        await wait_for(both_done, what="the two good messages run")
        copies = [await wait_for(lambda: dlq.get(no_ack=True, fail=False)) for _ in poison]
    assert sorted(c.body for c in copies) == sorted(poison)
    assert sorted(str(c.message_id) for c in copies) == ["poison-1", "poison-2"]
    assert {c.headers["trace"] for c in copies} == {"abc"}  # the broker's own dead-lettering
    rows = await fetch(database_url, "SELECT dedup_key, body FROM jobwire.jobs")
    assert sorted(r["dedup_key"] for r in rows) == ["orders:good-1", "orders:good-2"]
    assert await queue_counts(amqp, queue_name) == (0, 0)
    await channel.close()


def test_dead_letter_without_an_exchange_is_refused(tmp_path: Path) -> None:
    """basic.reject on a queue without a dead-letter exchange drops the message: no run."""
    for extra in ({}, {"declare": False}):
        source = {
            "name": "orders",
            "type": "amqp",
            "queue": "orders",
            "on_invalid": "dead-letter",
            "route": {"handler": "noop"},
            **extra,
        }
        config = write_config(tmp_path / "jobwire.yaml", {"sources": [source]})
        for command in ("check-config", "run"):
            proc = jobwire(command, "-c", str(config), check=False, timeout=30)
            assert proc.returncode == 2, proc.stderr
            assert "sources[0].dead_letter_exchange: on_invalid dead-letter needs" in proc.stderr
            assert "Traceback" not in proc.stderr


async def _queue_empty(amqp: aio_pika.abc.AbstractConnection, queue: str) -> bool:
    return (await queue_counts(amqp, queue))[0] == 0


async def test_consumer_comes_back_after_the_broker_drops_the_connection(
    database_url: str, queue_name: str, amqp: aio_pika.abc.AbstractConnection
) -> None:
    config = amqp_config(database_url, queue_name)
    async with running_daemon(config) as daemon:
        await publish(amqp, queue_name, [b"{}"] * 10)
        await wait_for(lambda: jobs_at_least(database_url, 10), what="first 10 jobs")
        # The broker closes our connection, as on a node restart.
        proc = await asyncio.create_subprocess_exec(
            "rabbitmqctl",
            "close_all_connections",
            "test: broker drop",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        assert await asyncio.wait_for(proc.wait(), 60) == 0

        await assert_consuming_again(database_url, queue_name, expected_jobs=15)
        assert daemon.sources[0].adapter.state.value == "up"
    assert await job_count(database_url) == 15


async def assert_consuming_again(database_url: str, queue: str, expected_jobs: int) -> None:
    """After a broker outage: one consumer is back on the queue and 5 new messages make jobs."""
    # A fresh connection: the outage closed the test's own connections too.
    fresh = await aio_pika.connect(AMQP_URL)
    try:

        async def consumer_back() -> bool:
            return (await queue_counts(fresh, queue))[1] == 1

        await wait_for(consumer_back, timeout=60, what="consumer back (consumer count 1)")
        await publish(fresh, queue, [b"{}"] * 5)
        await wait_for(
            lambda: jobs_at_least(database_url, expected_jobs),
            what="new messages became jobs after the outage",
        )
    finally:
        await fresh.close()


def config_with_published(tmp_path: Path, database_url: str, queue: str, n: int) -> Path:
    """A config file for a daemon in a subprocess (one AMQP source, no-op jobs), after
    ``jobwire publish`` has put n confirmed messages on its queue."""
    source = {
        "name": "orders",
        "type": "amqp",
        "url": AMQP_URL,
        "queue": queue,
        "route": {"handler": "noop"},
    }
    config = one_source_config(tmp_path, database_url, source, poll_interval="200ms")
    publish_confirmed(config, "orders", n)
    return config


def test_failpoint_kill_between_commit_and_ack_makes_no_duplicate(
    database_url: str, queue_name: str, tmp_path: Path
) -> None:
    n = 200
    config = config_with_published(tmp_path, database_url, queue_name, n)
    first = DaemonProcess(
        config, tmp_path / "first.log", env={"JOBWIRE_FAILPOINT": "intake.after_commit"}
    )
    assert first.wait(60) == -9  # killed itself right after the first commit
    committed = asyncio.run(job_count(database_url))
    assert committed > 0  # the batch was committed, but never acked
    second = DaemonProcess(config, tmp_path / "second.log")
    try:
        second.wait_ready()

        async def settled() -> bool:
            ready, _ = await _counts_via_new_connection(queue_name)
            return ready == 0 and await job_count(database_url) >= n

        asyncio.run(wait_for(settled, timeout=60, what="all messages stored"))
        assert second.terminate() == 0
    finally:
        second.stop_quietly()
    assert asyncio.run(job_count(database_url)) == n
    ready, consumers = asyncio.run(_counts_via_new_connection(queue_name))
    assert (ready, consumers) == (0, 0)


async def _counts_via_new_connection(queue: str) -> tuple[int, int]:
    connection = await aio_pika.connect(AMQP_URL)
    try:
        return await queue_counts(connection, queue)
    finally:
        await connection.close()


@pytest.mark.slow
async def test_consumer_comes_back_after_a_broker_restart(
    database_url: str, queue_name: str, amqp: aio_pika.abc.AbstractConnection
) -> None:
    async def rabbitmqctl(*args: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            "rabbitmqctl",
            *args,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        assert await asyncio.wait_for(proc.wait(), 120) == 0

    config = amqp_config(database_url, queue_name)
    async with running_daemon(config) as daemon:
        await publish(amqp, queue_name, [b"{}"] * 5)
        await wait_for(lambda: jobs_at_least(database_url, 5), what="first 5 jobs")
        await rabbitmqctl("stop_app")
        try:

            async def down() -> bool:
                return daemon.sources[0].adapter.state.value in ("down", "connecting")

            await wait_for(down, timeout=30, what="source noticed the broker stop")
            # The workers go on from the database while the broker is away.
            async with Client(database_url) as client:
                job_id = await client.enqueue("echo", "while the broker is down")

                async def ran() -> bool:
                    job = await client.get(job_id)
                    return job is not None and job.status == "succeeded"

                await wait_for(ran, what="job run with the broker down")
        finally:
            await rabbitmqctl("start_app")
        await assert_consuming_again(database_url, queue_name, expected_jobs=11)
    assert await job_count(database_url) == 11


async def test_stats_show_each_instance_and_its_source_state(
    database_url: str, queue_name: str, tmp_path: Path
) -> None:
    config = Config.model_validate(
        {
            **amqp_config(database_url, queue_name).model_dump(by_alias=True),
            "workers": {"lease": "3s", "poll_interval": "200ms"},  # heartbeat every second
        }
    )
    async with running_daemon(config) as daemon:
        assert daemon.pool is not None
        worker_id = daemon.pool.worker_id

        def shown() -> bool:
            out = jobwire("stats", "--json", "--database-url", database_url).stdout
            (instance,) = json.loads(out)["instances"]
            sources = instance["state"].get("sources", {})
            return instance["id"] == worker_id and sources.get("orders", {}).get("state") == "up"

        await wait_for(lambda: asyncio.to_thread(shown), what="source state in stats")
        text = (await asyncio.to_thread(jobwire, "stats", "--database-url", database_url)).stdout
        assert worker_id in text and "orders=up" in text


async def test_a_flood_waits_in_the_broker_when_the_backlog_is_high(
    database_url: str, queue_name: str, amqp: aio_pika.abc.AbstractConnection
) -> None:
    n, high = 400, 60
    config = Config.model_validate(
        {
            **amqp_config(
                database_url, queue_name, {"handler": "sleep"}, prefetch=20, batch_size=20
            ).model_dump(by_alias=True),
            "workers": {
                "concurrency": 4,
                "poll_interval": "200ms",
                "max_backlog": high,
                "backlog_resume": 20,
            },
        }
    )
    async with running_daemon(config) as daemon:
        await publish(amqp, queue_name, [b'{"seconds": 0.01}'] * n)
        peak_ready = peak_in_broker = 0

        async def all_done() -> bool:
            nonlocal peak_ready, peak_in_broker
            ready = await job_count(database_url, "status IN ('pending', 'retrying')")
            peak_ready = max(peak_ready, ready)
            peak_in_broker = max(peak_in_broker, (await queue_counts(amqp, queue_name))[0])
            return await job_count(database_url, "status = 'succeeded'") == n

        await wait_for(all_done, timeout=90, interval=0.05, what=f"{n} jobs done")
        holds = daemon.sources[0].intake.counters
    # The backlog never ran far past the mark: what was already prefetched and in the batch
    # being committed when it was crossed (seen: 88-92 for a mark of 60), not the flood.
    assert peak_ready <= high + 60, peak_ready
    assert peak_in_broker > 100  # the rest of the flood waited in the broker
    assert holds.stored == n


async def test_jobwire_channel_hands_deliveries_over_in_order_without_a_task_each(
    queue_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """InlineDeliveryChannel (installed with the frame reader) calls an InlineConsumer from
    its reader task, in order, past a callback that raises; other consumers keep aiormq's
    task per delivery."""
    assert install_fast_path(), "this aiormq should get jobwire's reader and channel"
    connection = await aiormq.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        assert isinstance(channel, InlineDeliveryChannel)
        plain_queue = f"{queue_name}.dlq"  # the fixture deletes this name too
        for name in (queue_name, plain_queue):
            await channel.queue_declare(name, auto_delete=True)
        inline: list[tuple[bytes, object]] = []
        plain: list[tuple[bytes, object]] = []

        def deliver(message: aiormq.abc.DeliveredMessage) -> None:
            inline.append((message.body, asyncio.current_task()))
            if message.body == b"50":
                raise RuntimeError("a failing callback")

        async def plain_consumer(message: aiormq.abc.DeliveredMessage) -> None:
            plain.append((message.body, asyncio.current_task()))

        await channel.basic_consume(queue_name, InlineConsumer(deliver), no_ack=True)
        await channel.basic_consume(plain_queue, plain_consumer, no_ack=True)
        for i in range(200):
            await channel.basic_publish(str(i).encode(), routing_key=queue_name)
        for i in range(20):
            await channel.basic_publish(str(i).encode(), routing_key=plain_queue)
        await wait_for(lambda: len(inline) >= 200 and len(plain) >= 20, timeout=20)
    finally:
        await connection.close()
    assert [body for body, _ in inline] == [str(i).encode() for i in range(200)]
    assert len({id(task) for _, task in inline}) == 1, "one task: the channel's reader"
    assert len({id(task) for _, task in plain}) == 20, "aiormq's own: a task per delivery"
    assert "Consumer callback failed" in caplog.text


def test_aiormqs_own_reader_and_channel_still_take_every_message(
    database_url: str, queue_name: str, tmp_path: Path
) -> None:
    """JOBWIRE_AMQP_FRAME_READER=aiormq, the operator's way back: pamqp decodes, aiormq's
    channel starts a task per delivery, and every message still becomes one job."""
    n = 300
    config = config_with_published(tmp_path, database_url, queue_name, n)
    daemon = DaemonProcess(
        config, tmp_path / "daemon.log", env={"JOBWIRE_AMQP_FRAME_READER": "aiormq"}
    )
    try:
        daemon.wait_ready()
        daemon.wait_event("amqp_frame_reader", reader="aiormq")

        async def all_succeeded() -> bool:
            return await job_count(database_url, "status = 'succeeded'") >= n

        asyncio.run(wait_for(all_succeeded, timeout=60, what="every job succeeded"))
        assert daemon.terminate() == 0
    finally:
        daemon.stop_quietly()
    assert asyncio.run(job_count(database_url)) == n
    assert asyncio.run(_counts_via_new_connection(queue_name)) == (0, 0)
