"""Pacing: while the pool is full, a batch waits a moment for a free slot instead of going
to the database as ready jobs that the pool must then claim back.

A busy pool frees a slot within milliseconds, so a stream faster than the pool goes to it
directly (one insert and one completion per job, no claim). No delivery waits longer than
``workers.hand_off_wait`` for it: a pool held by long jobs makes the wait run out, and the
intake then stores at once, as ready jobs, until the pool has room again. Deliveries that
wait stay unacknowledged: the broker keeps them, a log's offset waits. The pool says when
not to wait at all (see ``WorkerPool.room``): another instance shares the database, the
queue is paused or has a rate, the pool is stopping.
"""

from __future__ import annotations

import asyncio

from jobwire.config import RouteConfig
from jobwire.intake.ports import Handoff


class Pacer:
    """Decides how much of a batch to store now: what the pool starts at once, or all."""

    def __init__(self, pool: Handoff, route: RouteConfig, may_wait: bool = True) -> None:
        self._pool = pool
        self._queue = route.queue
        self._handler = route.handler
        # Jobs that never start straight from the intake gain nothing from waiting, and a
        # caller waiting on the answer (HTTP) must not wait for a slot.
        self._eligible = (
            may_wait
            and route.mode != "notify"
            and route.delay <= 0
            and route.concurrency_key in (None, "none")
        )
        self._gave_up = False
        self.off = False  # set while draining: store everything at once

    def _applies(self) -> bool:
        limited = self._pool.limited_handlers
        if self._handler is None:
            # handler_from: a message may name a handler with a rate, which only the claim
            # starts; waiting for slots it cannot use would only slow the source.
            return not limited
        return self._handler not in limited

    async def take(self, size: int, held_since: float | None = None) -> int:
        """How many of the batch's first ``size`` messages to store now (at least one); the
        rest wait for the next batch. ``held_since``: when its oldest message was first
        held back (loop time); none waits past ``hand_off_wait`` from then."""
        if not self._eligible or self.off or not self._applies():
            return size
        now = asyncio.get_running_loop().time()
        limit = self._pool.hand_off_wait
        if held_since is not None:
            limit -= now - held_since
            if limit <= 0:
                return size
        room = self._pool.room(self._queue)
        if room == 0:
            if self._gave_up:
                return size
            room = await self._pool.wait_room(self._queue, limit)
            if room == 0:
                # Held by long jobs: store as ready and let the claim start them; no
                # further wait until the pool has room again.
                self._gave_up = True
                return size
        if room is None or self.off:
            return size
        self._gave_up = False
        return max(1, min(size, room))
