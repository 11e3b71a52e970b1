"""Requesters for the reply-to tests: an independent client that sends requests to a
jobwire source with a reply address and collects the replies (AMQP: an exclusive
auto-delete reply queue and correlation ids; MQTT 5: a response topic and correlation
data). Each runs in the test's process, separate from a daemon in a subprocess, so its
reply queue or subscription outlives a daemon that is killed."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.integration.outputs.base import Received, collecting
from tests.support import hostile as h
from tests.support.waiting import wait_for


@dataclass(frozen=True)
class Reply:
    """One reply as the requester got it."""

    message_id: str | None
    correlation: bytes | str | None
    status: str | None
    body: Any


@dataclass
class Requester:
    """Sends requests, collects replies (in arrival order)."""

    replies: list[Reply] = field(default_factory=list)
    address: str = ""
    # Barrier markers sent to the own address and not back yet (never kept as replies).
    markers: set[str] = field(default_factory=set)

    async def request(
        self, payload: Any, correlation: str, raw: bytes | None = None, reply: bool = True
    ) -> None:
        """Send one request: ``payload`` as JSON (``raw``: that body instead), with this
        requester's address unless ``reply`` is False."""
        await self.send(
            raw if raw is not None else json.dumps(payload).encode(), correlation, reply
        )

    async def send(self, body: bytes, correlation: str, reply: bool) -> None:
        """Publish one request body (per protocol)."""
        raise NotImplementedError

    async def barrier(self, timeout: float = 10.0) -> None:
        """Send a marker to this requester's own address and wait until it arrives: a
        message the broker took for that address before the marker has been delivered by
        then (a queue, and a topic of one broker, deliver in the order they took them)."""
        marker = f"barrier-{uuid.uuid4().hex}"
        self.markers.add(marker)
        await self.send_marker(marker)
        await wait_for(lambda: marker not in self.markers, timeout=timeout, what="the barrier")

    async def send_marker(self, marker: str) -> None:
        """Publish a marker to the own address, with ``marker`` as its correlation."""
        raise NotImplementedError

    def received(self, reply: Reply) -> None:
        """Keep a reply, or note a barrier's marker back."""
        if reply.correlation in self.markers:
            self.markers.discard(str(reply.correlation))
        else:
            self.replies.append(reply)


@dataclass
class AmqpRequester(Requester):
    """Publishes to ``queue`` with reply_to (its own exclusive queue) and correlation_id."""

    queue: str = ""
    channel: Any = None

    async def send(self, body: bytes, correlation: str, reply: bool) -> None:
        """Publish one request (message_id: a fresh uuid, jobwire's AMQP dedup key)."""
        await self.channel.default_exchange.publish(
            aio_pika.Message(
                body,
                content_type="application/json",
                correlation_id=correlation,
                reply_to=self.address if reply else None,
                message_id=uuid.uuid4().hex,
            ),
            routing_key=self.queue,
        )

    async def send_marker(self, marker: str) -> None:
        """Through the default exchange to the own reply queue (confirmed)."""
        await self.channel.default_exchange.publish(
            aio_pika.Message(b"null", correlation_id=marker), routing_key=self.address
        )


@contextlib.asynccontextmanager
async def amqp_requester(queue: str) -> AsyncIterator[AmqpRequester]:
    """A requester with an exclusive, auto-delete, server-named reply queue."""
    connection = await aio_pika.connect(h.AMQP_URL)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue(queue, durable=True)  # the source's, before it starts
        replies = await channel.declare_queue("", exclusive=True, auto_delete=True)
        requester = AmqpRequester(address=replies.name, queue=queue, channel=channel)

        async def on_reply(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            requester.received(
                Reply(
                    message.message_id,
                    message.correlation_id,
                    str((message.headers or {}).get("jobwire-status")),
                    json.loads(message.body),
                )
            )

        await replies.consume(on_reply, no_ack=True)
        yield requester


@dataclass
class MqttRequester(Requester):
    """Publishes to ``topic`` with a response topic and binary correlation data."""

    topic: str = ""
    client: Any = None

    async def send(self, body: bytes, correlation: str, reply: bool) -> None:
        """Publish one request at QoS 1; its correlation data is ``\\x00`` + the text (binary
        on purpose)."""
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.ContentType = "application/json"  # so a body that is not JSON is poison
        if reply:
            properties.ResponseTopic = self.address
            properties.CorrelationData = b"\x00" + correlation.encode()
        await self.client.publish(self.topic, body, qos=1, properties=properties)

    async def send_marker(self, marker: str) -> None:
        """At QoS 1 to the own response topic, the correlation data as a reply's."""
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.CorrelationData = b"\x00" + marker.encode()
        await self.client.publish(self.address, b"null", qos=1, properties=properties)


@contextlib.asynccontextmanager
async def mqtt_requester(port: int, topic: str) -> AsyncIterator[MqttRequester]:
    """A requester subscribed (QoS 1) to its own response topic."""
    address = f"jw-replies/{uuid.uuid4().hex[:8]}"
    async with aiomqtt.Client("127.0.0.1", port, protocol=aiomqtt.ProtocolVersion.V5) as client:
        await client.subscribe(address, qos=1)
        requester = MqttRequester(address=address, topic=topic, client=client)

        async def collect(_: Received) -> None:
            async for message in client.messages:
                props = message.properties
                pairs = dict(getattr(props, "UserProperty", None) or [])
                data = getattr(props, "CorrelationData", None)
                payload = message.payload
                body = payload if isinstance(payload, bytes) else str(payload).encode()
                requester.received(
                    Reply(
                        pairs.get("jobwire-id"),
                        data[1:].decode() if data else None,
                        pairs.get("jobwire-status"),
                        json.loads(body),
                    )
                )

        async with collecting(collect):
            yield requester
