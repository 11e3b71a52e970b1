"""The MQTT 5 reply publisher: a finished job's reply to the request's response topic with
its correlation data, at QoS 1 (a topic nobody subscribes to any more takes it all the same:
the broker answers "no matching subscribers", a success, and the reply is dropped there).

A row no message can carry (a response topic that is empty, has a wildcard, is too long or
too deep: the intake refuses such a request, but a row can be written by hand; or a PUBLISH
past MQTT's size bound) is never sent: paho would raise for it, or the broker disconnect,
on every try. It is set aside at once (``Published.permanent``) while the rest of its batch
goes on. The checks cover every refusal of paho 2.2's ``publish`` (a wildcard, a topic of
more than 65,535 bytes, a packet past the bound): a publish never raises for a row."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence

from paho.mqtt.properties import Properties

from jobwire.adapters.mqtt.config import MqttOutput
from jobwire.adapters.mqtt.output import MqttPublisher
from jobwire.config import OutputBase
from jobwire.effects import OutboxRow, Published
from jobwire.reply import protocol_headers, reply_to, set_aside, topic_problem

# MQTT's bound on a packet's remaining length (a PUBLISH: its topic, packet id, properties
# and payload); paho raises for more.
MAX_PACKET = 268_435_455


def _properties_bound(row: OutboxRow) -> int:
    """At least the packed size of a row's PUBLISH properties, without packing them: every
    header as a user property of 4 bytes a character (the content type and the base64
    correlation pack smaller, the address not at all), the jobwire-id, the length prefix."""
    pairs = sum(5 + 4 * (len(k) + len(v)) for k, v in row.headers.items())
    return 4 + pairs + 5 + len("jobwire-id") + len(row.message_id)


class MqttReplyPublisher(MqttPublisher):
    """Each row to the response topic its ``jobwire-reply-to`` header names (a row written
    before migration 0015: its key), with the request's correlation data (stored base64 in
    the row, sent as the binary it was). Rows set aside as unsendable are logged
    (``reply_dropped``) and counted by the relay (``parked``)."""

    async def publish(self, rows: Sequence[OutboxRow], timeout: float) -> Published:
        """Send the rows that can be sent; those that never can are set aside at once."""
        refused = {r.id: why for r in rows if (why := self.unsendable(r)) is not None}
        sendable = [r for r in rows if r.id not in refused]
        result = await super().publish(sendable, timeout) if sendable else Published(frozenset())
        return set_aside(result, refused, self.name)

    def unsendable(self, row: OutboxRow) -> str | None:
        """Why a reply row can never be published (None: it can)."""
        topic = reply_to(row)
        problem = topic_problem(topic)
        if problem is not None:
            return f"response topic {topic!r:.100} {problem}"
        assert topic is not None
        # The PUBLISH's remaining length: the topic and the packet id (2 bytes each more),
        # the properties (packed only for a reply near the bound) and the payload.
        size = 4 + len(topic.encode("utf-8")) + len(row.body)
        if size + _properties_bound(row) > MAX_PACKET:
            properties = self._properties(row)
            if properties is not None:
                size += len(properties.pack())  # type: ignore[no-untyped-call]
            if size > MAX_PACKET:
                return f"reply of {len(row.body)} bytes exceeds MQTT's packet bound"
        return None

    def _topic(self, row: OutboxRow) -> str:
        """The response topic the request named."""
        return reply_to(row) or ""

    def _properties(self, row: OutboxRow) -> Properties | None:
        headers, correlation = protocol_headers(row)
        properties = super()._properties(row._replace(headers=headers))
        if properties is not None and correlation is not None:
            try:
                properties.CorrelationData = base64.b64decode(correlation, validate=True)
            except (binascii.Error, ValueError):
                # Not written by jobwire's intake (a hand-made row): sent as its text.
                properties.CorrelationData = correlation.encode("utf-8")
        return properties


def build(name: str, output: OutputBase) -> MqttReplyPublisher:
    """The registry's factory: an ``MqttReplyPublisher`` for a source's reply output."""
    assert isinstance(output, MqttOutput)
    return MqttReplyPublisher(name, output)
