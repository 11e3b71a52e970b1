"""The MQTT output: publishes outbox rows at QoS 1; a row is confirmed by its PUBACK."""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
from collections.abc import Sequence
from importlib.metadata import version
from typing import Any, cast

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties, VariableByteIntegers
from paho.mqtt.reasoncodes import ReasonCode

from jobwire.adapters.mqtt.client import connection_options
from jobwire.adapters.mqtt.config import MqttOutput, default_output_client_id
from jobwire.config import OutputBase
from jobwire.effects import OutboxRow, Published


def _options(name: str, cfg: MqttOutput) -> dict[str, Any]:
    options = connection_options(cfg, cfg.client_id or default_output_client_id(name))
    # No window of paho's own (0: unlimited): the relay sends one batch at a time, which
    # bounds what is in flight, and paho rescans every unacknowledged message on each
    # PUBACK while a window is set (quadratic in the batch).
    options["max_inflight_messages"] = 0
    if cfg.protocol == "5":
        options["protocol"] = aiomqtt.ProtocolVersion.V5
        options["clean_start"] = True
    else:
        options["protocol"] = aiomqtt.ProtocolVersion.V311
        options["clean_session"] = True
    return options


# What paho raises building a PUBLISH it cannot encode.
_UNPACKABLE = (struct.error, ValueError, TypeError, OverflowError)


class PublishRefused(Exception):
    """The broker answered a PUBLISH with a failure reason code (MQTT 5, >= 0x80)."""


class _PublishProperties(Properties):
    """paho's PUBLISH properties, made and packed faster, to the same bytes: paho builds
    its tables of every property anew for each object and packs by scanning them all
    (twice per name), which cost more than the rest of a publish."""

    @classmethod
    def blank(cls) -> _PublishProperties:
        """An empty set of PUBLISH properties (the tables shared with a template)."""
        properties = cls.__new__(cls)
        properties.__dict__.update(_TEMPLATE.__dict__)
        return properties

    def pack(self) -> bytes:
        """The properties as sent (those set only, in paho's order)."""
        buffer = b""
        values = self.__dict__
        for name, ident, kind, multiple in _LAYOUT:
            if name in values:
                for value in values[name] if multiple else (values[name],):
                    buffer += self.writeProperty(ident, kind, value)  # type: ignore[no-untyped-call]
        return cast(bytes, VariableByteIntegers.encode(len(buffer))) + buffer  # type: ignore[no-untyped-call]


# The fast properties read paho's private tables: used only with the paho releases they were
# checked against (tests/unit/test_mqtt_properties.py compares their bytes with paho's own);
# any other release, or JOBWIRE_MQTT_PROPERTIES=paho, keeps paho's own class.
FAST_PROPERTIES = version("paho-mqtt").startswith(("2.1.", "2.2.")) and (
    os.environ.get("JOBWIRE_MQTT_PROPERTIES") != "paho"
)
_TEMPLATE = _PublishProperties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
# (attribute, identifier, type, repeatable) of every property, in paho's packing order.
_LAYOUT = (
    tuple(
        (
            name.replace(" ", ""),
            ident,
            _TEMPLATE.properties[ident][0],
            _TEMPLATE.allowsMultiple(name.replace(" ", "")),  # type: ignore[no-untyped-call]
        )
        for name, ident in _TEMPLATE.names.items()
    )
    if FAST_PROPERTIES
    else ()
)


def publish_properties(user: list[tuple[str, str]], content_type: str | None) -> Properties:
    """PUBLISH properties with these user properties and content type (the fast class where
    it was proven, else paho's own)."""
    if not FAST_PROPERTIES:
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.UserProperty = user
        if content_type is not None:
            properties.ContentType = content_type
        return properties
    fast = _PublishProperties.blank()
    # Set past paho's checks (a list, as it keeps a repeatable property): both apply to
    # PUBLISH, and the checks cost as much as the rest of the publish.
    object.__setattr__(fast, "UserProperty", user)
    if content_type is not None:
        object.__setattr__(fast, "ContentType", content_type)
    return fast


class _Batch:
    """The PUBACKs one publish waits for: reason codes by row id, and a future done once
    every row sent has its answer."""

    def __init__(self) -> None:
        self.codes: dict[int, ReasonCode] = {}
        self.sent = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def answer(self, row_id: int, code: ReasonCode) -> None:
        """Record a row's PUBACK."""
        self.codes[row_id] = code
        self.check()

    def check(self) -> None:
        """Finish once every row sent has its answer."""
        if len(self.codes) >= self.sent and not self.done.done():
            self.done.set_result(None)


