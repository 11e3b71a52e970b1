"""How the STOMP source settles deliveries: ACK and NACK frames, and dead-letter copies.

Frames go out through the source's connection (``link.StompConnection``: on the loop, or
through a worker thread for stomp.py's client). A delivery is settled only on the
connection it came on (the adapter's generation); once that connection is gone its
settlements are dropped and counted, and the broker redelivers it. In ``ack_mode: client``
(the default) one frame settles a run of deliveries (``order.DeliveryOrder``): a batch of
hundreds is acknowledged by one ACK, which spares the broker most of its work per message.

Dead-lettering is done here, not by the broker: a STOMP NACK without requeue makes RabbitMQ
drop the message. A poison message is SENT to ``dead_letter_destination`` with a receipt,
and the original is ACKed only once the RECEIPT is in. Without it (timeout, connection
lost) the connection is ended, so the original comes back: a copy may be sent twice, but a
message is never lost.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from stomp.utils import Frame

from jobwire.adapters.stomp.bridge import NOT_FORWARDED
from jobwire.adapters.stomp.config import StompSource
from jobwire.adapters.stomp.link import StompConnection
from jobwire.adapters.stomp.order import Action, DeliveryOrder

# How long a dead-lettered copy's RECEIPT may take before the connection is given up.
DEAD_LETTER_TIMEOUT = 10.0


class Dropped(Protocol):
    """The adapter's count of settlements that could not be sent (``Adapter._dropped``)."""

    def __call__(self, count: int, reason: str, **fields: Any) -> None:
        """Count ``count`` settlements not sent, and log why once for them all."""


