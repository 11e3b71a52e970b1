"""The MQTT output: publishes outbox rows at QoS 1; a row is confirmed by its PUBACK."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from jobwire.adapters.base import tls_context
from jobwire.adapters.mqtt.config import MqttOutput
from jobwire.config import OutputBase
from jobwire.effects import OutboxRow, Published


def _options(name: str, cfg: MqttOutput) -> dict[str, Any]:
    url = urlsplit(cfg.url)
    options: dict[str, Any] = {
        "hostname": url.hostname or "127.0.0.1",
        "port": url.port or (8883 if url.scheme == "mqtts" else 1883),
        "username": cfg.username or (unquote(url.username) if url.username else None),
        "password": cfg.password or (unquote(url.password) if url.password else None),
        "identifier": cfg.client_id or f"jobwire-out-{socket.gethostname()}-{name}"[:128],
        "keepalive": int(cfg.keepalive),
        "tls_context": tls_context(cfg.tls, cfg.url.startswith("mqtts://")),
        "timeout": 10,
        # Every row of a batch in flight at once (PUBACKs come back in order).
        "max_inflight_messages": 1000,
    }
    if cfg.protocol == "5":
        options["protocol"] = aiomqtt.ProtocolVersion.V5
        options["clean_start"] = True
    else:
        options["protocol"] = aiomqtt.ProtocolVersion.V311
        options["clean_session"] = True
    return options


class PublishRefused(Exception):
    """The broker answered a PUBLISH with a failure reason code (MQTT 5, >= 0x80)."""


class MqttPublisher:
    """One client per output; MQTT 5 carries the message id as the user property
    ``jobwire-id`` (3.1.1 has no properties: the body is sent as it is).

    A PUBLISH goes through paho's client under aiomqtt (which runs its network loop) rather
    than aiomqtt's ``publish``: that one ignores the PUBACK's reason code, so an MQTT 5
    broker's refusal (0x87 not authorised, 0x97 quota exceeded, ...) would count as
    confirmed. Our own ``on_publish`` hook hands each PUBACK's reason code to the row."""

    def __init__(self, name: str, cfg: MqttOutput) -> None:
        self.name = name
        self.cfg = cfg
        self._client: aiomqtt.Client | None = None
        self._acks: dict[int, asyncio.Future[ReasonCode]] = {}
        self._early: dict[int, ReasonCode] = {}  # a PUBACK before its waiter was set up

    async def connect(self) -> None:
        """Connect (a clean session: the outbox, not the broker, holds what is unsent)."""
        await self.close()
        client = aiomqtt.Client(**_options(self.name, self.cfg))
        self._acks, self._early = {}, {}

        def on_publish(
            c: paho.Client, userdata: Any, mid: int, code: ReasonCode, properties: Any
        ) -> None:
            waiter = self._acks.pop(mid, None)
            if waiter is None:
                self._early[mid] = code
            elif not waiter.done():
                waiter.set_result(code)

        # Replaces aiomqtt's hook, which only serves its own publish() (not used here).
        client._client.on_publish = on_publish
        await client.__aenter__()
        self._client = client

    async def _publish_one(self, client: aiomqtt.Client, row: OutboxRow) -> None:
        """Send one row at QoS 1; return once the broker's PUBACK accepts it."""
        info = client._client.publish(
            self._topic(row), row.body, 1, self.cfg.retain, self._properties(row)
        )
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise ConnectionError(f"publish not sent: {paho.error_string(info.rc)}")
        code = self._early.pop(info.mid, None)
        if code is None:
            waiter = asyncio.get_running_loop().create_future()
            self._acks[info.mid] = waiter
            try:
                code = await waiter
            finally:
                self._acks.pop(info.mid, None)
        if code.value >= 0x80:
            raise PublishRefused(f"PUBACK reason code 0x{code.value:02x} ({code})")

    def _topic(self, row: OutboxRow) -> str:
        """Where a row goes (the output's topic; a subclass may say per row)."""
        return self.cfg.topic

    def _properties(self, row: OutboxRow) -> Properties | None:
        if self.cfg.protocol != "5":
            return None
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        pairs = [(k, v) for k, v in row.headers.items() if k != "content-type"]
        properties.UserProperty = [*pairs, ("jobwire-id", row.message_id)]
        if "content-type" in row.headers:
            properties.ContentType = row.headers["content-type"]
        return properties

    async def publish(self, rows: Sequence[OutboxRow], timeout: float) -> Published:
        """Send every row at QoS 1 and wait for each PUBACK."""
        client = self._client
        if client is None:
            return Published(frozenset(), "not connected")
        tasks = [asyncio.ensure_future(self._publish_one(client, row)) for row in rows]
        done, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        confirmed: set[int] = set()
        error: str | None = None
        for row, task in zip(rows, tasks, strict=True):
            if task in done and task.exception() is None:
                confirmed.add(row.id)
            elif error is None:
                exc = task.exception() if task in done else None
                error = f"{type(exc).__name__}: {exc}" if exc else f"no PUBACK in {timeout}s"
        if pending:
            await asyncio.wait(pending)
        return Published(frozenset(confirmed), error)

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
