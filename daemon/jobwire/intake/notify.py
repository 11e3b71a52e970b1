"""Notify mode (Koha's way): a message names a job a producer already wrote; ack it once the
row is visible, and wake the pool."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from jobwire.intake.counters import SourceCounters
from jobwire.intake.ports import Handoff, Settler
from jobwire.intake.writer import BatchWriter
from jobwire.models import Message
from jobwire.routing import Poison, Routed, Router
from jobwire.store.base import JobStore, StoreUnavailable

Requeue = Callable[[Sequence[Message], Exception], Awaitable[None]]
Settle = Callable[[Callable[[], Awaitable[None]] | None], Awaitable[None]]


class Notifications:
    """One notify-mode source's batches: named ids looked up, bad notifications kept."""

    def __init__(
        self,
        notify_wait: float,
        router: Router,
        store: JobStore,
        writer: BatchWriter,
        settler: Settler,
        pool: Handoff,
        counters: SourceCounters,
        log: Any,
        requeue: Requeue,
        settle: Settle,
    ) -> None:
        self._wait = notify_wait
        self._router = router
        self._store = store
        self._writer = writer
        self._settler = settler
        self._pool = pool
        self._counters = counters
        self._log = log
        self._requeue = requeue
        self._settle = settle
        # Job ids seen but not yet visible, with when they were first seen.
        self._waiting: dict[int, float] = {}
        self._delayed: set[asyncio.Task[None]] = set()

    async def process(self, batch: Sequence[Message]) -> None:
        """Ack each message whose job row is visible; a bad one becomes a failed job."""
        named: list[tuple[Message, int]] = []
        bad: list[tuple[Message, Routed]] = []
        for message in batch:
            parsed = self._router.notified_job_id(message)
            if isinstance(parsed, int):
                named.append((message, parsed))
            else:
                failed = self._router.failed(message, parsed, kind=Poison.BAD_NOTIFICATION)
                bad.append((message, failed))
        try:
            visible = await self._store.existing([job_id for _, job_id in named])
            if bad:
                await self._writer.write([r for _, r in bad], [m.body for m, _ in bad])
        except StoreUnavailable as exc:
            await self._requeue(batch, exc)
            return
        settled: list[Message] = [m for m, _ in bad]
        for message, routed in bad:
            self._counters.note_stored(self._log, message, routed)
        settled += self._settle_named(named, visible)
        await self._settler.ack_many(settled)
        self._counters.acked += len(settled)
        if visible:
            self._pool.wake()

    def _settle_named(
        self, named: Sequence[tuple[Message, int]], visible: set[int]
    ) -> list[Message]:
        """The messages to ack now; the rest go back to the broker a little later."""
        now = time.monotonic()
        settled = []
        for message, job_id in named:
            if job_id in visible:
                self._waiting.pop(job_id, None)
                settled.append(message)
                self._counters.notified += 1
                continue
            first_seen = self._waiting.setdefault(job_id, now)
            if now - first_seen > self._wait:
                # Nothing is lost by dropping it: the message carries no job, only an id.
                self._waiting.pop(job_id, None)
                self._log.warning(
                    "notify_unknown_job", job_id=job_id, waited=round(now - first_seen, 1)
                )
                settled.append(message)
                continue
            # Not committed yet (the producer's transaction is still open): back to the
            # broker, a little later, so a fast redelivery does not spin.
            self._later(message)
        if len(self._waiting) > 10_000:
            # Ids whose message went to another instance are never seen here again.
            horizon = now - 2 * self._wait
            self._waiting = {k: t for k, t in self._waiting.items() if t > horizon}
        return settled

    def _later(self, message: Message) -> None:
        async def nack_soon() -> None:
            await asyncio.sleep(0.2)
            if message.nack is not None:
                await self._settle(functools.partial(message.nack, True))
                self._counters.nacked += 1

        task = asyncio.create_task(nack_soon())
        self._delayed.add(task)
        task.add_done_callback(self._delayed.discard)
