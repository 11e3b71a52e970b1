"""Hostile input (issue 18): each delivery ends as a job row, and a bad one holds up nothing.

One suite, subclassed per broker. A daemon (``jobwire run`` in a subprocess, JSON logs)
consumes one source whose route reads the handler from ``json:$.type`` and the priority from
``json:$.priority``, with ``max_body_bytes`` set (see hostile.MAX_BODY_BYTES). An
independent client publishes 100 good echo jobs, the hostile message(s), 100 more good ones.
Within the deadline every good message must be one succeeded job, every hostile one a
failed job with its reason in ``last_error`` and its raw body kept (a case whose body is a
valid job and only its metadata is odd may also succeed, see Hostile.may_succeed); the log
must show no source held, or batch thrown back, over a message; SIGTERM then exits 0.

``test_one_hostile_message`` runs each case alone (so each case has its own verdict);
``test_all_hostile_messages`` sends them all in one stream.

Priority comes from the JSON body only (a route has one priority selector). JSON is the
harder of the two: it carries ``Infinity`` and 99999999999 as numbers, a header as words.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest

from tests.support import hostile as h
from tests.support.daemon import Daemon, one_source_config
from tests.support.kafka import TansuBroker
from tests.support.mqtt import Mosquitto, clear_session
from tests.support.rows import scalar

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

SOURCE = "hostile"
ROUTE = {"handler_from": "json:$.type", "priority": "json:$.priority"}
DEADLINE = 60.0  # seconds from the first publish: "in seconds" is this assertion


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``case``: each hostile case the class's protocol can carry."""
    if "case" in metafunc.fixturenames and metafunc.cls is not None:
        cases = metafunc.cls.cases
        metafunc.parametrize("case", cases, ids=[c.name for c in cases])


class HostileSuite:
    """The tests; a subclass per broker says how to reach it and what it can carry."""

    cases: ClassVar[tuple[h.Hostile, ...]] = ()
    route_extra: ClassVar[dict[str, Any]] = {}

    @pytest.fixture
    def target(self) -> Any:  # pragma: no cover - per broker
        """Where the source consumes from (queue, topic, ...), cleaned up afterwards."""
        raise NotImplementedError

    def source(self, target: Any) -> dict[str, Any]:  # pragma: no cover - per broker
        """The broker-specific part of the source config."""
        raise NotImplementedError

    def publish(self, target: Any, messages: Sequence[h.Outgoing]) -> list[str | None]:
        """Publish with an independent client, every message confirmed; the dedup keys."""
        raise NotImplementedError  # pragma: no cover - per broker

    async def left_behind(self, target: Any, database_url: str, published: int) -> int | None:
        """After the stop: deliveries the broker still holds unsettled (None: not checked)."""
        return None

    async def test_one_hostile_message(
        self, case: h.Hostile, target: Any, database_url: str, tmp_path: Path
    ) -> None:
        await self._run([case], target, database_url, tmp_path)

    async def test_all_hostile_messages(
        self, target: Any, database_url: str, tmp_path: Path
    ) -> None:
        await self._run(list(self.cases), target, database_url, tmp_path)

    async def _run(
        self, cases: list[h.Hostile], target: Any, database_url: str, tmp_path: Path
    ) -> None:
        source = {
            "name": SOURCE,
            "max_body_bytes": h.MAX_BODY_BYTES,
            "route": {**ROUTE, **self.route_extra},
            **self.source(target),
        }
        config = one_source_config(
            tmp_path, database_url, source, poll_interval="200ms", concurrency=32
        )
        daemon = Daemon(config, tmp_path / "daemon.log")
        try:
            await asyncio.to_thread(daemon.wait_ready)
            # Consuming (queue declared, MQTT subscription made) before anything is sent.
            await asyncio.to_thread(daemon.wait_event, "source_state", state="up")
            outgoing = h.goods_around(cases)
            deadline = time.monotonic() + DEADLINE
            keys = await asyncio.to_thread(self.publish, target, outgoing)
            assert len(keys) == len(outgoing)

            while True:
                tally = h.assess(await h.job_rows(database_url), cases, keys, SOURCE)
                held = h.forbidden_events(daemon.events())
                if held:
                    pytest.fail(
                        f"the source was held or a batch thrown back over a message:\n"
                        f"{h.describe(held[:3])}\n{tally.summary()}"
                    )
                if daemon.proc.poll() is not None:
                    pytest.fail(f"daemon exited {daemon.proc.returncode}\n{tally.summary()}")
                if tally.settled:
                    break
                if time.monotonic() > deadline:
                    pytest.fail(f"not settled after {DEADLINE:.0f}s:\n{tally.summary()}")
                await asyncio.sleep(0.25)

            assert daemon.proc.poll() is None, "the daemon is still running"
            assert await asyncio.to_thread(daemon.terminate) == 0, daemon.log()[-3000:]
            tally = h.assess(await h.job_rows(database_url), cases, keys, SOURCE)
            print(f"{type(self).__name__}:\n{tally.outcomes()}")  # pytest -rP shows it
            if not tally.ok:
                pytest.fail(tally.summary())
            assert not h.forbidden_events(daemon.events())
            left = await self.left_behind(target, database_url, len(outgoing))
            assert left in (None, 0), f"{left} deliveries not settled with the broker"
        finally:
            daemon.stop_quietly()