class MqttPublisher:
    """One client per output; MQTT 5 carries the message id as the user property
    ``jobwire-id`` (3.1.1 has no properties: the body is sent as it is).

    A PUBLISH goes through paho's client under aiomqtt (which runs its network loop) rather
    than aiomqtt's ``publish``: that one ignores the PUBACK's reason code, so an MQTT 5
    broker's refusal (0x87 not authorised, 0x97 quota exceeded, ...) would count as
    confirmed. Our own ``on_publish`` hook hands each PUBACK's reason code to the row; a
    batch waits on one future, not one per row."""

    def __init__(self, name: str, cfg: MqttOutput) -> None:
        self.name = name
        self.cfg = cfg
        self._client: aiomqtt.Client | None = None
        # Packet id -> the batch waiting for its PUBACK and the row it carries.
        self._acks: dict[int, tuple[_Batch, int]] = {}

    async def connect(self) -> None:
        """Connect (a clean session: the outbox, not the broker, holds what is unsent)."""
        await self.close()
        client = aiomqtt.Client(**_options(self.name, self.cfg))
        acks: dict[int, tuple[_Batch, int]] = {}
        self._acks = acks

        def on_publish(
            c: paho.Client, userdata: Any, mid: int, code: ReasonCode, properties: Any
        ) -> None:
            # Unknown: the PUBACK of a batch that gave up waiting (the relay then reconnects).
            waiting = acks.pop(mid, None)
            if waiting is not None:
                waiting[0].answer(waiting[1], code)

        # Replaces aiomqtt's hook, which only serves its own publish() (not used here).
        client._client.on_publish = on_publish
        await client.__aenter__()
        self._client = client

    def _topic(self, row: OutboxRow) -> str:
        """Where a row goes (the output's topic; a subclass may say per row)."""
        return self.cfg.topic

    def _properties(self, row: OutboxRow) -> Properties | None:
        if self.cfg.protocol != "5":
            return None
        pairs = [(k, v) for k, v in row.headers.items() if k != "content-type"]
        return publish_properties(
            [*pairs, ("jobwire-id", row.message_id)], row.headers.get("content-type")
        )

    async def publish(self, rows: Sequence[OutboxRow], timeout: float) -> Published:
        """Send every row at QoS 1 and wait for each PUBACK (or the connection's loss)."""
        client = self._client
        if client is None:
            return Published(frozenset(), "not connected")
        batch = _Batch()
        error: str | None = None
        permanent: set[int] = set()
        unpackable: str | None = None  # why the rows in ``permanent`` cannot be sent
        # No PUBACK can come in before its packet id is registered: paho reads only in the
        # event loop's reader callback, and this loop does not yield.
        for row in rows:
            try:
                info = client._client.publish(
                    self._topic(row), row.body, 1, self.cfg.retain, self._properties(row)
                )
            except _UNPACKABLE as exc:
                # paho cannot build its packet (a property past MQTT's 65,535 bytes, a
                # payload past its 256 MB, a bad topic): nothing was sent, and it can never
                # be as it is. Raised out of here, it stopped the relay at this row for good.
                # (paho may keep the unsent message in its table until the connection ends:
                # one entry per such row, which is set aside and never tried again.)
                permanent.add(row.id)
                unpackable = unpackable or f"{type(exc).__name__}: {exc}"
                continue
            if info.rc != paho.MQTT_ERR_SUCCESS:
                error = f"ConnectionError: publish not sent: {paho.error_string(info.rc)}"
                break
            self._acks[info.mid] = (batch, row.id)
            batch.sent += 1
        batch.check()
        lost = client._disconnected
        await asyncio.wait({batch.done, lost}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        confirmed: set[int] = set()
        for row in rows:
            code = batch.codes.get(row.id)
            if code is not None and code.value < 0x80:
                confirmed.add(row.id)
            elif error is None and row.id not in permanent:
                if code is not None:
                    answer = PublishRefused(f"PUBACK reason code 0x{code.value:02x} ({code})")
                    error = f"{type(answer).__name__}: {answer}"
                elif lost.done():
                    error = "ConnectionError: the connection was lost before the PUBACK"
                else:
                    error = f"no PUBACK in {timeout}s"
        if not batch.done.done():
            # Given up: a late PUBACK finds no waiter (and the relay reconnects).
            for mid in [m for m, (b, _) in self._acks.items() if b is batch]:
                del self._acks[mid]
        return Published(frozenset(confirmed), error or unpackable, frozenset(permanent))

    async def close(self) -> None:
        """Disconnect, if connected."""
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.__aexit__(None, None, None), 5)


def build(name: str, output: OutputBase) -> MqttPublisher:
    """The registry's factory: an ``MqttPublisher`` for an ``MqttOutput``."""
    assert isinstance(output, MqttOutput)
    return MqttPublisher(name, output)
