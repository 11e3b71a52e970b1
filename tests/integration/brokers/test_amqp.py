"""AMQP (RabbitMQ): the broker suite, and the AMQP source's own tests (dead-lettering to a
DLX, a broker restart, stats, flow control, jobwire's frame reader and channel)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aio_pika
import aiormq
import aiormq.abc
import pika
import pytest

from jobwire import Client
from jobwire.adapters.amqp import install_fast_path
from jobwire.adapters.amqp.channel import InlineConsumer, InlineDeliveryChannel
from jobwire.app import Daemon as InProcessDaemon
from jobwire.storable import octets_text
from tests.integration.brokers.base import ROUTE, BrokerSuite, Outage, messages, rabbitmqctl
from tests.support import hostile as h
from tests.support.daemon import Daemon as DaemonProcess
from tests.support.daemon import jobwire, one_source_config, publish_confirmed, write_config
from tests.support.inprocess import running_daemon
from tests.support.rows import fetch, job_count, jobs_at_least
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(120)
AMQP_URL = h.AMQP_URL


async def queue_counts(queue: str) -> tuple[int, int]:
    """(ready messages, consumers) as the broker reports them, on a connection of its own
    (a test may have had the broker close the others)."""
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        result = declared.declaration_result
        return result.message_count or 0, result.consumer_count or 0
    finally:
        await connection.close()


async def send(queue: str, outgoing: Sequence[h.Outgoing]) -> None:
    """Publish with pika (publisher confirms) from a thread."""
    await asyncio.to_thread(h.publish_amqp, queue, outgoing)


async def assert_consuming_again(database_url: str, queue: str, expected_jobs: int) -> None:
    """After a broker outage: one consumer is back on the queue and 5 new messages make jobs."""

    async def consumer_back() -> bool:
        return (await queue_counts(queue))[1] == 1

    await wait_for(consumer_back, timeout=60, what="consumer back (consumer count 1)")
    await send(queue, messages(5, start=1000))
    await wait_for(
        lambda: jobs_at_least(database_url, expected_jobs),
        what="new messages became jobs after the outage",
    )


class TestAmqp(BrokerSuite):
    """A fresh uuid-named queue per test, declared by the daemon (with its arguments)."""

    source_name = "orders"

    @pytest.fixture
    async def target(self) -> AsyncIterator[str]:
        try:
            connection = await aio_pika.connect(AMQP_URL)
        except OSError as exc:
            pytest.skip(f"no RabbitMQ at {AMQP_URL}: {exc}")
        await connection.close()
        name = f"jw-test-{uuid.uuid4().hex[:10]}"
        yield name
        connection = await aio_pika.connect(AMQP_URL)
        channel = await connection.channel()
        for queue in (name, f"{name}.dlq"):
            await channel.queue_delete(queue)
        await channel.exchange_delete(f"{name}.dlx")
        await connection.close()

    def source(self, target: str) -> dict[str, Any]:
        return {"type": "amqp", "url": AMQP_URL, "queue": target, "prefetch": 500}

    deletable = True

    async def delete_target(self, target: str) -> None:
        await asyncio.to_thread(h.delete_amqp_queue, target)

    def publish(self, target: str, outgoing: Sequence[h.Outgoing]) -> list[str | None]:
        return h.publish_amqp(target, outgoing)

    async def left_behind(self, target: str, database_url: str, published: int) -> int | None:
        ready, consumers = await queue_counts(target)
        assert consumers == 0
        return ready

    def prepare_offline(self, target: str, config: Path, tmp_path: Path) -> None:
        connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        try:
            connection.channel().queue_declare(target, durable=True)  # as the daemon does
        finally:
            connection.close()

    async def check_many(self, target: str, database_url: str, daemon: InProcessDaemon) -> None:
        assert await queue_counts(target) == (0, 1)  # all acked; our one consumer

    @contextlib.asynccontextmanager
    async def outage(self, target: str) -> AsyncIterator[Outage]:
        async def drop(adapter: Any) -> None:
            # The broker closes our connection, as on a node restart.
            await rabbitmqctl("close_all_connections", "test: broker drop")

        yield Outage(target, drop)

    async def consuming_again(self, target: str) -> None:
        async def consumer_back() -> bool:
            return (await queue_counts(target))[1] == 1

        await wait_for(consumer_back, timeout=60, what="consumer back (consumer count 1)")

    # --- AMQP's own ---------------------------------------------------------------------

    async def test_dead_letter_mode_sends_poison_to_the_broker_dlx(
        self, database_url: str, target: str
    ) -> None:
        queue_name = target
        connection = await aio_pika.connect(AMQP_URL)
        channel = await connection.channel()
        dlx = await channel.declare_exchange(f"{queue_name}.dlx", "fanout", durable=True)
        dlq = await channel.declare_queue(f"{queue_name}.dlq", durable=True)
        await dlq.bind(dlx)
        config = self.config(
            database_url,
            queue_name,
            {"handler_from": "json:$.type"},
            on_invalid="dead-letter",
            dead_letter_exchange=f"{queue_name}.dlx",
        )
        poison = [b"not JSON at all", b'{"type": "rm -rf"}']  # unreadable; not allow-listed
        trace = (("trace", "abc"),)
        try:
            async with running_daemon(config):
                await send(
                    queue_name,
                    [
                        h.Outgoing(b'{"type": "echo", "n": 1}', "good-1", trace),
                        h.Outgoing(poison[0], "poison-1", trace),
                        h.Outgoing(poison[1], "poison-2", trace),
                        h.Outgoing(b'{"type": "echo", "n": 2}', "good-2", trace),
                    ],
                )

                async def both_done() -> bool:
                    return await job_count(database_url, "status = 'succeeded'") == 2

                await wait_for(both_done, what="the two good messages run")
                copies = [await wait_for(lambda: dlq.get(no_ack=True, fail=False)) for _ in poison]
        finally:
            await connection.close()
        assert sorted(c.body for c in copies) == sorted(poison)
        assert sorted(str(c.message_id) for c in copies) == ["poison-1", "poison-2"]
        headers = [c.headers["trace"] for c in copies]  # the broker's own dead-lettering
        assert {v.decode() if isinstance(v, bytes) else v for v in headers} == {"abc"}
        rows = await fetch(database_url, "SELECT dedup_key, body FROM jobwire.jobs")
        assert sorted(r["dedup_key"] for r in rows) == ["orders:good-1", "orders:good-2"]
        assert await queue_counts(queue_name) == (0, 0)

    def test_dead_letter_without_an_exchange_is_refused(self, tmp_path: Path) -> None:
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
                assert (
                    "sources[0].dead_letter_exchange: on_invalid dead-letter needs" in proc.stderr
                )
                assert "Traceback" not in proc.stderr

    @pytest.mark.slow
    async def test_consumer_comes_back_after_a_broker_restart(
        self, database_url: str, target: str
    ) -> None:
        queue_name = target
        config = self.config(database_url, queue_name)
        async with running_daemon(config) as daemon:
            await send(queue_name, messages(5))
            await wait_for(lambda: jobs_at_least(database_url, 5), what="first 5 jobs")
            await rabbitmqctl("stop_app", timeout=120)
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
                await rabbitmqctl("start_app", timeout=120)
            await assert_consuming_again(database_url, queue_name, expected_jobs=11)
        assert await job_count(database_url) == 11

    async def test_stats_show_each_instance_and_its_source_state(
        self, database_url: str, target: str
    ) -> None:
        # A lease of 3s: a heartbeat every second.
        config = self.config(database_url, target, workers={"lease": "3s"})
        async with running_daemon(config) as daemon:
            assert daemon.pool is not None
            worker_id = daemon.pool.worker_id

            def shown() -> bool:
                out = jobwire("stats", "--json", "--database-url", database_url).stdout
                (instance,) = json.loads(out)["instances"]
                sources = instance["state"].get("sources", {})
                return (
                    instance["id"] == worker_id and sources.get("orders", {}).get("state") == "up"
                )

            await wait_for(lambda: asyncio.to_thread(shown), what="source state in stats")
            text = (
                await asyncio.to_thread(jobwire, "stats", "--database-url", database_url)
            ).stdout
            assert worker_id in text and "orders=up" in text

    async def test_a_flood_waits_in_the_broker_when_the_backlog_is_high(
        self, database_url: str, target: str
    ) -> None:
        n, high = 400, 60
        config = self.config(
            database_url,
            target,
            {"handler": "sleep"},
            workers={"concurrency": 4, "max_backlog": high, "backlog_resume": 20},
            prefetch=20,
            batch_size=20,
        )
        async with running_daemon(config) as daemon:
            peak_ready = peak_in_broker = 0

            async def all_done() -> bool:
                nonlocal peak_ready, peak_in_broker
                ready = await job_count(database_url, "status IN ('pending', 'retrying')")
                peak_ready = max(peak_ready, ready)
                peak_in_broker = max(peak_in_broker, (await queue_counts(target))[0])
                return await job_count(database_url, "status = 'succeeded'") == n

            # Watched from before the first publish: a publisher slower than the pool would
            # otherwise let the flood drain before the first look. The handler is slow enough
            # (at most 80 jobs/s at concurrency 4) that any publisher outruns it.
            watch = asyncio.create_task(
                wait_for(all_done, timeout=90, interval=0.05, what=f"{n} jobs done")
            )
            try:
                await send(
                    target,
                    [h.Outgoing(b'{"seconds": 0.05}', uuid.uuid4().hex) for _ in range(n)],
                )
            except BaseException:
                watch.cancel()
                raise
            await watch
            holds = daemon.sources[0].intake.counters
        # The backlog never ran far past the mark: what was already prefetched and in the
        # batch being committed when it was crossed (seen: 88-92 for a mark of 60).
        assert peak_ready <= high + 60, peak_ready
        assert peak_in_broker > 100, peak_in_broker  # the rest waited in the broker
        assert holds.stored == n

    async def test_properties_pamqp_cannot_decode_neither_stop_the_source_nor_collide(
        self, database_url: str, target: str
    ) -> None:
        """Short strings that are not UTF-8 (AMQP allows any octets; pamqp raises: ids,
        header names, a routing key) and a timestamp past year 9999 once ended the
        connection, and every next one at the same message: the source never got past it.
        Each is a job now, the messages after it too, and two ids that differ only in bytes
        that are not UTF-8 stay two jobs, as does the text one of them is spelled as."""
        run = uuid.uuid4().hex[:6]

        def body(name: str) -> bytes:
            return json.dumps({"type": "echo", "case": name}).encode()

        odd: list[tuple[str, dict[str, Any]]] = [
            ("id-ff", {"message_id": b"\xff\xfe-" + run.encode()}),
            ("id-fd", {"message_id": b"\xff\xfd-" + run.encode()}),
            # The text the first id is spelled as: a third id, not the first again.
            ("id-typed", {"message_id": octets_text(b"\xff\xfe-" + run.encode())}),
            ("correlation", {"message_id": f"c-{run}", "correlation_id": b"\xff"}),
            ("type-app", {"message_id": f"t-{run}", "type": b"\xfe", "app_id": b"\xfd"}),
            ("timestamp", {"message_id": f"ts-{run}", "timestamp": 2**63 - 1}),
            ("header-key", {"message_id": f"hk-{run}", "headers": {b"k\xff": "v"}}),
            (
                "nested",
                {
                    "message_id": f"n-{run}",
                    "headers": {"t": {b"\xff": [datetime.datetime.max]}, "v": b"\xff"},
                },
            ),
        ]

        def publish() -> None:
            connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
            try:
                channel = connection.channel()
                channel.confirm_delivery()
                props = pika.BasicProperties
                channel.basic_publish("", target, body("first"), props(message_id=f"a-{run}"))
                for name, fields in odd:
                    channel.basic_publish("", target, body(name), props(**fields))
                # A routing key that is not UTF-8 (RabbitMQ routes it; a fanout ignores it).
                fanout = f"{target}.dlx"  # the fixture deletes this name
                channel.exchange_declare(fanout, "fanout", auto_delete=True)
                channel.queue_bind(target, fanout)
                channel.basic_publish(
                    fanout, b"\xff\xfe", body("routing-key"), props(message_id=f"rk-{run}")
                )
                channel.basic_publish("", target, body("last"), props(message_id=f"z-{run}"))
            finally:
                connection.close()

        async with running_daemon(self.config(database_url, target, ROUTE)):
            await asyncio.to_thread(publish)
            total = len(odd) + 3

            async def all_ran() -> bool:
                return await job_count(database_url, "status = 'succeeded'") == total

            await wait_for(all_ran, what=f"{total} jobs, the odd ones among them")
        rows = await fetch(database_url, "SELECT payload, dedup_key, headers FROM jobwire.jobs")
        by_case = {json.loads(r["payload"])["case"]: r for r in rows}
        assert len(rows) == total and len(by_case) == total
        id_keys = {by_case[name]["dedup_key"] for name in ("id-ff", "id-fd", "id-typed")}
        assert len(id_keys) == 3 and all("base64:" in key for key in id_keys)
        assert json.loads(by_case["header-key"]["headers"]) == {"base64:a/8=": "v"}
        assert json.loads(by_case["nested"]["headers"])["v"] == "base64:/w=="
        assert (await queue_counts(target))[0] == 0

    async def test_jobwire_channel_hands_deliveries_over_in_order_without_a_task_each(
        self, target: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        """InlineDeliveryChannel (installed with the frame reader) calls an InlineConsumer
        from its reader task, in order, past a callback that raises; other consumers keep
        aiormq's task per delivery."""
        queue_name = target
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
        self, database_url: str, target: str, tmp_path: Path
    ) -> None:
        """JOBWIRE_AMQP_FRAME_READER=aiormq, the operator's way back: pamqp decodes,
        aiormq's channel starts a task per delivery, and every message still becomes one
        job. The messages go in through ``jobwire publish`` (the operator's way in)."""
        n = 300
        source = self.source_config(target, {"handler": "noop"})
        config = one_source_config(tmp_path, database_url, source, poll_interval="200ms")
        publish_confirmed(config, "orders", n)
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
        assert asyncio.run(queue_counts(target)) == (0, 0)
