"""The HTTP port under clients that hold connections: slow headers, idle sockets, a flood."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import pytest

from jobwire.app import Daemon
from jobwire.config import Config
from tests.support.inprocess import running_daemon
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(60)


def config(database_url: str, **http: object) -> Config:
    return Config.model_validate(
        {"database": {"url": database_url}, "http": {"listen": "127.0.0.1:0", **http}}
    )


@asynccontextmanager
async def connection(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """True when the server closes the connection (EOF) within ``seconds``."""
    try:
        async with asyncio.timeout(seconds):
            while await reader.read(65_536):
                pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return True


async def healthz(port: int) -> int:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
            return response.status


def port_of(daemon: Daemon) -> int:
    assert daemon.http is not None and daemon.http.port
    return daemon.http.port


async def test_a_request_whose_headers_never_finish_is_closed_after_the_idle_timeout(
    database_url: str,
) -> None:
    async with running_daemon(config(database_url, idle_timeout="1s")) as daemon:
        port = port_of(daemon)
        async with connection(port) as (slow, slow_writer), connection(port) as (idle, _):
            started = time.monotonic()
            slow_writer.write(b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\n")
            await slow_writer.drain()

            async def trickle() -> None:
                # One header line every 0.3 s: each arrives well inside the timeout.
                for n in range(100):
                    slow_writer.write(f"X-Slow-{n}: y\r\n".encode())
                    await slow_writer.drain()
                    await asyncio.sleep(0.3)

            trickling = asyncio.create_task(trickle())
            try:
                assert await closed_within(slow, 10), "slow headers kept their connection"
                assert await closed_within(idle, 10), "a silent connection was kept"
            finally:
                trickling.cancel()
            assert time.monotonic() - started < 10
            # Meanwhile and after, ordinary requests are served.
            assert await healthz(port) == 200


async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """GET /healthz on a kept-alive connection; the response's status line."""
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    async with asyncio.timeout(10):
        status = await reader.readline()
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        await reader.readexactly(length)
    return status


async def test_past_max_connections_new_ones_are_closed_and_open_ones_served(
    database_url: str,
) -> None:
    async with running_daemon(config(database_url, max_connections=3)) as daemon:
        port = port_of(daemon)
        async with connection(port) as a, connection(port) as b, connection(port) as c:
            for held in (a, b, c):  # answered: the server has counted all three
                assert (await answer(*held)).startswith(b"HTTP/1.1 200")
            for _ in range(5):
                async with connection(port) as (over, _):
                    assert await closed_within(over, 5), "a connection past the cap was served"
            # The three held connections are served all along.
            for held in (a, b, c):
                assert (await answer(*held)).startswith(b"HTTP/1.1 200")

        async def served() -> bool:
            try:
                return await healthz(port) == 200
            except aiohttp.ClientError:
                return False

        # Once they close, new connections are served again.
        await wait_for(served, timeout=10)


async def test_a_burst_of_connections_is_held_to_the_cap(database_url: str) -> None:
    async with running_daemon(config(database_url, max_connections=20)) as daemon:
        port = port_of(daemon)
        opened = await asyncio.gather(
            *(asyncio.open_connection("127.0.0.1", port) for _ in range(150))
        )
        try:

            async def served(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
                try:
                    return (await answer(reader, writer)).startswith(b"HTTP/1.1 200")
                except (ConnectionError, asyncio.IncompleteReadError):
                    return False

            answered = await asyncio.gather(*(served(r, w) for r, w in opened))
            assert 1 <= sum(answered) <= 20, sum(answered)
        finally:
            for _, writer in opened:
                writer.close()


async def test_a_client_that_reads_no_answers_is_cut_after_the_idle_timeout(
    database_url: str,
) -> None:
    # Before, aiohttp waited without end for such a client to read, and its idle timer does
    # not run while an answer is being written: with every slot held so, nothing was served.
    cfg = config(database_url, idle_timeout="1s", max_connections=2)
    async with running_daemon(cfg) as daemon:
        port = port_of(daemon)
        writers = []
        try:
            for _ in range(2):  # every slot
                raw = socket.socket()
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                raw.setblocking(False)
                await asyncio.get_running_loop().sock_connect(raw, ("127.0.0.1", port))
                _, writer = await asyncio.open_connection(sock=raw, limit=4096)
                writers.append(writer)
                # Far more answer bytes than the socket buffers hold; none of them is read.
                writer.write(b"GET /api/v1/openapi.json HTTP/1.1\r\nHost: x\r\n\r\n" * 800)
                await writer.drain()

            async def served() -> bool:
                try:
                    return await healthz(port) == 200
                except aiohttp.ClientError:
                    return False

            # Both slots are held until the silent readers are cut: then /healthz is
            # served again.
            await wait_for(served, timeout=20, what="/healthz answered again")
        finally:
            for writer in writers:
                writer.close()
