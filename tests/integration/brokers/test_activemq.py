"""ActiveMQ over STOMP (``flavor: activemq``): the broker suite, and what differs from
RabbitMQ's plugin.

A private ActiveMQ from Debian's jars (tests/support/activemq.py). ActiveMQ's STOMP differs
where it matters to jobwire: its ``message-id`` is the JMS id, the same on every redelivery
(so it is the source's default dedup key), and a NACK is a poison acknowledgement that moves
the message to ``ActiveMQ.DLQ`` at once; jobwire gives deliveries back by reconnecting instead.
The fault drills (tests/faults, ``activemq`` parameter) cut, hang and kill around it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import pytest
import stomp

from jobwire.adapters.stomp import StompAdapter, StompSource
from tests.integration.brokers.base import BrokerSuite, Outage, cut_proxy, proxied
from tests.support import hostile as h
from tests.support.activemq import ActiveMQBroker
from tests.support.inprocess import running_daemon
from tests.support.rows import fetch
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.timeout(120), pytest.mark.activemq]


@dataclass(frozen=True)
class Queue:
    """A destination on the session's ActiveMQ; ``port`` is where the daemon connects (the
    broker, or a proxy in front of it), ``broker_port`` where publishers go."""

    destination: str
    port: int
    broker_port: int


def drain(port: int, destination: str, wait: float = 2.0) -> list[bytes]:
    """Every message left on ``destination`` (auto-ack), read until none came for ``wait``."""
    got: list[bytes] = []

    class Listener(stomp.ConnectionListener):  # type: ignore[misc]
        def on_message(self, frame: Any) -> None:
            got.append(frame.body)

    conn = stomp.Connection12([("127.0.0.1", port)], auto_decode=False)
    conn.set_listener("drain", Listener())
    conn.connect("guest", "guest", wait=True)
    try:
        conn.subscribe(destination, "drain", ack="auto")
        seen, quiet_since = -1, time.monotonic()
        while time.monotonic() - quiet_since < wait:
            if len(got) != seen:
                seen, quiet_since = len(got), time.monotonic()
            time.sleep(0.05)
    finally:
        conn.disconnect()
    return got


class TestActiveMQ(BrokerSuite):
    """A fresh uuid-named ``/queue/`` per test; the dedup key is ActiveMQ's message-id."""

    source_name = "amq"
    # The suite's "same message twice" is a publisher sending one message twice: two JMS
    # messages with two message-ids, so that test names the publisher's own key.
    dedup_route = {"dedup_key": "header:amqp-message-id"}

    @pytest.fixture
    def target(self, activemq: ActiveMQBroker) -> Queue:
        return Queue(f"/queue/jw-amq-{uuid.uuid4().hex[:10]}", activemq.port, activemq.port)

    def source(self, target: Queue) -> dict[str, Any]:
        return {
            "type": "stomp",
            "flavor": "activemq",
            "port": target.port,
            "destination": target.destination,
            "heartbeat": "2s",
        }

    def publish(self, target: Queue, outgoing: Sequence[h.Outgoing]) -> list[str | None]:
        return h.publish_stomp(target.destination, outgoing, port=target.broker_port)

    @contextlib.asynccontextmanager
    async def outage(self, target: Queue) -> AsyncIterator[Outage]:
        async with proxied(target.broker_port) as proxy:
            through = replace(target, port=proxy.port)
            yield Outage(through, lambda adapter: cut_proxy(proxy, adapter), {"heartbeat": "1s"})

    # --- ActiveMQ's own -----------------------------------------------------------------

    def test_the_default_dedup_key_is_the_jms_message_id(self, activemq: ActiveMQBroker) -> None:
        cfg = StompSource.model_validate(
            {
                "name": "a",
                "type": "stomp",
                "flavor": "activemq",
                "destination": "/queue/x",
                "route": {"handler": "noop"},
            }
        )
        assert StompAdapter(cfg).default_dedup == "property:message_id"
        rabbit = cfg.model_copy(update={"flavor": "rabbitmq"})
        assert StompAdapter(rabbit).default_dedup == "header:amqp-message-id"

    async def test_a_requeue_gives_the_messages_back_and_nothing_to_the_dlq(
        self, database_url: str, target: Queue
    ) -> None:
        """What the intake does when the store is out: requeue. A NACK would have sent each
        message to ActiveMQ.DLQ (the store-cut drill lost 18 of 3,000 that way)."""
        config = self.config(database_url, target, {"handler": "noop"})
        async with running_daemon(config) as daemon:
            source = daemon.sources[0]
            received: list[Any] = []
            # Take the deliveries away from the intake and requeue them, as a store outage does.
            original = source.adapter._sink
            source.adapter._sink = received.append
            await self.send(target, [h.Outgoing(b'{"n": %d}' % i, f"r-{i}") for i in range(5)])
            await wait_for(lambda: len(received) == 5, what="five deliveries")
            first_ids = [m.properties["message_id"] for m in received]
            await source.adapter.requeue_many(received)
            source.adapter._sink = original
            await wait_for(lambda: source.adapter.state.value == "up", timeout=30, what="back up")

            async def stored() -> bool:
                rows = await fetch(database_url, "SELECT dedup_key FROM jobwire.jobs")
                return len(rows) == 5

            await wait_for(stored, timeout=30, what="the five came back and were stored")
        rows = await fetch(database_url, "SELECT dedup_key FROM jobwire.jobs")
        assert sorted(r["dedup_key"] for r in rows) == sorted(f"amq:{i}" for i in first_ids)
        leftovers = await asyncio.to_thread(drain, target.broker_port, "/queue/ActiveMQ.DLQ", 1.0)
        assert leftovers == []
