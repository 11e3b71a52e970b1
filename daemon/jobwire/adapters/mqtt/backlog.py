"""aiomqtt's incoming queue with its QoS 0 messages held to a budget of bytes.

QoS 1 deliveries wait in the queue only up to the Receive Maximum window: the broker sends
no more until we acknowledge. QoS 0 deliveries have no window: while the source is held
(the store is out, the backlog is high) or slower than its publishers, the broker sends
them on and aiomqtt queued them without bound (a drill: 400 messages of 1 MB raised the
daemon to 479 MB). A publisher choosing QoS 0 accepts that a message may be lost; the broker
drops such messages too when a client falls behind. So past the budget a QoS 0 delivery is
discarded, counted and logged, and a QoS 1 delivery never is: it is bounded already, and
an unacknowledged one discarded would hold a slot of the window until the next reconnect.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiomqtt

# Beside the payload, what one queued delivery holds (its Message, topic and properties).
OVERHEAD_BYTES = 1024
# At most one log line per source this often while discarding goes on.
LOG_EVERY_S = 10.0


def cost(message: aiomqtt.Message) -> int:
    """The bytes a queued delivery is charged: its payload and a fixed overhead."""
    payload = message.payload
    size = len(payload) if isinstance(payload, bytes | bytearray | str) else 16
    return size + OVERHEAD_BYTES


class Discards:
    """QoS 0 deliveries discarded past the budget: counted, and logged at most every
    ``LOG_EVERY_S`` with how many since the last line."""

    def __init__(self, log: Any, budget: int) -> None:
        self.count = 0
        self._log = log
        self._budget = budget
        self._unlogged = 0
        self._logged_at = float("-inf")

    def add(self, message: aiomqtt.Message) -> None:
        """Count one discarded delivery; log if the last line is old enough."""
        self.count += 1
        self._unlogged += 1
        now = time.monotonic()
        if now - self._logged_at >= LOG_EVERY_S:
            self._log.warning(
                "mqtt_qos0_discarded",
                count=self._unlogged,
                total=self.count,
                topic=str(message.topic),
                budget_bytes=self._budget,
            )
            self._unlogged = 0
            self._logged_at = now


class BoundedQueue(asyncio.Queue[aiomqtt.Message]):
    """A FIFO queue whose QoS 0 messages together cost at most ``budget`` bytes."""

    def __init__(self, maxsize: int = 0, *, budget: int, discards: Discards) -> None:
        super().__init__(maxsize)
        self._budget = budget
        self._discards = discards
        self.qos0_bytes = 0  # what the QoS 0 messages queued now cost

    def put_nowait(self, item: aiomqtt.Message) -> None:
        """Queue ``item``, or discard it if it is QoS 0 and over the budget (one QoS 0
        message is always taken, however large: the intake stores what it cannot run as a
        failed job)."""
        if item.qos == 0 and self.qos0_bytes and self.qos0_bytes + cost(item) > self._budget:
            self._discards.add(item)
            return
        super().put_nowait(item)

    # asyncio.Queue's own hooks for subclasses (as LifoQueue and PriorityQueue use them):
    # every put and get passes here, the waiting ones too.
    def _put(self, item: aiomqtt.Message) -> None:
        if item.qos == 0:
            self.qos0_bytes += cost(item)
        super()._put(item)

    def _get(self) -> aiomqtt.Message:
        item: aiomqtt.Message = super()._get()
        if item.qos == 0:
            self.qos0_bytes -= cost(item)
        return item
