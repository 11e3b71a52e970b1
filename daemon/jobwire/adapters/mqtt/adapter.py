"""MQTT adapter on aiomqtt (paho underneath): QoS 1, PUBACK only after the job row commits.

aiomqtt 2.x acknowledges every message itself (paho sends the PUBACK as soon as its
``on_message`` returns), which would lose a message received just before a crash. paho has
a ``manual_ack`` mode that aiomqtt does not expose; this adapter switches it on, on
aiomqtt's paho client, before connecting, and sends each PUBACK itself once the intake has
committed the row. That is the one place jobwire reaches under aiomqtt's public API, kept
here and proved by a test (a daemon killed after receiving, before committing, gets the
message again on restart).

An MQTT broker redelivers an unacknowledged message only when the client reconnects, so a
batch the store could not take is kept and stored again by the intake
(``requeue_redelivers = False``), never "requeued". What the broker may send us unacked at
once is asked for with MQTT 5 Receive Maximum (``prefetch``), and the adapter stops reading
itself at that many unacknowledged deliveries; pausing is simply not reading the
client's queue, which fills that window so the broker stops sending.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, cast

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from jobwire.adapters.base import (
    Adapter,
    Message,
    OffsetReader,
    SourceState,
)
from jobwire.adapters.mqtt import backlog, lenient
from jobwire.adapters.mqtt.client import client_options
from jobwire.adapters.mqtt.config import MqttSource, default_client_id
from jobwire.adapters.mqtt.session import SessionWatch
from jobwire.config import SourceBase


class MqttAdapter(Adapter):
    """Subscribes to MQTT topics with a persistent session and acknowledges after commit."""

    kind = "mqtt"
    default_dedup = None  # packet ids are reused: a route names a user property or JSON field
    requeue_redelivers = False

    def __init__(self, cfg: MqttSource, client_id: str | None = None) -> None:
        super().__init__(cfg.name)
        self.cfg = cfg
        self.client_id = client_id or cfg.client_id or default_client_id(cfg.name)
        # A delivery records its connection's generation (the base's): a PUBACK belongs to
        # that connection only. After a reconnect the broker sends unacknowledged messages
        # again (same packet id, DUP set), and the id may later be reused for another message.
        self._client: aiomqtt.Client | None = None
        self._resumed = asyncio.Event()
        self._resumed.set()
        # Delivered to the intake and not yet acknowledged. Reading stops at ``prefetch``
        # whatever the broker does with Receive Maximum (found by the flood drill,
        # tests/faults/test_flood.py: with only Receive Maximum to bound it, the broker sent
        # more than that and the backlog overshot its mark).
        self._in_flight = 0
        self._room = asyncio.Event()
        self._room.set()
        self._discards = backlog.Discards(self._log, cfg.qos0_backlog_bytes)
        self._queue: backlog.BoundedQueue | None = None
        self._sessions = SessionWatch(self._log, self.client_id)

    def describe(self) -> dict[str, Any]:
        """The base's state; deliveries received and not yet taken, and the QoS 0 ones
        discarded past their budget."""
        queued = self._queue.qsize() if self._queue is not None else 0
        return {
            **super().describe(),
            "queued": queued,
            "discarded": self._discards.count,
            "sessions_lost": self._sessions.lost,
        }

    def _new_queue(self, maxsize: int = 0) -> backlog.BoundedQueue:
        """aiomqtt's incoming queue (its ``queue_type``), kept to read its length."""
        self._queue = backlog.BoundedQueue(
            maxsize, budget=self.cfg.qos0_backlog_bytes, discards=self._discards
        )
        return self._queue

    def _new_client(self) -> aiomqtt.Client:
        lenient.install()
        client = aiomqtt.Client(
            **client_options(self.cfg, self.client_id, persistent=True),
            queue_type=cast("type[asyncio.Queue[aiomqtt.Message]]", self._new_queue),
        )
        # The reach under aiomqtt (see the module docstring): PUBACK only when we say so.
        client._client.manual_ack_set(True)
        self._sessions.attach(client)
        return client

    def _topic_filters(self) -> list[str]:
        group = self.cfg.shared_group
        return [f"$share/{group}/{t}" if group else t for t in self.cfg.topics]

    async def _session(self) -> None:
        """Connect, subscribe, consume until the connection ends."""
        client = self._new_client()
        async with client:
            self._sessions.connected()
            connection = self._new_generation()
            # Messages of the last connection still in the intake count no more: the broker
            # sends them again on this one.
            self._in_flight = 0
            self._room.set()
            self._client = client
            try:
                for topic in self._topic_filters():
                    if self.cfg.protocol == "5":
                        # Retained messages only when the subscription is new: the session
                        # keeps ours across reconnects and restarts, and a retained message
                        # sent again on each would be a new job each time.
                        options = SubscribeOptions(qos=self.cfg.qos, retainHandling=1)
                        granted = await client.subscribe(topic, options=options)
                    else:
                        granted = await client.subscribe(topic, qos=self.cfg.qos)
                    # A refusal (not authorised, a bad filter) used to leave the source "up"
                    # with nothing to consume (found by a drill): now it is down, saying why.
                    refusal = _refusal(granted)
                    if refusal is not None:
                        raise ConnectionError(f"the broker refused {topic!r}: {refusal}")
                self.set_state(SourceState.PAUSED if self.paused else SourceState.UP)
                await self._consume(client, connection)
            except aiomqtt.MqttError as exc:
                clear = self._sessions.taken_over(exc)
                if clear is None:
                    raise
                raise clear from exc
            finally:
                self._client = None

    async def _consume(self, client: aiomqtt.Client, connection: int) -> None:
        """Hand each delivery to the intake, reading no further than the window allows."""
        assert self._sink is not None
        async for delivery in client.messages:
            self._in_flight += 1
            if self._in_flight >= self.cfg.prefetch:
                self._room.clear()
            self._sink(self._message(delivery, connection))
            # Paused, or the window is full: stop reading. Unread messages stay in the
            # client's queue, unacknowledged, and the broker stops sending.
            await self._resumed.wait()
            await self._room.wait()

    def _message(self, delivery: aiomqtt.Message, connection: int) -> Message:
        topic = str(delivery.topic)
        # The topic travels with the job, first: the store keeps a message's first headers
        # only, and a producer's 256 user properties must not push it out. A user property
        # of the same name replaces it (the producer's header wins, as for every broker).
        headers: dict[str, str] = {"mqtt-topic": topic}
        content_type = None
        properties: dict[str, Any] = {
            "topic": topic,
            "qos": delivery.qos,
            "retain": delivery.retain,
        }
        props = delivery.properties
        if props is not None:
            for key, value in getattr(props, "UserProperty", None) or []:
                headers[str(key)] = str(value)
            content_type = getattr(props, "ContentType", None)
            # MQTT 5 request/response: where a reply: true source answers (jobwire.reply;
            # an empty one too, which it refuses).
            response_topic = getattr(props, "ResponseTopic", None)
            if response_topic is not None:
                properties["response_topic"] = str(response_topic)
                properties["correlation_data"] = getattr(props, "CorrelationData", None)
        payload = delivery.payload
        body = payload if isinstance(payload, bytes) else str(payload).encode()
        return Message(
            source=self.name,
            body=body,
            headers=headers,
            properties=properties,
            content_type=content_type,
            raw=(connection, delivery.mid, delivery.qos),
        )

    async def ack_many(self, messages: Sequence[Message]) -> None:
        """PUBACK each stored message on the connection it came on."""
        client = self._client
        current = sum(1 for m in messages if self.is_current(m.raw[0]))
        self._in_flight = max(0, self._in_flight - current)
        if self._in_flight < self.cfg.prefetch:
            self._room.set()
        stale = 0
        for message in messages:
            connection, mid, qos = message.raw
            if qos == 0:
                continue
            if client is None or not self.is_current(connection):
                # Its connection is gone: the broker sends it again on the new one.
                stale += 1
                continue
            rc = client._client.ack(mid, qos)
            if rc != paho.MQTT_ERR_SUCCESS:
                self._dropped(1, paho.error_string(rc), action="puback")
        self._dropped(stale, "connection closed", action="puback")

    async def _on_pause(self) -> None:
        """Stop reading deliveries; unacknowledged, they hold the broker back."""
        self._resumed.clear()

    async def _on_resume(self) -> bool:
        """Read deliveries again."""
        self._resumed.set()
        if self._client is None:
            return False
        self.set_state(SourceState.UP)
        return True

    async def publish(
        self,
        body: bytes,
        headers: dict[str, str],
        count: int = 1,
        content_type: str | None = "application/json",
        topic: str | None = None,
    ) -> int:
        """Publish to ``topic`` (default: the first topic; no wildcards) at the source's QoS;
        returns the acked."""
        topic = topic or self.cfg.topics[0]
        if any(ch in topic for ch in "+#"):
            raise ValueError(f"cannot publish to a wildcard topic filter: {topic!r}")
        client = aiomqtt.Client(
            **client_options(self.cfg, f"{self.client_id}-publish", persistent=False)
        )
        properties = None
        if self.cfg.protocol == "5":
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            if content_type:
                properties.ContentType = content_type
            for key, value in headers.items():
                properties.UserProperty = (key, value)
        confirmed = 0
        async with client:
            for start in range(0, count, 100):
                batch = min(100, count - start)
                await asyncio.gather(
                    *(
                        client.publish(topic, body, qos=self.cfg.qos, properties=properties)
                        for _ in range(batch)
                    )
                )
                confirmed += batch
        return confirmed


def _refusal(granted: Any) -> str | None:
    """What a SUBACK refused, if anything: an MQTT 5 reason code, or 3.1.1's 0x80."""
    for code in granted or ():
        value = getattr(code, "value", code)
        if isinstance(value, int) and value >= 0x80:
            return f"{code} (0x{value:02x})" if hasattr(code, "value") else f"0x{value:02x}"
    return None


def build(source: SourceBase, offset_reader: OffsetReader | None = None) -> MqttAdapter:
    """The registry's factory: an ``MqttAdapter`` for an ``MqttSource``."""
    assert isinstance(source, MqttSource)
    return MqttAdapter(source)
