"""One source's intake: collect deliveries into batches, store them, then settle them."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable, Sequence

import structlog

from jobwire import failpoints
from jobwire.backoff import Backoff
from jobwire.config import SourceBase
from jobwire.intake.counters import SourceCounters
from jobwire.intake.dead_letter import DeadLetters
from jobwire.intake.holds import Holds
from jobwire.intake.line import DeliveryLine
from jobwire.intake.notify import Notifications
from jobwire.intake.pacing import Pacer
from jobwire.intake.ports import Handoff, Settler
from jobwire.intake.writer import BatchWriter
from jobwire.models import Message, StreamOffset
from jobwire.routing import Poison, Routed, Router
from jobwire.store.base import JobStore, StoreUnavailable

log = structlog.get_logger("jobwire.intake")


class Intake:
    """One source's path from broker deliveries to committed job rows."""

    def __init__(
        self,
        source: SourceBase,
        adapter: Settler,
        router: Router,
        store: JobStore,
        pool: Handoff,
        on_stored: Callable[[int], None] | None = None,
    ) -> None:
        self.source = source
        self.adapter = adapter
        self.router = router
        self.store = store
        self.pool = pool
        self.counters = SourceCounters()
        self._log = log.bind(source=source.name)
        self._line = DeliveryLine()
        self._idle = asyncio.Event()
        self._idle.set()
        self._pacer = Pacer(pool, source.route, adapter.may_wait)
        self._holds = Holds(adapter, store, self._log)
        self._writer = BatchWriter(store, pool, self._log)
        self._notifications = Notifications(
            source.route.notify_wait,
            router,
            store,
            self._writer,
            adapter,
            pool,
            self.counters,
            self._log,
            self._requeue,
            self._settle,
        )
        self._dead_letters = DeadLetters(
            source.on_invalid == "dead-letter",
            self._writer,
            adapter,
            self.counters,
            self._log,
            self._requeue,
        )
        # Told how many jobs each batch stored (flow control's early warning).
        self.on_stored: Callable[[int], None] = on_stored or (lambda _count: None)

    # -- taking deliveries ---------------------------------------------------------------

    def submit(self, message: Message) -> None:
        """The adapter's sink: take a delivery (never blocks)."""
        self.counters.received += 1
        self._idle.clear()
        self._line.put(message)

    async def run(self) -> None:
        """Collect batches (up to batch_size, or batch_delay after the first), pace them to
        the pool's free slots, and store them."""
        loop = asyncio.get_running_loop()
        line = self._line
        size, delay = self.source.batch_size, self.source.batch_delay
        while True:
            offered = await line.ready(size, delay)
            asked_at = loop.time()
            take = await self._pacer.take(offered, line.held_since())
            batch = line.take(take, offered, asked_at)
            await self._process_guarded(batch)
            if not line:
                self._idle.set()

    async def drain(self, timeout: float) -> None:
        """Wait until every delivery taken so far is stored and settled (at shutdown)."""
        self._pacer.off = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        if not self._idle.is_set():
            self._log.warning(
                "intake_drain_incomplete",
                waiting=len(self._line),
                note="unacknowledged deliveries return to the broker",
            )

    @property
    def waiting(self) -> int:
        """Deliveries taken from the broker and not yet in a batch being stored."""
        return len(self._line)

    def held_back_for(self) -> float:
        """Seconds the oldest waiting delivery has been held back for a free slot; 0: none
        is (it is stored once ``workers.hand_off_wait`` runs out)."""
        since = self._line.held_since()
        if since is None:
            return 0.0
        return max(0.0, asyncio.get_running_loop().time() - since)

    # -- holding the source --------------------------------------------------------------

    @property
    def held(self) -> list[str]:
        """Why the source is not taking messages now (store, backlog); empty: it is."""
        return self._holds.reasons

    async def hold(self, reason: str) -> None:
        """Stop the source taking messages, for ``reason`` (store, backlog)."""
        await self._holds.hold(reason)

    async def release(self, reason: str) -> None:
        """Drop one reason; the source goes on once no reason is left."""
        await self._holds.release(reason)

    # -- storing a batch -----------------------------------------------------------------

    async def process(self, batch: Sequence[Message]) -> None:
        """Store one batch and settle its deliveries; on store failure, requeue and pause."""
        if self.source.route.mode == "notify":
            await self._notifications.process(batch)
            return
        while True:
            try:
                await self._store_batch(batch)
                return
            except StoreUnavailable as exc:
                if self.adapter.requeue_redelivers:
                    await self._requeue(batch, exc)
                    return
                # A log read in order: this batch must be stored before any later one, or
                # a later offset would be committed past it. Keep it and try again.
                self._log.error("intake_store_failed", error=str(exc), kept=len(batch))
                await self._holds.until_store_answers()

    async def _process_guarded(self, batch: Sequence[Message]) -> None:
        """``process``, surviving a bug: the batch is taken again one message at a time, and
        a message that alone still breaks it is kept as a failed job (it never holds the
        source)."""
        try:
            await self.process(batch)
            return
        except Exception as exc:  # noqa: BLE001 - a bug must not stop intake for good
            self._log.exception("intake_batch_crashed", size=len(batch))
            error = exc
        if len(batch) > 1:
            for message in batch:
                await self._process_guarded([message])
            return
        reason = f"intake failed on it: {type(error).__name__}: {error}"
        await self._keep_as_failed(batch[0], reason)

    async def _store_batch(self, batch: Sequence[Message]) -> None:
        """Insert one batch (with its log offsets) and settle it; StoreUnavailable if down.

        Only an outage raises: a message the router or the store refuses becomes a failed
        job here, and the messages around it are stored and acked as usual.
        """
        keep: list[tuple[Message, Routed]] = []
        rejects: list[tuple[Message, Routed]] = []
        dead_letters = self._dead_letters
        for message in batch:
            result = self.router.route_message(message)
            (rejects if dead_letters.wants(message, result) else keep).append((message, result))
        offsets = _last_offsets(batch)
        failpoints.hit("intake.before_store")  # received, not yet committed (drills)
        ids = await self._writer.write([r for _, r in keep], [m.body for m, _ in keep], offsets)
        failpoints.hit("intake.after_commit")
        self.counters.batches += 1
        for message, result in keep:
            self.counters.note_stored(self._log, message, result)
        inserted = sum(1 for i in ids if i is not None)
        self.counters.stored += inserted
        self.on_stored(inserted)
        self.counters.duplicate += len(ids) - inserted
        await self.adapter.ack_many([m for m, _ in keep])
        self.counters.acked += len(keep)
        if rejects:
            await self._dead_letters.send(rejects)

    async def _keep_as_failed(self, message: Message, reason: str) -> None:
        """Last resort for one message: a failed job holding it, then ack; or, while the
        store cannot take even that, back to the broker (or kept, for a log)."""
        backoff = Backoff(initial=1.0, maximum=30.0, jitter="none")
        while True:
            try:
                routed = self.router.failed(message, reason, kind=Poison.INTERNAL)
                await self._writer.write([routed], [message.body], _last_offsets([message]))
                self.counters.note_stored(self._log, message, routed)
                await self.adapter.ack_many([message])
                self.counters.acked += 1
                return
            except StoreUnavailable as exc:
                if self.adapter.requeue_redelivers:
                    await self._requeue([message], exc)
                    return
                await self._holds.until_store_answers()
            except Exception:  # noqa: BLE001 - stuck and loud, never silently dropped
                self._log.exception("intake_message_stuck", bytes=len(message.body))
                if self.adapter.requeue_redelivers:
                    await self._settle(functools.partial(self.adapter.requeue_many, [message]))
                    self.counters.nacked += 1
                    return
                # A log read in order: skipping it would let later offsets pass it.
                await backoff.sleep()

    # -- settling ------------------------------------------------------------------------

    async def _settle(self, action: Callable[[], Awaitable[None]] | None) -> None:
        if action is None:
            return
        try:
            await action()
        except Exception as exc:  # noqa: BLE001 - the delivery comes back; dedup absorbs it
            self._log.warning("settle_failed", error=f"{type(exc).__name__}: {exc}")

    async def _requeue(self, batch: Sequence[Message], exc: Exception) -> None:
        self._log.error("intake_store_failed", error=str(exc), requeued=len(batch))
        await self._settle(functools.partial(self.adapter.requeue_many, batch))
        self.counters.nacked += len(batch)
        await self._holds.until_store_answers()


def _last_offsets(batch: Sequence[Message]) -> list[StreamOffset]:
    """The position after the batch in each partition it read from (none for queues)."""
    last: dict[tuple[str, str, int], StreamOffset] = {}
    for message in batch:
        offset = message.offset
        if offset is None:
            continue
        key = (offset.group_id, offset.topic, offset.partition)
        seen = last.get(key)
        if seen is None or offset.next_offset > seen.next_offset:
            last[key] = offset
    return list(last.values())
