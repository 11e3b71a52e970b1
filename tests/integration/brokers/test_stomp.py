"""STOMP (RabbitMQ's STOMP plugin): the broker suite, and the STOMP source's own tests
(a handler from a header, dead-lettering to a destination, jobwire's publish, notify mode,
a NUL in a header value)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aio_pika
import pytest
import stomp

from jobwire import Client, JobSpec
from jobwire.adapters.stomp import StompAdapter, StompSource
from jobwire.adapters.stomp import settle as stomp_settle
from tests.integration.brokers.base import ROUTE, BrokerSuite, Outage, messages, rabbitmqctl
from tests.support import hostile as h
from tests.support.daemon import jobwire, write_config
from tests.support.inprocess import running_daemon
from tests.support.rows import fetch, job_count, scalar
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(120)


def publisher(destination: str) -> StompAdapter:
    """jobwire's own STOMP publish (what ``jobwire publish`` uses)."""
    cfg = StompSource.model_validate(
        {"name": "pub", "type": "stomp", "destination": destination, "route": {"handler": "noop"}}
    )
    return StompAdapter(cfg)


async def queue_depth(destination: str) -> int:
    """Ready messages left in the RabbitMQ queue behind a /queue/ destination."""
    return await asyncio.to_thread(h.amqp_queue_depth, destination.removeprefix("/queue/"))


@contextlib.asynccontextmanager
async def dead_letter_queue(
    destination: str,
) -> AsyncIterator[tuple[str, aio_pika.abc.AbstractQueue]]:
    """A ``/queue/`` destination for poison and the RabbitMQ queue behind it (deleted after)."""
    name = f"{destination.removeprefix('/queue/')}.dlq"
    connection = await aio_pika.connect(h.AMQP_URL)
    try:
        channel = await connection.channel()
        # Declared as RabbitMQ's STOMP plugin declares a SEND's /queue/ (durable).
        queue = await channel.declare_queue(name, durable=True)
        yield f"/queue/{name}", queue
        await channel.queue_delete(name)
    finally:
        await connection.close()


async def _kept_as_failed(database_url: str) -> bool:
    rows = await fetch(database_url, "SELECT status FROM jobwire.jobs")
    return [r["status"] for r in rows] == ["failed"]


async def _settled(destination: str) -> bool:
    return await queue_depth(destination) == 0


def _send_with_stomp_py(destination: str, outgoing: list[tuple[bytes, dict[str, str]]]) -> None:
    """SEND through stomp.py with headers as given (no persistent/message-id of our own)."""
    conn = stomp.Connection12([("127.0.0.1", 61613)], vhost="/", auto_decode=False)
    receipts = h._Receipts()
    conn.set_listener("receipts", receipts)
    conn.connect("guest", "guest", wait=True)
    try:
        for n, (body, headers) in enumerate(outgoing):
            extra = {"persistent": "true", "receipt": f"r-{n}", **headers}
            conn.send(destination, body, content_type="application/json", headers=extra)
        wanted = {f"r-{n}" for n in range(len(outgoing))}
        with receipts.changed:
            assert receipts.changed.wait_for(lambda: wanted <= receipts.ids, timeout=30)
    finally:
        conn.disconnect()


