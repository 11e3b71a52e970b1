"""A scripted MQTT 5 broker for the answers Mosquitto gives only with plugins or never on
demand (a failure PUBACK, a refused SUBSCRIBE): it accepts every connection and answers
each packet as the test's ``answer`` says."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

CONNACK = bytes([0x20, 3, 0, 0, 0])  # no session present, success, no properties
PINGRESP = bytes([0xD0, 0])
CONNECT, PUBLISH, SUBSCRIBE, PINGREQ, DISCONNECT = 1, 3, 8, 12, 14


async def read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
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
async def scripted_broker(answer: Callable[[int, bytes], bytes | None]) -> AsyncIterator[int]:
    """A broker that CONNACKs, PINGRESPs, and sends ``answer(kind, body)`` for every other
    packet (None: nothing); yields its port."""

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                kind, body = await read_packet(reader)
                if kind == DISCONNECT:
                    break
                reply = {CONNECT: CONNACK, PINGREQ: PINGRESP}.get(kind) or answer(kind, body)
                if reply:
                    writer.write(reply)
                    await writer.drain()
        writer.close()

    server = await asyncio.start_server(session, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()
