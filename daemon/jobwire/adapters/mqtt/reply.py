"""The MQTT 5 reply publisher: a finished job's reply to the request's response topic with
its correlation data, at QoS 1 (a topic nobody subscribes to any more takes it all the same:
the broker answers "no matching subscribers", a success, and the reply is dropped there).

A row whose topic no message can be published to (a wildcard, empty, too long or too deep:
the intake refuses such a request, but a row can be written by hand) is never sent: paho
would raise for it, or the broker disconnect, on every try. It is set aside at once
(``Published.permanent``) while the rest of its batch goes on."""

from __future__ import annotations

import base64
import binascii
import dataclasses
from collections.abc import Sequence

from paho.mqtt.properties import Properties

from jobwire.adapters.mqtt.config import MqttOutput
from jobwire.adapters.mqtt.output import MqttPublisher
from jobwire.config import OutputBase
from jobwire.effects import OutboxRow, Published
from jobwire.reply import CORRELATION_HEADER, set_aside, topic_problem

# The largest payload paho sends (MQTT's remaining-length bound); it raises for more.
MAX_PAYLOAD = 268_435_455


def unsendable(row: OutboxRow) -> str | None:
    """Why a reply row can never be published (None: it can)."""
    problem = topic_problem(row.key)
    if problem is not None:
        return f"response topic {row.key!r:.100} {problem}"
    if len(row.body) > MAX_PAYLOAD:
        return f"reply of {len(row.body)} bytes exceeds MQTT's {MAX_PAYLOAD}"
    return None


class MqttReplyPublisher(MqttPublisher):
    """Each row to the response topic its key names, with the request's correlation data
    (stored base64 in the row, sent as the binary it was); ``dropped`` counts the rows set
    aside as unsendable."""

    def __init__(self, name: str, cfg: MqttOutput) -> None:
        super().__init__(name, cfg)
        self.dropped = 0
        # The row being handed to paho: the one to blame if paho raises.
        self._current: OutboxRow | None = None

    async def publish(self, rows: Sequence[OutboxRow], timeout: float) -> Published:
        """Send the rows that can be sent; those that never can are set aside at once."""
        refused = {r.id: why for r in rows if (why := unsendable(r)) is not None}
        sendable = [r for r in rows if r.id not in refused]
        result = Published(frozenset())
        self._current = None
        try:
            if sendable:
                result = await super().publish(sendable, timeout)
        except ValueError as exc:
            # paho refused a row the check above let through: that row is set aside and
            # no other is charged (those paho took before it go again, same message id).
            if self._current is None:
                raise
            refused[self._current.id] = f"{type(exc).__name__}: {exc}"
            result = Published(frozenset(), refused[self._current.id], blameless=True)
        self.dropped += len(refused)
        return set_aside(result, refused, self.name)

    def _topic(self, row: OutboxRow) -> str:
        """The response topic the request named."""
        self._current = row
        return row.key or ""

    def _properties(self, row: OutboxRow) -> Properties | None:
        headers = dict(row.headers)
        correlation = headers.pop(CORRELATION_HEADER, None)
        properties = super()._properties(dataclasses.replace(row, headers=headers))
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