class TestStomp(BrokerSuite):
    """A fresh uuid-named ``/queue/`` destination per test; the dedup key is the
    ``amqp-message-id`` header (the STOMP source's default)."""

    source_name = "koha"
    client = "asyncio"  # the connection the suite runs on (frame_reader in stats)
    ack_mode: str | None = None  # the default: cumulative (client-individual for notify)

    @pytest.fixture
    def target(self) -> Any:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", 61613)) != 0:
                pytest.skip("RabbitMQ's STOMP plugin is not listening on 61613 (scripts/services)")
        name = f"jw-stomp-{uuid.uuid4().hex[:10]}"
        yield f"/queue/{name}"
        h.delete_amqp_queue(name)

    def source(self, target: str) -> dict[str, Any]:
        source = {"type": "stomp", "port": 61613, "destination": target, "heartbeat": "2s"}
        return source if self.ack_mode is None else {**source, "ack_mode": self.ack_mode}

    def publish(self, target: str, outgoing: Sequence[h.Outgoing]) -> list[str | None]:
        return h.publish_stomp(target, outgoing)

    deletable = True  # RabbitMQ's STOMP: an ERROR cancels the subscription of a deleted queue

    async def delete_target(self, target: str) -> None:
        await asyncio.to_thread(h.delete_amqp_queue, target.removeprefix("/queue/"))

    async def left_behind(self, target: str, database_url: str, published: int) -> int | None:
        return await queue_depth(target)

    @contextlib.asynccontextmanager
    async def outage(self, target: str) -> AsyncIterator[Outage]:
        async def drop(adapter: Any) -> None:
            await rabbitmqctl("close_all_connections", "test: stomp drop")

        yield Outage(target, drop)

    # --- STOMP's own --------------------------------------------------------------------

    async def test_handler_from_a_header_not_allowed_fails_with_its_reason(
        self, database_url: str, target: str
    ) -> None:
        config = self.config(database_url, target, {"handler_from": "header:type"})
        async with running_daemon(config):
            await publisher(target).publish(b"{}", {"type": "not-allowed"})
            await publisher(target).publish(b"{}", {"type": "echo"})

            async def two() -> bool:
                return await job_count(database_url, "status IN ('failed', 'succeeded')") == 2

            await wait_for(two, what="two finished jobs")
        assert (
            await job_count(
                database_url, "status = 'failed' AND last_error LIKE 'handler ''not-allowed''%'"
            )
            == 1
        )

    def test_dead_letter_without_a_destination_is_refused(self, tmp_path: Path) -> None:
        """A STOMP NACK without requeue makes RabbitMQ drop the message: no destination,
        no run."""
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

    async def test_dead_letter_sends_poison_to_its_destination_and_stores_the_rest(
        self, database_url: str, target: str
    ) -> None:
        destination = target
        async with dead_letter_queue(destination) as (dead_letters, dlq):
            config = self.config(
                database_url,
                destination,
                {"handler_from": "json:$.type"},
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
            assert await queue_depth(destination) == 0  # the original was acked
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
        self, database_url: str, target: str
    ) -> None:
        """The copy is not confirmed (no such exchange): the original is not acked then, so
        it comes back; its redelivery is kept as a failed job at once, not copied again and
        again."""
        destination = target
        config = self.config(
            database_url,
            destination,
            {"handler_from": "json:$.type"},
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

    async def test_dead_letter_receipt_that_never_comes_never_loses_the_original(
        self, database_url: str, target: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The broker takes the copy but its RECEIPT is lost: after the timeout the
        connection is given up, so the original is not acked then; it comes back and is
        kept as a failed job. Copies may repeat; the original is never lost."""
        destination = target
        monkeypatch.setattr(stomp_settle.Settlement, "on_receipt", lambda self, frame: None)
        monkeypatch.setattr(stomp_settle, "DEAD_LETTER_TIMEOUT", 0.5)
        async with dead_letter_queue(destination) as (dead_letters, dlq):
            config = self.config(
                database_url,
                destination,
                {"handler_from": "json:$.type"},
                on_invalid="dead-letter",
                dead_letter_destination=dead_letters,
            )
            async with running_daemon(config) as daemon:
                adapter = daemon.sources[0].adapter
                assert isinstance(adapter, StompAdapter)
                await publisher(destination).publish(b"not json", {"amqp-message-id": "bad"})
                await wait_for(lambda: adapter.dead_letter_failures >= 1, what="unconfirmed")

                def given_up() -> bool:
                    return "dead-letter copy not confirmed" in (adapter.last_error or "")

                await wait_for(given_up, what="the connection given up")
                await wait_for(lambda: _kept_as_failed(database_url), what="kept as failed")
                await wait_for(lambda: _settled(destination), what="the original settled")
            copy = await wait_for(lambda: dlq.get(no_ack=True, fail=False), what="a copy")
        assert copy.body == b"not json"

    def test_cli_publish_through_a_stomp_source(self, target: str, tmp_path: Path) -> None:
        source = {"name": "koha", "type": "stomp", "destination": target}
        config = write_config(
            tmp_path / "jobwire.yaml", {"sources": [{**source, "route": {"handler": "noop"}}]}
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
        assert asyncio.run(queue_depth(target)) == 3

    async def test_notify_mode_rows_first_then_notifications_even_without_the_broker(
        self, database_url: str, target: str
    ) -> None:
        destination = target
        config = self.config(database_url, destination, {"mode": "notify"})
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
            await rabbitmqctl("stop_app", timeout=120)
            try:
                more = await client.enqueue_many([JobSpec("echo", {"m": i}) for i in range(20)])

                async def ran_without_broker() -> bool:
                    return await job_count(database_url, "status = 'succeeded'") == 120

                await wait_for(ran_without_broker, what="20 jobs run with the broker stopped")
            finally:
                await rabbitmqctl("start_app", timeout=120)
            assert len(more) == 20
        runs = await scalar(database_url, "SELECT count(*) FROM jobwire.job_runs")
        twice = await job_count(database_url, "attempts <> 1")
        assert (runs, twice) == (120, 0)  # each job ran exactly once

    async def test_a_delivery_that_cannot_be_handed_over_is_never_acked_unseen(
        self, database_url: str, target: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With cumulative acks the next ACK would settle a delivery the intake never got:
        the connection ends instead, and the message comes back and becomes its job. (With
        an ACK per message it just waits, unacknowledged, for the next connection.)"""
        if self.ack_mode == "client-individual":
            pytest.skip("only cumulative acks can settle a delivery unseen")
        original = StompAdapter._deliver
        refused: list[str] = []

        def flaky(adapter: StompAdapter, frame: Any, headers: dict[str, str], ack: str) -> None:
            if b'"i": 2,' in (frame.body or b"") and not refused:
                refused.append(ack)
                raise RuntimeError("this delivery cannot be read (test)")
            original(adapter, frame, headers, ack)

        monkeypatch.setattr(StompAdapter, "_deliver", flaky)
        async with running_daemon(self.config(database_url, target, ROUTE)):
            await self.send(target, messages(5))

            async def all_ran() -> bool:
                return await job_count(database_url, "status = 'succeeded'") == 5

            await wait_for(all_ran, what="all five, the refused one after it came back")
        assert refused
        assert await queue_depth(target) == 0
        rows = await fetch(database_url, "SELECT payload FROM jobwire.jobs")
        assert sorted(json.loads(r["payload"])["i"] for r in rows) == [0, 1, 2, 3, 4]

    async def test_the_source_runs_on_its_client(self, database_url: str, target: str) -> None:
        config = self.config(database_url, target, {"handler": "echo"})
        async with running_daemon(config) as daemon:
            assert daemon.sources[0].adapter.describe()["frame_reader"] == self.client
            await publisher(target).publish(b'{"n": 1}', {"amqp-message-id": "one"})

            async def done() -> bool:
                return await job_count(database_url, "status = 'succeeded'") == 1

            await wait_for(done, what="the job run")

    async def test_an_idle_connection_lives_on_its_heart_beats(
        self, database_url: str, target: str
    ) -> None:
        """Heart-beats at 1 s both ways and nothing to read for four intervals: the broker
        would close a client that sent none, and the client would give up on a broker it
        did not hear from. The connection stays the first one, and still delivers."""
        config = self.config(database_url, target, {"handler": "echo"}, heartbeat="1s")
        async with running_daemon(config) as daemon:
            adapter = daemon.sources[0].adapter
            await wait_for(lambda: adapter.state == "up", what="subscribed")
            first = adapter._generation
            await asyncio.sleep(4.0)  # the span under test: nothing may happen in it
            await publisher(target).publish(b'{"n": 1}', {"amqp-message-id": "late"})

            async def done() -> bool:
                return await job_count(database_url, "status = 'succeeded'") == 1

            await wait_for(done, what="the job run")
            assert (adapter._generation, adapter.state) == (first, "up")

    async def test_a_nul_in_a_header_value_keeps_the_message_whole(
        self, database_url: str, target: str
    ) -> None:
        """STOMP 1.2 allows a NUL in a header and RabbitMQ forwards it raw, while a NUL also
        ends a frame: the frame is read whole (by its content-length), so the body and the
        dedup key are kept and only the header the store cannot hold is replaced by a
        marker."""
        destination = target
        config = self.config(database_url, destination, {"handler": "echo"})
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


class TestStompOnStompPy(TestStomp):
    """The same suite on stomp.py's client with jobwire's frame reader, the operator's way
    back (``JOBWIRE_STOMP_FRAME_READER=nul-safe``): it must keep every promise too."""

    client = "nul-safe"

    @pytest.fixture(autouse=True)
    def stomp_py_client(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("JOBWIRE_STOMP_FRAME_READER", "nul-safe")


class TestStompAckPerMessage(TestStomp):
    """The same suite with an ACK per message (``ack_mode: client-individual``, the default
    for notify-mode routes)."""

    ack_mode = "client-individual"
