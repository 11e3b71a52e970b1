"""STOMP 1.2 adapter (RabbitMQ's STOMP plugin, ActiveMQ).

Each session opens a connection (``link``): jobwire's own on the event loop (``aio``) by
default, or stomp.py's (``threaded``), whose receiver thread only hands each event to the
loop. Every decision is taken on the loop. Reconnecting is the shared supervisor's job: a
lost connection (including missed heart-beats) ends the session, and the supervisor opens
a fresh one.

Deliveries are settled (ACK, NACK, dead-letter copies confirmed by RECEIPT) by
``settle.Settlement``, which the adapter owns and tells of each connection.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import stomp
from stomp.utils import Frame

from jobwire.adapters.base import (
    Adapter,
    Message,
    OffsetReader,
    SourceState,
)
from jobwire.adapters.stomp import frames as stomp_frames
from jobwire.adapters.stomp.bridge import FRAME_HEADERS, quiet_disconnect
from jobwire.adapters.stomp.config import StompSource
from jobwire.adapters.stomp.link import StompConnection, new_connection
from jobwire.adapters.stomp.settle import Settlement
from jobwire.adapters.stomp.threaded import stomp_py_connection
from jobwire.config import SourceBase

DEFAULT_DEDUP = "header:amqp-message-id"
ACTIVEMQ_DEDUP = "property:message_id"


class StompAdapter(Adapter):
    """Consumes one STOMP destination with client acks (cumulative, or one per message)."""

    kind = "stomp"
    default_dedup = DEFAULT_DEDUP

    def __init__(self, cfg: StompSource) -> None:
        super().__init__(cfg.name)
        self.cfg = cfg
        # ActiveMQ's message-id is the JMS id, kept across redeliveries; RabbitMQ's names
        # the delivery, so there the publisher's amqp-message-id header is the key.
        self.default_dedup = ACTIVEMQ_DEDUP if cfg.flavor == "activemq" else DEFAULT_DEDUP
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._end_session: Callable[[str], None] | None = None
        self._subscribed = False
        self._write_lock = asyncio.Lock()
        # ACKs, NACKs and dead-letter copies, written under the same lock as SUBSCRIBE. Each
        # connection gets a generation (the base's): an ack id is only valid on its own
        # connection.
        self._settle = Settlement(cfg, self._write_lock, self.is_current, self._dropped)
        # The client this source's connections use: chosen now, so stats show it before the
        # first connection (each connection asks again; the choice is per process).
        self._frame_reader = stomp_frames.choose()

    @property
    def dead_letter_failures(self) -> int:
        """Dead-letter copies not confirmed (their originals came back)."""
        return self._settle.dead_letter_failures

    def describe(self) -> dict[str, Any]:
        """State for stats, with the client in use ("asyncio", "nul-safe" or "stomp.py")."""
        return {**super().describe(), "frame_reader": self._frame_reader}

    @property
    def subscription_id(self) -> str:
        """The SUBSCRIBE id: stable, so a durable subscription is found again."""
        return self.cfg.durable_name or f"jobwire-{self.name}"

    def _new_connection(self, on_lost: Callable[[str], None]) -> StompConnection:
        # Heart-beats both ways; a frame with a NUL in a header is read whole.
        self._frame_reader = stomp_frames.choose()
        return new_connection(
            self.cfg,
            self._frame_reader,
            self._on_frame,
            on_lost,
            self._on_error,
            self._settle.on_receipt,
        )

    async def _session(self) -> None:
        """Connect and subscribe, once resumed, and consume until the connection ends."""
        # Paused: no connection at all until resumed (see pause()).
        await self._resumed.wait()
        loop = asyncio.get_running_loop()
        lost: asyncio.Future[str] = loop.create_future()

        def on_lost(reason: str) -> None:
            if not lost.done():
                lost.set_result(reason)

        conn = self._new_connection(on_lost)
        self._end_session = on_lost
        try:
            await conn.connect(self.cfg.username, self.cfg.password, timeout=10)
            self._new_generation()
            self._settle.attach(conn, on_lost)
            self._subscribed = False
            await self._subscribe(conn)
            reason = await lost
            if reason == "paused":
                return  # not an outage: supervise() sees PAUSED; the next session waits
            raise ConnectionError(f"STOMP connection lost: {reason}")
        finally:
            self._end_session = None
            self._settle.detach(f"connection ended ({lost.result() if lost.done() else 'closed'})")
            self._subscribed = False
            await conn.close()

    def _subscribe_headers(self) -> dict[str, str]:
        cfg = self.cfg
        if cfg.flavor == "activemq":
            headers = {"activemq.prefetchSize": str(cfg.prefetch)}
            if cfg.durable_name:
                headers["activemq.subscriptionName"] = cfg.durable_name
            return headers
        headers = {"prefetch-count": str(cfg.prefetch)}
        if cfg.durable_name:
            headers.update(
                {"durable": "true", "auto-delete": "false", "x-queue-name": cfg.durable_name}
            )
        return headers

    async def _subscribe(self, conn: StompConnection) -> None:
        if self._subscribed:
            return
        async with self._write_lock:
            await conn.subscribe(
                self.cfg.destination,
                self.subscription_id,
                self.cfg.effective_ack_mode,
                self._subscribe_headers(),
            )
        self._subscribed = True
        self.set_state(SourceState.UP)

    def _on_error(self, frame: Frame) -> None:
        self._log.warning(
            "stomp_error_frame",
            message=frame.headers.get("message"),
            detail=(frame.body or b"")[:200],
        )
        if not self._settle.on_error(frame) and self._end_session is not None:
            # Any other ERROR ends what it is about: the protocol has the broker close the
            # connection after one, and RabbitMQ, cancelling a subscription whose queue was
            # deleted, keeps it open with nothing more to deliver (a drill found the source
            # "up" and idle until a restart). A new session subscribes again.
            self._end_session(f"broker ERROR: {frame.headers.get('message') or 'no message'}")

    def _on_frame(self, frame: Frame) -> None:
        headers: dict[str, str] = dict(frame.headers)
        ack_id = headers.get("ack") or headers.get("message-id", "")
        self._settle.delivered(ack_id)
        try:
            self._deliver(frame, headers, ack_id)
        except Exception:  # noqa: BLE001 - one delivery must not end the source
            # Never handed over, it stays unacknowledged and comes back on the next
            # connection; with cumulative acks it would hold the head of the line for good
            # (no later ACK could be sent), so then that connection ends now.
            self._log.exception("stomp_delivery_unreadable", bytes=len(frame.body or b""))
            if self.cfg.effective_ack_mode == "client" and self._end_session is not None:
                self._end_session("a delivery could not be read (cumulative acks)")

    def _deliver(self, frame: Frame, headers: dict[str, str], ack_id: str) -> None:
        generation = self._generation
        settle = self._settle
        body = frame.body if isinstance(frame.body, bytes) else str(frame.body or "").encode()
        content_type = headers.get("content-type")
        message = Message(
            source=self.name,
            body=body,
            headers={k: v for k, v in headers.items() if k not in FRAME_HEADERS},
            properties={
                "message_id": headers.get("message-id"),
                "destination": headers.get("destination"),
                "redelivered": headers.get("redelivered") == "true",
            },
            content_type=content_type.split(";")[0].strip() if content_type else None,
            ack=lambda: settle.write([(generation, ack_id)], "ack"),
            # Without requeue, a NACK would make RabbitMQ drop it: dead-letter it instead.
            nack=lambda requeue: (
                settle.write([(generation, ack_id)], "nack")
                if requeue
                else settle.dead_letter(generation, ack_id, headers, body)
            ),
            reject=lambda reason=None: settle.dead_letter(
                generation, ack_id, headers, body, reason
            ),
            raw=(generation, ack_id),
        )
        assert self._sink is not None
        self._sink(message)

    async def ack_many(self, messages: Sequence[Message]) -> None:
        """All ACKs of a batch in one trip to the writer thread."""
        await self._settle.write([m.raw for m in messages], "ack")

    async def requeue_many(self, messages: Sequence[Message]) -> None:
        """All NACKs of a batch in one trip to the writer thread."""
        await self._settle.write([m.raw for m in messages], "nack")

    async def _on_pause(self) -> None:
        """Disconnect until resume(): every unacknowledged delivery goes back to the broker.

        Not UNSUBSCRIBE: RabbitMQ refuses ACK and NACK for the deliveries of a cancelled
        subscription ("Subscription not found"), and those would then stay unacknowledged,
        neither stored nor redelivered, for as long as the connection lives.
        """
        self._resumed.clear()
        if self._end_session is not None:
            self._end_session("paused")

    async def _on_resume(self) -> bool:
        """Connect and subscribe again (the supervisor's session was waiting for this)."""
        self._resumed.set()
        # Never connected while paused: until the session is subscribed, a failure shows
        # as down (the base moves a paused state to connecting).
        return False

    async def publish(
        self,
        body: bytes,
        headers: dict[str, str],
        count: int = 1,
        content_type: str | None = "application/json",
        topic: str | None = None,
    ) -> int:
        """SEND persistent messages, each with a fresh amqp-message-id; the broker's receipt
        for the last one confirms them all (it processes a connection's frames in order).
        ``topic`` does not apply: a STOMP source sends to its destination."""
        if topic is not None:
            raise ValueError("a STOMP source publishes to its destination; no topic applies")
        return await asyncio.to_thread(self._publish_blocking, body, headers, count, content_type)

    def _publish_blocking(
        self, body: bytes, headers: dict[str, str], count: int, content_type: str | None
    ) -> int:
        receipt_id = f"jobwire-publish-{uuid.uuid4().hex[:8]}"
        received = threading.Event()

        class _Receipts(stomp.ConnectionListener):  # type: ignore[misc]
            def on_receipt(self, frame: Frame) -> None:
                if frame.headers.get("receipt-id") == receipt_id:
                    received.set()

        # stomp.py's client, blocking, on the caller's thread (``jobwire publish``, tests).
        cfg = self.cfg
        conn = stomp_py_connection(
            "stomp.py", cfg.host, cfg.port, cfg.vhost, int(cfg.heartbeat * 1000), cfg.tls
        )
        conn.set_listener("receipts", _Receipts())
        conn.connect(self.cfg.username, self.cfg.password, wait=True)
        try:
            for n in range(count):
                extra = {"persistent": "true", "amqp-message-id": uuid.uuid4().hex, **headers}
                if n == count - 1:
                    extra["receipt"] = receipt_id
                conn.send(self.cfg.destination, body, content_type=content_type, headers=extra)
            if not received.wait(30):
                raise TimeoutError("no receipt from the broker within 30s")
            return count
        finally:
            quiet_disconnect(conn)


def build(source: SourceBase, offset_reader: OffsetReader | None = None) -> StompAdapter:
    """The registry's factory: a ``StompAdapter`` for a ``StompSource``."""
    assert isinstance(source, StompSource)
    return StompAdapter(source)
