"""Live updates: while any dashboard is open, one task per daemon reads the store's change
marker (one cheap statement) every POLL and, when it moved, tells every open stream by
Server-Sent Events. Nothing is added to the jobs' own statements; a page reloads its live
parts at most once per POLL however busy the queues are."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable

import structlog
from aiohttp import web

from jobwire.store.base import AdminStore, StoreUnavailable

log = structlog.get_logger("jobwire.dashboard")

POLL = 1.0  # seconds between reads of the change marker while a stream is open
OUTAGE_POLL = 5.0  # seconds between reads while the store does not answer
KEEPALIVE = 15.0  # seconds between comments on an idle stream (finds closed browsers)
MAX_CLIENTS = 200  # open streams per daemon; more get a 503 (the page still works, unlive)
MAX_PER_SESSION = 5  # open streams per session: one session cannot take every slot
_CLOSE = -1


class LiveHub:
    """Polls the change marker while a stream is open; tells every stream of each change."""

    def __init__(self, store: AdminStore, poll: float = POLL) -> None:
        self.store = store
        self.poll = poll
        self.version = 0  # changes seen, one per poll that saw the marker move
        self.polled = 0  # markers read (tests wait on it)
        self._clients: dict[asyncio.Queue[int], str] = {}  # queue -> session id
        self._poller: asyncio.Task[None] | None = None

    @property
    def clients(self) -> int:
        """Open streams."""
        return len(self._clients)

    def clients_of(self, session_id: str) -> int:
        """Open streams of one session."""
        return sum(1 for s in self._clients.values() if s == session_id)

    def _publish(self) -> None:
        self.version += 1
        for queue in self._clients:
            _offer(queue, self.version)

    async def _poll(self) -> None:
        last: int | None = None
        down = False
        while True:
            try:
                marker = await self.store.change_marker()
            except StoreUnavailable as exc:
                if not down:  # once per outage, not once per poll
                    log.warning("dashboard_live_poll_failed", error=str(exc))
                down = True
                await asyncio.sleep(OUTAGE_POLL * random.uniform(0.8, 1.2))
                continue
            if down:
                log.info("dashboard_live_poll_recovered")
                down = False
                last = None  # changes may have been missed meanwhile
            self.polled += 1
            if last is not None and marker != last:
                self._publish()
            last = marker
            await asyncio.sleep(self.poll)

    def subscribe(self, session_id: str = "") -> asyncio.Queue[int]:
        """A new stream's queue (holding at most the latest version)."""
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll(), name="jobwire-dashboard-live")
        queue: asyncio.Queue[int] = asyncio.Queue(maxsize=1)
        self._clients[queue] = session_id
        return queue

    def unsubscribe(self, queue: asyncio.Queue[int]) -> None:
        """A stream ended; the last one stops the polling."""
        self._clients.pop(queue, None)
        if not self._clients and self._poller is not None:
            self._poller.cancel()
            self._poller = None

    @property
    def polling(self) -> bool:
        """True while the poll task runs (some stream is open)."""
        return self._poller is not None and not self._poller.done()

    async def close(self) -> None:
        """End every stream and stop polling (at shutdown)."""
        for queue in self._clients:
            _offer(queue, _CLOSE)
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._poller


def _offer(queue: asyncio.Queue[int], value: int) -> None:
    """Replace what the queue holds: a slow stream skips to the latest version."""
    with contextlib.suppress(asyncio.QueueEmpty):
        queue.get_nowait()
    queue.put_nowait(value)


async def stream(
    request: web.Request,
    hub: LiveHub,
    session_id: str,
    still_signed_in: Callable[[], bool],
    headers: dict[str, str],
) -> web.StreamResponse:
    """``/ui/events``: a ``change`` event after each change seen by the poll, until the
    browser leaves, the session ends or the daemon stops."""
    if hub.clients >= MAX_CLIENTS:
        raise web.HTTPServiceUnavailable(reason="too many live dashboards open")
    if hub.clients_of(session_id) >= MAX_PER_SESSION:
        raise web.HTTPTooManyRequests(reason="too many live pages open in this session")
    response = web.StreamResponse(
        headers={
            **headers,
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",  # a proxy must pass events on, not buffer them
        }
    )
    await response.prepare(request)
    queue = hub.subscribe(session_id)
    try:
        await response.write(b"retry: 3000\n\n")
        if request.headers.get("Last-Event-ID"):
            # A reconnect: what changed meanwhile was not seen.
            await response.write(f"id: {hub.version}\nevent: change\ndata: reconnect\n\n".encode())
        while still_signed_in():
            try:
                async with asyncio.timeout(KEEPALIVE):
                    version = await queue.get()
            except TimeoutError:
                await response.write(b": keepalive\n\n")
                continue
            if version == _CLOSE:
                break
            await response.write(f"id: {version}\nevent: change\ndata: {version}\n\n".encode())
    except (ConnectionResetError, asyncio.CancelledError):
        pass  # the browser left
    finally:
        hub.unsubscribe(queue)
    return response