class Settlement:
    """Settles the current connection's deliveries for a ``StompAdapter``, which owns it."""

    def __init__(
        self,
        cfg: StompSource,
        write_lock: asyncio.Lock,
        is_current: Callable[[int], bool],
        dropped: Dropped,
    ) -> None:
        self.cfg = cfg
        # Shared with the adapter's SUBSCRIBE: one frame write at a time on a connection.
        self._write_lock = write_lock
        self._is_current = is_current
        self._dropped = dropped
        # The connection deliveries are settled on, and how to end its session; None while
        # there is none (or it was given up): nothing more is written then.
        self._conn: StompConnection | None = None
        self._end_session: Callable[[str], None] | None = None
        # Dead-lettered copies waiting for their RECEIPT, by receipt id (current connection).
        self._receipts: dict[str, asyncio.Future[None]] = {}
        self.dead_letter_failures = 0  # copies not confirmed (their originals came back)
        # The current connection's deliveries in order, with cumulative acks; else None.
        self._order: DeliveryOrder | None = None

    def attach(self, conn: StompConnection, end_session: Callable[[str], None]) -> None:
        """Settle on ``conn`` from now on (a new generation's); ``end_session`` ends it."""
        self._conn = conn
        self._end_session = end_session
        self._order = DeliveryOrder() if self.cfg.effective_ack_mode == "client" else None

    def delivered(self, ack_id: str) -> None:
        """A MESSAGE came on the current connection (called in arrival order)."""
        if self._order is not None:
            self._order.delivered(ack_id)

    def detach(self, reason: str) -> None:
        """The connection is gone: nothing more is written, and no RECEIPT will come for
        what it sent."""
        self._end_session = None
        self._order = None
        receipts, self._receipts = self._receipts, {}
        for waiter in receipts.values():
            if not waiter.done():
                waiter.set_exception(ConnectionError(reason))
        self._conn = None

    def on_receipt(self, frame: Frame) -> None:
        """A RECEIPT frame (on the loop): that dead-letter copy is confirmed."""
        waiter = self._receipts.pop(frame.headers.get("receipt-id", ""), None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def on_error(self, frame: Frame) -> bool:
        """An ERROR frame (on the loop): one about a SEND names its receipt, and that
        dead-letter copy was refused. True if it was about such a copy."""
        waiter = self._receipts.pop(frame.headers.get("receipt-id", ""), None)
        if waiter is None:
            return False
        if not waiter.done():
            waiter.set_exception(
                ConnectionError(f"broker refused the copy: {frame.headers.get('message')}")
            )
        return True

    async def dead_letter(
        self,
        generation: int,
        ack_id: str,
        headers: dict[str, str],
        body: bytes,
        reason: str | None = None,
    ) -> None:
        """SEND a copy to the dead-letter destination, await its RECEIPT, then ACK the
        original. Raises if the copy is not confirmed; the original then comes back."""
        destination = self.cfg.dead_letter_destination
        if destination is None:
            # The config refuses on_invalid dead-letter without one; a NACK would drop it.
            raise RuntimeError(f"source {self.cfg.name} has no dead_letter_destination")
        conn, end_session = self._conn, self._end_session
        if conn is None or end_session is None or not self._is_current(generation):
            raise ConnectionError("the connection it came on is closed; the broker redelivers it")
        receipt = f"jobwire-dead-letter-{uuid.uuid4().hex}"
        extra = {k: v for k, v in headers.items() if k not in NOT_FORWARDED}
        extra.update(
            {
                "persistent": "true",
                "x-jobwire-reason": (reason or "invalid message (on_invalid: dead-letter)")[:500],
                "x-jobwire-source": self.cfg.name,
                "x-jobwire-original-destination": headers.get("destination", ""),
                "x-jobwire-original-message-id": headers.get("message-id", ""),
                "receipt": receipt,
            }
        )
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._receipts[receipt] = waiter
        try:
            async with self._write_lock:
                await conn.send(destination, body, headers.get("content-type"), extra)
            async with asyncio.timeout(DEAD_LETTER_TIMEOUT):
                await waiter
        except Exception as exc:
            self.dead_letter_failures += 1
            # Unconfirmed: end that connection (if it is not over already), so that the
            # original and every other unacknowledged delivery go back to the broker. No
            # frame is written on it any more, so the outcome is the same whatever the
            # intake does next: an ACK racing the disconnect is dropped, not half-applied.
            if self._is_current(generation):
                self._conn = None
            end_session(f"dead-letter copy not confirmed: {type(exc).__name__}")
            raise ConnectionError(
                f"dead-letter copy to {destination} not confirmed: {type(exc).__name__}: {exc}"
            ) from exc
        finally:
            self._receipts.pop(receipt, None)
        # The copy is safe: now the original may go. If this ACK is lost, the original comes
        # back and is copied again (a duplicate in the dead-letter queue, never a loss).
        await self.write([(generation, ack_id)], "ack")

    async def write(self, items: Sequence[tuple[int, str]], action: Action) -> None:
        """Send ACK or NACK (requeue) frames for the current connection's deliveries."""
        # Decided under the lock: with cumulative acks the frames must leave in the order
        # their runs were taken from the head of the line.
        async with self._write_lock:
            conn = self._conn
            current = [ack_id for generation, ack_id in items if self._is_current(generation)]
            # Delivered on a connection that has since died: the broker redelivers them.
            self._dropped(
                len(items) if conn is None else len(items) - len(current),
                "connection closed",
                action=action,
            )
            if conn is None or not current:
                return
            if action == "nack" and self.cfg.flavor == "activemq":
                # ActiveMQ takes a STOMP NACK as a poison acknowledgement and moves the
                # message to ActiveMQ.DLQ at once, out of jobwire's sight. Ending the
                # connection gives every unacknowledged delivery back to the queue instead,
                # marked redelivered, with its message-id (the dedup key) unchanged.
                self._give_back_all("requeue on ActiveMQ: reconnect")
                return
            try:
                await self._send(conn, current, action)
            except BaseException as exc:
                if self._order is not None:
                    # The runs were taken from the line but perhaps not all sent: a later
                    # ACK would then settle what a lost NACK gave back. End the connection;
                    # every unacknowledged delivery comes back.
                    self._give_back_all(f"settling interrupted: {type(exc).__name__}")
                if not isinstance(exc, Exception):
                    raise
                # The session notices the dead connection.
                self._dropped(len(current), f"{type(exc).__name__}: {exc}", action=action)

    async def _send(self, conn: StompConnection, ack_ids: list[str], action: Action) -> None:
        order = self._order
        if order is None:  # client-individual: a frame per delivery, in one write
            if action == "ack":
                await conn.ack(ack_ids)
            else:
                await conn.nack(ack_ids)  # RabbitMQ and ActiveMQ redeliver a NACKed one
            return
        # Runs alternate between ACK and NACK, so this is one frame in the usual case.
        for verdict, ack_id in order.settle(ack_ids, action):
            if verdict == "ack":
                await conn.ack([ack_id])
            else:
                await conn.nack([ack_id])  # RabbitMQ and ActiveMQ redeliver a NACKed one

    def _give_back_all(self, reason: str) -> None:
        """End the current connection: the broker redelivers what it had not been ACKed."""
        if self._end_session is not None:
            self._conn = None  # nothing more is written on it; its acks are dropped
            self._end_session(reason)