class TestAmqpHostile(HostileSuite):
    """RabbitMQ through pika. AMQP carries every case: a field table takes NUL in names
    and values and raw bytes (type 'x'), and message_id is a short string that takes NUL.
    A lone surrogate in a header pika cannot send (it encodes text as UTF-8 and refuses);
    header-value-not-utf8 sends its CESU-8 bytes instead."""

    cases = (
        *h.BODY_CASES,
        h.HEADER_VALUE_NUL,
        h.HEADER_NAME_NUL,
        h.HEADER_VALUE_NOT_UTF8,
        h.MESSAGE_ID_NUL,
    )

    @pytest.fixture
    def target(self) -> Iterator[str]:
        queue = f"jw-hostile-{uuid.uuid4().hex[:10]}"
        yield queue
        h.delete_amqp_queue(queue)

    def source(self, target: str) -> dict[str, Any]:
        return {"type": "amqp", "url": h.AMQP_URL, "queue": target}

    def publish(self, target: str, messages: Sequence[h.Outgoing]) -> list[str | None]:
        return h.publish_amqp(target, messages)

    async def left_behind(self, target: str, database_url: str, published: int) -> int | None:
        return await asyncio.to_thread(h.amqp_queue_depth, target)


class TestStompHostile(HostileSuite):
    """RabbitMQ's STOMP plugin through stomp.py. STOMP 1.2's header grammar allows NUL, and
    RabbitMQ takes and forwards it raw; STOMP also ends a frame with NUL, which is what a
    receiver's frame parser is then up against. Not sendable: a header value that is not
    UTF-8 (stomp.py encodes headers from text) and a lone surrogate (it refuses to encode
    one). message-id-nul puts the NUL into amqp-message-id, the STOMP source's dedup key."""

    cases = (*h.BODY_CASES, h.HEADER_VALUE_NUL, h.HEADER_NAME_NUL, h.MESSAGE_ID_NUL)

    @pytest.fixture
    def target(self) -> Iterator[str]:
        queue = f"jw-hostile-{uuid.uuid4().hex[:10]}"
        yield queue
        h.delete_amqp_queue(queue)

    def source(self, target: str) -> dict[str, Any]:
        return {"type": "stomp", "port": 61613, "destination": f"/queue/{target}"}

    def publish(self, target: str, messages: Sequence[h.Outgoing]) -> list[str | None]:
        return h.publish_stomp(f"/queue/{target}", messages)

    async def left_behind(self, target: str, database_url: str, published: int) -> int | None:
        return await asyncio.to_thread(h.amqp_queue_depth, target)


class TestKafkaHostile(HostileSuite):
    """tansu through kafka-python. Keys and header values are bytes, header names text:
    a NUL goes anywhere; bytes that are not UTF-8 go in a header value (a name must be
    text, and kafka-python refuses to encode a lone surrogate). Kafka has no message id:
    the source's dedup key is topic/partition/offset, so there is no message-id case."""

    cases = (
        *h.BODY_CASES,
        h.KAFKA_BINARY_KEY,
        h.HEADER_VALUE_NUL,
        h.HEADER_NAME_NUL,
        h.HEADER_VALUE_NOT_UTF8,
    )

    @pytest.fixture
    def target(self, kafka_broker: TansuBroker, kafka_topic: str) -> tuple[str, str]:
        return kafka_broker.bootstrap, kafka_topic

    def source(self, target: tuple[str, str]) -> dict[str, Any]:
        bootstrap, topic = target
        return {
            "type": "kafka",
            "bootstrap_servers": bootstrap,
            "topics": [topic],
            "group_id": f"g-{topic}",
        }

    def publish(self, target: tuple[str, str], messages: Sequence[h.Outgoing]) -> list[str | None]:
        return h.publish_kafka(*target, messages)

    async def left_behind(
        self, target: tuple[str, str], database_url: str, published: int
    ) -> int | None:
        """Offsets not stored: the topic is fresh, so the next offsets add up to all sent."""
        stored = await scalar(
            database_url,
            "SELECT coalesce(sum(next_offset), 0) FROM jobwire.kafka_offsets WHERE group_id = $1",
            f"g-{target[1]}",
        )
        return published - int(stored)


class TestMqttHostile(HostileSuite):
    """A private Mosquitto through paho-mqtt (MQTT 5; the content type is the MQTT 5
    property). Only the body cases: user property names and values are UTF-8 strings that
    MQTT 5 (1.5.4) forbids to hold U+0000 (Mosquitto drops the publisher's connection as
    malformed, seen here) or a surrogate (paho refuses to encode it), and bytes that are
    not UTF-8 are not a string at all. MQTT has no message id: the route dedups on the
    user property msg-id, so there is no message-id case."""

    cases = h.BODY_CASES
    route_extra: ClassVar[dict[str, Any]] = {"dedup_key": "header:msg-id"}

    @pytest.fixture
    async def target(self, mosquitto: Mosquitto) -> Any:
        client_id = f"jw-hostile-{uuid.uuid4().hex[:10]}"
        yield mosquitto.port, f"jw-hostile/{uuid.uuid4().hex[:10]}", client_id
        await clear_session(mosquitto.port, client_id)

    def source(self, target: tuple[int, str, str]) -> dict[str, Any]:
        port, topic, client_id = target
        return {
            "type": "mqtt",
            "url": f"mqtt://127.0.0.1:{port}",
            "topics": [topic],
            "client_id": client_id,
            "session_expiry": "10m",
        }

    def publish(
        self, target: tuple[int, str, str], messages: Sequence[h.Outgoing]
    ) -> list[str | None]:
        return h.publish_mqtt(target[0], target[1], messages)
