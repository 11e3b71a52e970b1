"""jobwire's STOMP connection on the loop, against a scripted server on a local socket: the
frames it reads arrive whole however the bytes are cut, a refusal and a closed socket end
it with the reason, heart-beats go out and a silent broker is noticed, and TLS checks the
server's certificate unless told not to."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from stomp.utils import Frame, parse_frame

from jobwire.adapters.base import tls_context
from jobwire.adapters.stomp.aio import AsyncStompConnection, encode
from jobwire.adapters.stomp.threaded import ThreadedStompConnection
from jobwire.config import TlsConfig
from tests.support.waiting import wait_for

CONNECTED = b"CONNECTED\nversion:1.2\nheart-beat:0,0\n\n\x00"
BEATING = b"CONNECTED\nversion:1.2\nheart-beat:100,100\n\n\x00"  # both ways, 100 ms
Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def answering(data: bytes) -> Script:
    """A server that writes ``data`` once, then says nothing."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(data)
        await writer.drain()
        await asyncio.sleep(30)

    return script


class Seen:
    """What the connection told its owner."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.errors: list[Frame] = []
        self.receipts: list[Frame] = []
        self.lost: list[str] = []

    def connection(
        self, port: int, heartbeat_ms: int = 0, tls: ssl.SSLContext | None = None
    ) -> AsyncStompConnection:
        return AsyncStompConnection(
            "localhost",
            port,
            "/",
            heartbeat_ms,
            tls,
            self.frames.append,
            self.lost.append,
            self.errors.append,
            self.receipts.append,
        )


@contextlib.asynccontextmanager
async def server(
    script: Script, tls: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[int, list[bytes]]]:
    """A one-connection server running ``script``; yields its port and what it read."""
    received: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def keep_reading() -> None:
            while data := await reader.read(65536):
                received.append(data)

        reading = asyncio.create_task(keep_reading())
        try:
            await script(reader, writer)
        finally:
            reading.cancel()
            writer.close()

    srv = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=tls)
    try:
        yield srv.sockets[0].getsockname()[1], received
    finally:
        srv.close()


async def test_messages_arrive_whole_however_the_bytes_are_cut() -> None:
    message = (
        b"MESSAGE\nsubscription:s\nmessage-id:m1\nack:a\\c1\nx-nul:a\x00b\n"
        b'content-length:8\n\n{"n": 1}\x00\n'
    )
    stream = CONNECTED + message + b"RECEIPT\nreceipt-id:r1\n\n\x00"

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for i in range(0, len(stream), 7):  # seven bytes at a time
            writer.write(stream[i : i + 7])
            await writer.drain()
            await asyncio.sleep(0)
        await asyncio.sleep(30)

    seen = Seen()
    async with server(script) as (port, received):
        conn = seen.connection(port)
        await conn.connect("guest", "secret", timeout=5)
        await wait_for(lambda: seen.receipts, what="the receipt")
        await conn.ack(["a:1"])
        await wait_for(lambda: b"ACK\nid:a\\c1\n\n\x00" in b"".join(received), what="the ACK")
        await conn.close(wait=0.1)  # the scripted server sends no receipt
    assert [(f.cmd, f.headers, f.body) for f in seen.frames] == [
        (
            "MESSAGE",
            {
                "subscription": "s",
                "message-id": "m1",
                "ack": "a:1",
                "x-nul": "a\x00b",
                "content-length": "8",
            },
            b'{"n": 1}',
        )
    ]
    connect = b"".join(received).split(b"\x00")[0]
    assert connect.startswith(b"STOMP\n")
    assert b"login:guest\n" in connect and b"passcode:secret\n" in connect
    assert seen.lost == []  # a close of its own is not a loss


async def test_an_error_frame_at_connect_refuses_with_its_message() -> None:
    seen = Seen()
    refusal = b"ERROR\nmessage:Access refused for user 'guest'\n\n\x00"
    async with server(answering(refusal)) as (port, _):
        conn = seen.connection(port)
        with pytest.raises(ConnectionError, match="Access refused"):
            await conn.connect("guest", "wrong", timeout=5)
        await conn.close(wait=0.1)  # the scripted server sends no receipt
    assert [e.headers["message"] for e in seen.errors] == ["Access refused for user 'guest'"]


async def test_a_closed_socket_ends_the_connection_once() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(CONNECTED)
        await writer.drain()
        await asyncio.sleep(0.2)

    seen = Seen()
    async with server(script) as (port, _):
        conn = seen.connection(port)
        await conn.connect(None, None, timeout=5)
        await wait_for(lambda: seen.lost, what="the loss")
        await conn.close(wait=0.1)  # the scripted server sends no receipt
        with pytest.raises(ConnectionError):
            await conn.ack(["late"])
    assert seen.lost == ["disconnected"]


async def test_a_bad_heart_beat_header_refuses_the_connection() -> None:
    seen = Seen()
    async with server(answering(b"CONNECTED\nversion:1.2\nheart-beat:soon\n\n\x00")) as (port, _):
        conn = seen.connection(port, heartbeat_ms=100)
        with pytest.raises(ConnectionError, match="heart-beat"):
            await conn.connect(None, None, timeout=5)
        await conn.close(wait=0.1)  # the scripted server sends no receipt


async def test_heart_beats_go_out_and_a_silent_broker_is_noticed() -> None:
    """Both ways at 100 ms: the client writes EOLs while idle; the broker says nothing after
    CONNECTED, so after 1.5 intervals the connection ends as a heart-beat timeout."""

    seen = Seen()
    async with server(answering(BEATING)) as (port, received):
        conn = seen.connection(port, heartbeat_ms=100)
        await conn.connect(None, None, timeout=5)
        await wait_for(lambda: seen.lost, what="the heart-beat timeout", timeout=5)
        after_connect = b"".join(received).split(b"\x00", 1)[1]
        await conn.close(wait=0.1)  # the scripted server sends no receipt
    assert seen.lost == ["heart-beat timeout"]
    assert after_connect.count(b"\n") >= 1 and after_connect.strip(b"\n") == b""


async def test_a_talking_broker_keeps_the_connection() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(BEATING)
        while True:
            writer.write(b"\n")
            await writer.drain()
            await asyncio.sleep(0.05)

    seen = Seen()
    async with server(script) as (port, _):
        conn = seen.connection(port, heartbeat_ms=100)
        await conn.connect(None, None, timeout=5)
        await asyncio.sleep(0.6)  # four silence limits: a false timeout would show
        assert seen.lost == []
        await conn.close(wait=0.1)  # the scripted server sends no receipt


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost, and its key."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.mark.parametrize(
    ("settings", "connects"),
    [({"ca": True}, True), ({}, False), ({"verify": False}, True)],
    ids=["its CA given", "system CAs only", "verify false"],
)
async def test_tls_checks_the_certificate_unless_told_not_to(
    certificate: tuple[Path, Path], settings: dict[str, bool], connects: bool
) -> None:
    cert, key = certificate
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(cert, key)

    tls = TlsConfig(
        ca_file=cert if settings.get("ca") else None, verify=settings.get("verify", True)
    )
    seen = Seen()
    async with server(answering(CONNECTED), server_side) as (port, _):
        conn = seen.connection(port, tls=tls_context(tls))
        if connects:
            await conn.connect(None, None, timeout=5)
        else:
            with pytest.raises(ssl.SSLCertVerificationError):
                await conn.connect(None, None, timeout=5)
        await conn.close(wait=0.1)  # the scripted server sends no receipt


def _message(n: int) -> bytes:
    return f"MESSAGE\nmessage-id:m{n}\nack:a{n}\n\n{{}}\x00".encode()


def _breaking_on_m1(seen: Seen) -> Callable[[Frame], None]:
    """A frame handler with a bug on message m1; the others are seen."""

    def on_frame(frame: Frame) -> None:
        if frame.headers["message-id"] == "m1":
            raise RuntimeError("a bug on one message")
        seen.frames.append(frame)

    return on_frame


async def test_a_frame_that_breaks_its_handler_leaves_the_connection_reading() -> None:
    seen = Seen()
    async with server(answering(CONNECTED + _message(1) + _message(2))) as (port, _):
        conn = seen.connection(port)
        conn.on_frame = _breaking_on_m1(seen)
        await conn.connect(None, None, timeout=5)
        await wait_for(lambda: seen.frames, what="the message after it")
        await conn.close(wait=0.1)  # the scripted server sends no receipt
    assert [f.headers["message-id"] for f in seen.frames] == ["m2"]
    assert seen.lost == []


async def test_with_cumulative_acks_a_frame_that_breaks_its_handler_ends_the_connection() -> None:
    """The next ACK would settle that message unseen: the connection ends instead, and the
    broker gives back every unacknowledged delivery (that one too)."""

    seen = Seen()

    async def broker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(CONNECTED)
        await reader.readuntil(b"SUBSCRIBE")  # deliveries come once subscribed, as a broker's
        writer.write(_message(1) + _message(2))
        await writer.drain()
        await asyncio.sleep(30)

    async with server(broker) as (port, _):
        conn = seen.connection(port)
        conn.on_frame = _breaking_on_m1(seen)
        await conn.connect(None, None, timeout=5)
        await conn.subscribe("/queue/q", "s", "client", {})
        await wait_for(lambda: seen.lost, what="the connection ended")
    assert seen.frames == []  # nothing after it was taken on that connection either


async def test_a_close_lets_the_last_acks_reach_a_busy_broker() -> None:
    """The broker sends deliveries and reads nothing for a moment while the client ACKs and
    closes. A close at once would leave deliveries unread on the client's socket, so its
    kernel resets the connection and the broker's unread bytes (the ACK) are lost; the
    close waits for the DISCONNECT's receipt instead."""
    read: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(CONNECTED)
        # Busy: deliveries go on and the client's frames wait unread meanwhile.
        for n in range(1, 300):
            writer.write(f"MESSAGE\nmessage-id:m{n}\nack:a{n}\n\n{{}}\x00".encode())
            await writer.drain()
            await asyncio.sleep(0.002)
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                read.append(data)
                if b"receipt:jobwire-disconnect" in b"".join(read):
                    writer.write(b"RECEIPT\nreceipt-id:jobwire-disconnect\n\n\x00")
                    await writer.drain()
        writer.close()

    srv = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        seen = Seen()
        conn = seen.connection(srv.sockets[0].getsockname()[1])
        await conn.connect(None, None, timeout=5)
        await conn.ack(["a1", "a2"])
        await asyncio.wait_for(conn.close(), 5)
        await wait_for(lambda: b"DISCONNECT" in b"".join(read), what="the DISCONNECT read")
    finally:
        srv.close()
    assert b"ACK\nid:a2\n\n\x00" in b"".join(read)
    assert seen.lost == []


