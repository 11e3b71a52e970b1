"""The MQTT output reads the PUBACK's reason code: an MQTT 5 broker's refusal (>= 0x80) is
not a confirmation. A scripted broker answers each PUBLISH with the code the test asks for
(Mosquitto has no switch to refuse a publish on demand)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from jobwire.adapters.mqtt.config import MqttOutput
from jobwire.adapters.mqtt.output import MqttPublisher
from jobwire.effects import OutboxRow

pytestmark = pytest.mark.timeout(60)


async def _packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One MQTT control packet: (type, variable header + payload)."""
    first = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return first >> 4, await reader.readexactly(length)


@contextlib.asynccontextmanager
async def scripted_broker(codes: list[int]) -> AsyncIterator[int]:
    """An MQTT 5 broker that PUBACKs the n-th PUBLISH with ``codes[n]``; yields its port."""
    answers = iter(codes)

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                kind, body = await _packet(reader)
                if kind == 1:  # CONNECT -> CONNACK: no flags, success, no properties
                    writer.write(bytes([0x20, 3, 0, 0, 0]))
                elif kind == 3:  # PUBLISH (QoS 1): topic, packet id, properties, payload
                    topic_length = int.from_bytes(body[:2], "big")
                    mid = body[2 + topic_length : 4 + topic_length]
                    writer.write(bytes([0x40, 4]) + mid + bytes([next(answers), 0]))
                elif kind == 12:  # PINGREQ
                    writer.write(bytes([0xD0, 0]))
                elif kind == 14:  # DISCONNECT
                    break
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(session, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def test_a_failure_puback_is_not_a_confirmation() -> None:
    async with scripted_broker([0x00, 0x87, 0x97, 0x10]) as port:
        cfg = MqttOutput.model_validate(
            {"type": "mqtt", "url": f"mqtt://127.0.0.1:{port}", "topic": "t", "protocol": "5"}
        )
        publisher = MqttPublisher("out", cfg)
        await publisher.connect()
        try:
            rows = [OutboxRow(i, 7, i, None, {}, b"x") for i in (1, 2, 3, 4)]
            result = await publisher.publish(rows, 10)
        finally:
            await publisher.close()
    # 0x10 (no matching subscribers) is a success code: the broker took the message.
    assert result.confirmed == frozenset({1, 4})
    assert result.error is not None and "0x87" in result.error
