"""The HTTP port: aiohttp's server behind a cap on open connections.

Every connection holds a file descriptor, and the daemon shares its descriptors with its
database pool and broker connections: clients that open connections and never finish a
request (slow headers, idle keep-alives) must not be able to take them all. aiohttp closes
a connection with no request under way after its ``keepalive_timeout`` (``http.
idle_timeout``), counted from the connection's start too; past ``http.max_connections``,
a new connection is closed as soon as it is accepted, and the ones open are served. A
connection whose answers the client does not read is aborted after ``idle_timeout`` too.
"""

from __future__ import annotations

import asyncio
import resource

import structlog
from aiohttp import web

log = structlog.get_logger("jobwire.http")


def connection_cap(configured: int, open_files: int | None = None) -> int:
    """``http.max_connections``, or half the process's descriptor limit if that is lower."""
    if open_files is None:
        open_files, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    # HTTP clients must not take every descriptor: past the limit, a new database
    # connection fails with EMFILE (jobs stall) and nothing says why.
    if open_files == resource.RLIM_INFINITY or configured <= open_files // 2:
        return configured
    cap = max(1, open_files // 2)
    log.warning(
        "http_connections_capped", max_connections=configured, open_files=open_files, limit=cap
    )
    return cap


class _Refused(asyncio.Protocol):
    """A connection over the cap: closed at once, nothing read."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Close it, unread (a client that has sent its request already may see a reset)."""
        transport.close()


class Listener:
    """One listening socket serving ``runner``'s application, at most ``limit`` at a time."""

    def __init__(self, runner: web.AppRunner, limit: int, stall_timeout: float) -> None:
        self.runner = runner
        self.limit = limit
        self.stall_timeout = stall_timeout
        self.refused = 0  # in this spell at the cap (logged when it ends)
        self._accepting = 0
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        # Connections whose answer could not be written (the client reads nothing), since
        # when they were first seen so.
        self._stalled: dict[object, float] = {}

    def _protocol(self) -> asyncio.Protocol:
        server = self.runner.server
        assert server is not None
        # The server counts a connection from its connection_made, which the loop calls
        # on its next turn: connections accepted together in one turn are counted here.
        if len(server.connections) + self._accepting >= self.limit:
            if not self.refused:
                log.warning("http_connections_full", limit=self.limit)
            self.refused += 1
            return _Refused()
        if self.refused:
            log.info("http_connections_accepted_again", refused=self.refused)
            self.refused = 0
        self._accepting += 1
        asyncio.get_running_loop().call_soon(self._accepted)
        return server()

    def _accepted(self) -> None:
        self._accepting -= 1

    async def start(self, host: str, port: int) -> int:
        """Bind and serve; the bound port (port 0 picks a free one)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, host, port, reuse_address=True)
        self._sweeper = asyncio.create_task(self._sweep(), name="jobwire-http-stalls")
        sockets = self._server.sockets
        return int(sockets[0].getsockname()[1]) if sockets else port

    async def _sweep(self) -> None:
        """Abort connections whose answers have waited ``stall_timeout`` for the client to
        read them: aiohttp waits for such a client without end, and its idle timer does not
        run while an answer is being written (found by a drill: clients that pipelined
        requests and read nothing held every connection)."""
        every = max(0.1, min(5.0, self.stall_timeout / 4))
        while True:
            await asyncio.sleep(every)
            try:
                self.abort_stalled(asyncio.get_running_loop().time())
            except Exception:  # a bug here must not end the sweeping
                log.exception("http_stall_sweep_failed")

    def abort_stalled(self, now: float) -> None:
        """One sweep at ``now``: note the connections whose writing is paused, abort those
        paused for ``stall_timeout``."""
        server = self.runner.server
        if server is None:
            return
        stalled: dict[object, float] = {}
        for handler in server.connections:
            transport = handler.transport
            if transport is None or not handler.writing_paused:
                continue
            since = self._stalled.get(handler, now)
            if now - since >= self.stall_timeout:
                log.info("http_connection_stalled", waited_s=round(now - since, 1))
                transport.abort()
                continue
            stalled[handler] = since
        self._stalled = stalled

    def close(self) -> None:
        """Stop accepting (the runner's cleanup ends the connections open)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._server is not None:
            self._server.close()
            self._server = None
