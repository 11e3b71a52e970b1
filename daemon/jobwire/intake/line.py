"""The line of deliveries waiting for a source's intake, oldest first, with when those at
its head were first held back for a free slot (see intake/pacing.py)."""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass

from jobwire.models import Message
from jobwire.waiting import wait_until


@dataclass(slots=True)
class _Held:
    """A run of deliveries at the head of the line, held back since the same moment."""

    count: int
    since: float


class DeliveryLine:
    """A FIFO of deliveries. The first of them may have been held back: kept as runs of
    (count, since when), so that a long line costs nothing per delivery to track."""

    def __init__(self) -> None:
        # Unbounded on purpose: the broker's prefetch bounds it, and a put that never waits
        # keeps deliveries in arrival order.
        self._items: collections.deque[Message] = collections.deque()
        self._arrived = asyncio.Event()
        self._held: collections.deque[_Held] = collections.deque()
        self._held_total = 0  # the runs' counts summed

    def __len__(self) -> int:
        return len(self._items)

    def put(self, message: Message) -> None:
        """Add a delivery at the end (never blocks)."""
        self._items.append(message)
        self._arrived.set()

    async def ready(self, size: int, delay: float) -> int:
        """Wait for a delivery; then, unless the head was held back already, up to
        ``delay`` for ``size`` of them. How many a batch may take (at most ``size``)."""
        items = self._items
        while not items:
            self._arrived.clear()
            await self._arrived.wait()
        if delay > 0 and not self._held:
            await wait_until(self._arrived, lambda: len(items) >= size, delay)
        return min(size, len(items))

    def held_since(self) -> float | None:
        """When the delivery at the head was first held back; None: it was not."""
        return self._held[0].since if self._held else None

    def take(self, count: int, offered: int, now: float) -> list[Message]:
        """Take the first ``count`` of the ``offered`` deliveries; the rest of those are
        held back from ``now`` (unless they were already)."""
        items = self._items
        batch = [items.popleft() for _ in range(count)]
        left = count
        while left and self._held:
            run = self._held[0]
            used = min(left, run.count)
            run.count -= used
            left -= used
            self._held_total -= used
            if run.count == 0:
                self._held.popleft()
        newly = offered - count - self._held_total
        if newly > 0:
            self._held.append(_Held(newly, now))
            self._held_total += newly
        return batch
