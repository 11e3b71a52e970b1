"""What runs on stomp.py's receiver thread, and the protocol headers kept out of jobs.

stomp.py calls its listener on its own thread: ``Bridge`` only hands each event to the
event loop and returns, so every decision is taken on the loop (see ``adapter``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import stomp
from stomp.utils import Frame

# Protocol bookkeeping, not message headers: kept out of the job's headers.
FRAME_HEADERS = {
    "ack",
    "message-id",
    "subscription",
    "destination",
    "content-length",
    "redelivered",
    "content-type",
}
# Not copied onto a dead-lettered copy: protocol bookkeeping, an expiry that would drop it
# from the dead-letter queue, and RabbitMQ's queue-declaring SEND headers (a mismatch with
# the dead-letter queue's arguments would have the broker refuse every copy).
NOT_FORWARDED = FRAME_HEADERS | {
    "receipt",
    "transaction",
    "expiration",
    "durable",
    "auto-delete",
    "exclusive",
    "x-queue-name",
    "x-queue-type",
    "x-queue-mode",
    "x-queue-master-locator",
    "x-queue-version",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-message-ttl",
    "x-overflow",
    "x-single-active-consumer",
}


class Bridge(stomp.ConnectionListener):  # type: ignore[misc]
    """Runs on stomp.py's receiver thread: forward to the loop, return immediately.

    MESSAGE frames wait in a queue for the loop, which takes every frame queued by then in
    one callback: under load one wake-up of the loop per burst, not one per frame.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_frame: Callable[[Frame], None],
        on_lost: Callable[[str], None],
        on_error: Callable[[Frame], None],
        on_receipt: Callable[[Frame], None],
    ) -> None:
        self._loop = loop
        self._on_frame = on_frame
        self._on_lost = on_lost
        self._on_error = on_error
        self._on_receipt = on_receipt
        self._frames: collections.deque[Frame] = collections.deque()
        self._flush_posted = False

    def _post(self, callback: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: we are shutting down
            self._loop.call_soon_threadsafe(callback, *args)

    def on_message(self, frame: Frame) -> None:
        """A MESSAGE frame: queued for the loop (a flush posted unless one is pending)."""
        self._frames.append(frame)
        if not self._flush_posted:
            self._flush_posted = True
            self._post(self._flush)

    def _flush(self) -> None:
        """On the loop: hand over every queued frame, in order. The flag is cleared before
        the queue is read, so a frame queued meanwhile is read now or posts a flush of its
        own: none is left waiting for the next one."""
        self._flush_posted = False
        frames = self._frames
        while frames:
            self._on_frame(frames.popleft())

    def on_error(self, frame: Frame) -> None:
        """An ERROR frame: to the loop."""
        self._post(self._on_error, frame)

    def on_receipt(self, frame: Frame) -> None:
        """A RECEIPT frame: to the loop."""
        self._post(self._on_receipt, frame)

    def on_disconnected(self) -> None:
        """The connection is gone: the session ends."""
        self._post(self._on_lost, "disconnected")

    def on_heartbeat_timeout(self) -> None:
        """Heart-beats missed: the session ends."""
        self._post(self._on_lost, "heart-beat timeout")


def quiet_disconnect(conn: stomp.Connection12) -> None:
    """Disconnect and stop the transport, ignoring whatever is already broken."""
    with contextlib.suppress(Exception):
        if conn.is_connected():
            conn.disconnect()
    with contextlib.suppress(Exception):
        conn.transport.stop()


def _escaped(value: str) -> str:
    """A STOMP 1.2 header value as it goes on the wire (as stomp.py's Protocol12 escapes)."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace(":", "\\c").replace("\r", "\\r")


def ack_frames(ack_ids: Sequence[str]) -> bytes:
    """The ACK frames of these deliveries, one after another, as stomp.py's ``ack`` writes
    each (STOMP 1.2: the ``id`` header names the delivery's ``ack`` header)."""
    return b"".join(b"ACK\nid:" + _escaped(a).encode() + b"\n\n\x00" for a in ack_ids)