async def test_a_broker_that_never_answers_is_given_up_with_a_reason() -> None:
    seen = Seen()
    async with server(answering(b"")) as (port, _):
        conn = seen.connection(port)
        with pytest.raises(ConnectionError, match=r"no CONNECTED from the broker within 0\.3s"):
            await conn.connect(None, None, timeout=0.3)
        await conn.close(wait=0.1)


async def test_stomp_py_s_client_gives_up_on_a_silent_broker_too() -> None:
    """stomp.py's own wait for CONNECTED has no deadline: the threaded client sets one."""
    seen = Seen()
    async with server(answering(b"")) as (port, _):
        conn = ThreadedStompConnection(
            "nul-safe",
            "127.0.0.1",
            port,
            "/",
            0,
            None,
            seen.frames.append,
            seen.lost.append,
            seen.errors.append,
            seen.receipts.append,
        )
        with pytest.raises(ConnectionError, match="within 1s"):
            await asyncio.wait_for(conn.connect(None, None, timeout=1), 10)
        await asyncio.wait_for(conn.close(), 10)


def test_encoded_header_names_and_values_come_back_whole() -> None:
    raw = encode("SEND", {"x:colon\\name": "a:b\nc\\d", "destination": "/queue/q"}, b"hi")
    assert raw.endswith(b"\x00")
    frame = parse_frame(raw[:-1])
    assert frame is not None and frame.cmd == "SEND"
    assert frame.headers["x:colon\\name"] == "a:b\nc\\d"
    assert frame.headers["content-length"] == "2" and frame.body == b"hi"
    # CONNECT is written as it is (STOMP 1.2 escapes nothing in it).
    assert b"host:/\n" in encode("CONNECT", {"host": "/"})
