"""Intake: batch a source's messages into one INSERT, commit, then settle every delivery.

The order is the guarantee: a delivery is acknowledged only after the row holding it is
committed. When the store fails, the batch goes back to the broker (nack with requeue)
and the source stops consuming until the store answers again; messages already delivered
meanwhile wait here, unacknowledged, instead of bouncing back and forth.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass

import structlog

from jobwire import failpoints
from jobwire.adapters.base import Adapter, Message, SourceState
from jobwire.config import SourceBase
from jobwire.routing import Routed, Router
from jobwire.store.base import JobStore, StoreUnavailable

log = structlog.get_logger("jobwire.intake")


@dataclass
class SourceCounters:
    """Per-source intake counts, for stats and metrics."""

    received: int = 0
    stored: int = 0
    duplicate: int = 0
    invalid: int = 0
    dead_lettered: int = 0
    acked: int = 0
    nacked: int = 0
    batches: int = 0

    def as_dict(self) -> dict[str, int]:
        """Plain dict of the counts."""
        return asdict(self)


class Intake:
    """One source's path from broker deliveries to committed job rows."""

    def __init__(
        self,
        source: SourceBase,
        adapter: Adapter,
        router: Router,
        store: JobStore,
        on_committed: Callable[[], None],
    ) -> None:
        self.source = source
        self.adapter = adapter
        self.router = router
        self.store = store
        self.on_committed = on_committed
        self.counters = SourceCounters()
        # Unbounded on purpose: the broker's prefetch bounds it, and a put that never waits
        # keeps deliveries in arrival order.
        self._queue: asyncio.Queue[Message] = asyncio.Queue()
        self._idle = asyncio.Event()
        self._idle.set()
        self._log = log.bind(source=source.name)

    async def submit(self, message: Message) -> None:
        """The adapter's sink: take a delivery (never blocks)."""
        self.counters.received += 1
        self._idle.clear()
        self._queue.put_nowait(message)

    async def run(self) -> None:
        """Collect batches (up to batch_size, or batch_delay after the first) and store them."""
        loop = asyncio.get_running_loop()
        size, delay = self.source.batch_size, self.source.batch_delay
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + delay
            while len(batch) < size:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            try:
                await self.process(batch)
            except Exception as exc:
                self._log.exception("intake_batch_crashed", size=len(batch))
                await self._requeue(batch, exc)
            if self._queue.empty():
                self._idle.set()

    async def drain(self, timeout: float) -> None:
        """Wait until every delivery taken so far is stored and settled (at shutdown)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)
        if not self._idle.is_set():
            self._log.warning(
                "intake_drain_incomplete",
                waiting=self._queue.qsize(),
                note="unacknowledged deliveries return to the broker",
            )

    async def process(self, batch: Sequence[Message]) -> None:
        """Store one batch and settle its deliveries; on store failure, requeue and pause."""
        routed = [self.router.route_message(m) for m in batch]
        dead_letter = self.source.on_invalid == "dead-letter"
        keep: list[tuple[Message, Routed]] = []
        rejects: list[tuple[Message, Routed]] = []
        for message, result in zip(batch, routed, strict=True):
            if result.invalid and dead_letter and message.reject is not None:
                rejects.append((message, result))
            else:
                keep.append((message, result))
        try:
            ids = await self.store.enqueue_many([r.spec for _, r in keep]) if keep else []
        except StoreUnavailable as exc:
            await self._requeue(batch, exc)
            return
        failpoints.hit("intake.after_commit")
        self.counters.batches += 1
        for message, result in keep:
            if result.invalid:
                self.counters.invalid += 1
                self._log.warning(
                    "message_invalid",
                    reason=result.invalid,
                    dedup_key=result.spec.dedup_key,
                    bytes=len(message.body),
                )
        inserted = sum(1 for i in ids if i is not None)
        self.counters.stored += inserted
        self.counters.duplicate += len(ids) - inserted
        for message, result in rejects:
            self._log.warning("message_dead_lettered", reason=result.invalid)
            await self._settle(message.reject)
            self.counters.dead_lettered += 1
        await self.adapter.ack_many([m for m, _ in keep])
        self.counters.acked += len(keep)
        if inserted:
            self.on_committed()

    async def _settle(self, action: Callable[[], Awaitable[None]] | None) -> None:
        if action is None:
            return
        try:
            await action()
        except Exception as exc:
            self._log.warning("settle_failed", error=f"{type(exc).__name__}: {exc}")

    async def _requeue(self, batch: Sequence[Message], exc: Exception) -> None:
        self._log.error("intake_store_failed", error=str(exc), requeued=len(batch))
        for message in batch:
            if message.nack is not None:
                await self._settle(functools.partial(message.nack, True))
        self.counters.nacked += len(batch)
        await self._pause_until_store_answers()

    async def _pause_until_store_answers(self) -> None:
        await self.adapter.pause()
        started = time.monotonic()
        delay = 0.1
        while True:
            await asyncio.sleep(delay)
            try:
                await self.store.ping()
                break
            except StoreUnavailable:
                delay = min(delay * 2, 2.0)
        self._log.info("intake_store_back", paused_for=round(time.monotonic() - started, 3))
        await self.adapter.resume()
        if self.adapter.state == SourceState.PAUSED:
            self.adapter.set_state(SourceState.UP)
