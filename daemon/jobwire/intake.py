"""Intake: batch a source's messages into one INSERT, commit, then settle every delivery.

The order is the guarantee: a delivery is acknowledged only after the row holding it is
committed. When the store fails, the batch goes back to the broker (nack with requeue)
and the source stops consuming until the store answers again; messages already delivered
meanwhile wait here, unacknowledged, instead of bouncing back and forth.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import structlog

from jobwire import failpoints
from jobwire.config import SourceBase
from jobwire.models import Job, JobSpec, Message, StreamOffset
from jobwire.routing import UNROUTABLE, Poison, Routed, Router
from jobwire.storable import storable_text
from jobwire.store.base import DirectStart, InvalidJobData, JobStore, StoreUnavailable

log = structlog.get_logger("jobwire.intake")


@dataclass
class SourceCounters:
    """Per-source intake counts, for stats and metrics."""

    received: int = 0
    stored: int = 0
    duplicate: int = 0
    invalid: int = 0
    dead_lettered: int = 0
    notified: int = 0
    acked: int = 0
    nacked: int = 0
    batches: int = 0
    # Messages whose headers had to be changed to be storable (they still ran).
    headers_replaced: int = 0
    # Messages that became failed jobs (or were dead-lettered), by Poison reason.
    poison: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict of the counts."""
        return asdict(self)


class Settler(Protocol):
    """What the intake needs of a source: settle deliveries, and stop or go on taking them.

    The intake owns this port; every broker adapter fills it.
    """

    # True: a requeued delivery comes back from the broker (AMQP, STOMP, MQTT). False: the
    # source is a log read in order (Kafka), and the intake keeps what it could not store.
    requeue_redelivers: bool

    async def ack_many(self, messages: Sequence[Message]) -> None:
        """Acknowledge deliveries whose rows are committed."""

    async def requeue_many(self, messages: Sequence[Message]) -> None:
        """Give deliveries back to the broker (the store is out)."""

    async def pause(self) -> None:
        """Stop taking deliveries."""

    async def resume(self) -> None:
        """Take deliveries again."""


class Handoff(Protocol):
    """A worker pool that takes freshly inserted jobs directly (see WorkerPool.reserve)."""

    def reserve(self, queue: str, wanted: int) -> int:
        """Slots granted for jobs inserted now."""

    def unreserve(self, queue: str, count: int) -> None:
        """Give the reservation back."""

    def direct_start(self) -> tuple[str, float]:
        """Worker id and lease to insert with."""

    def start_inserted(self, job: Job) -> None:
        """Run a job inserted as running in this worker."""

    def wake(self) -> None:
        """New jobs are waiting: claim."""

    def orphans_possible(self) -> None:
        """An insert of directly started jobs failed unseen: it may have committed rows
        running here that no task runs; give them back once the store answers."""


class Intake:
    """One source's path from broker deliveries to committed job rows."""

    def __init__(
        self,
        source: SourceBase,
        adapter: Settler,
        router: Router,
        store: JobStore,
        pool: Handoff,
        default_max_attempts: int,
        on_stored: Callable[[int], None] | None = None,
    ) -> None:
        self.source = source
        self.adapter = adapter
        self.router = router
        self.store = store
        self.pool = pool
        self.default_max_attempts = default_max_attempts
        self.counters = SourceCounters()
        # Unbounded on purpose: the broker's prefetch bounds it, and a put that never waits
        # keeps deliveries in arrival order.
        self._queue: asyncio.Queue[Message] = asyncio.Queue()
        self._idle = asyncio.Event()
        self._idle.set()
        # Notify mode: job ids seen but not yet visible, with when they were first seen.
        self._notified_waiting: dict[int, float] = {}
        self._delayed: set[asyncio.Task[None]] = set()
        # Why the source is not taking messages now ("store", "backlog"); empty: it is.
        self._held: set[str] = set()
        # Dedup keys of messages the dead-letter target did not confirm (oldest first).
        self._dead_letter_failed: dict[str, None] = {}
        # Told how many jobs each batch stored (flow control's early warning).
        self.on_stored: Callable[[int], None] = on_stored or (lambda _count: None)
        self._log = log.bind(source=source.name)

    def submit(self, message: Message) -> None:
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
                    async with asyncio.timeout(remaining):
                        batch.append(await self._queue.get())
                except TimeoutError:
                    break
            await self._process_guarded(batch)
            if self._queue.empty():
                self._idle.set()

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
        await self._keep_as_failed(
            batch[0], f"intake failed on it: {type(error).__name__}: {error}"
        )

    async def _keep_as_failed(self, message: Message, reason: str) -> None:
        """Last resort for one message: a failed job holding it, then ack; or, while the
        store cannot take even that, back to the broker (or kept, for a log)."""
        delay = 1.0
        while True:
            try:
                routed = self.router.failed(message, reason, kind=Poison.INTERNAL)
                await self._insert_and_start([routed], [message.body], _last_offsets([message]))
                self._count_poison(message, routed)
                await self.adapter.ack_many([message])
                self.counters.acked += 1
                return
            except StoreUnavailable as exc:
                if self.adapter.requeue_redelivers:
                    await self._requeue([message], exc)
                    return
                await self._pause_until_store_answers()
            except Exception:  # noqa: BLE001 - stuck and loud, never silently dropped
                self._log.exception("intake_message_stuck", bytes=len(message.body))
                if self.adapter.requeue_redelivers:
                    await self._settle(functools.partial(self.adapter.requeue_many, [message]))
                    self.counters.nacked += 1
                    return
                # A log read in order: skipping it would let later offsets pass it.
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def drain(self, timeout: float) -> None:
        """Wait until every delivery taken so far is stored and settled (at shutdown)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        if not self._idle.is_set():
            self._log.warning(
                "intake_drain_incomplete",
                waiting=self._queue.qsize(),
                note="unacknowledged deliveries return to the broker",
            )

    async def process(self, batch: Sequence[Message]) -> None:
        """Store one batch and settle its deliveries; on store failure, requeue and pause."""
        if self.source.route.mode == "notify":
            await self._process_notifications(batch)
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
                await self._pause_until_store_answers()

    async def _store_batch(self, batch: Sequence[Message]) -> None:
        """Insert one batch (with its log offsets) and settle it; StoreUnavailable if down.

        Only an outage raises: a message the router or the store refuses becomes a failed
        job here, and the messages around it are stored and acked as usual.
        """
        routed = [self.router.route_message(m) for m in batch]
        dead_letter = self.source.on_invalid == "dead-letter"
        keep: list[tuple[Message, Routed]] = []
        rejects: list[tuple[Message, Routed]] = []
        for message, result in zip(batch, routed, strict=True):
            if (
                result.invalid
                and dead_letter
                and message.reject is not None
                and result.spec.dedup_key not in self._dead_letter_failed
            ):
                rejects.append((message, result))
            else:
                keep.append((message, result))
        offsets = _last_offsets(batch)
        failpoints.hit("intake.before_store")  # received, not yet committed (drills)
        ids = await self._insert_and_start([r for _, r in keep], [m.body for m, _ in keep], offsets)
        failpoints.hit("intake.after_commit")
        self.counters.batches += 1
        for message, result in keep:
            self._count_poison(message, result)
        inserted = sum(1 for i in ids if i is not None)
        self.counters.stored += inserted
        self.on_stored(inserted)
        self.counters.duplicate += len(ids) - inserted
        await self.adapter.ack_many([m for m, _ in keep])
        self.counters.acked += len(keep)
        if rejects:
            await self._dead_letter(rejects)

    async def _dead_letter(self, rejects: Sequence[tuple[Message, Routed]]) -> None:
        """Hand invalid messages to the broker's dead-letter target; one it could not take
        is kept as a failed job instead (never dropped, never looped)."""
        fallback: list[tuple[Message, Routed]] = []
        for message, result in rejects:
            assert message.reject is not None
            try:
                await message.reject(result.invalid)
            except Exception as exc:  # noqa: BLE001 - not confirmed: keep it ourselves
                # The broker still has it (the adapter ended its channel or connection, so
                # the ack below may not reach it) and redelivers it: remembered, the copy is
                # then kept as a failed job at once, its dedup key absorbing this one's row,
                # instead of trying a target that fails again and again.
                if result.spec.dedup_key is not None:
                    self._dead_letter_failed[result.spec.dedup_key] = None
                    while len(self._dead_letter_failed) > 10_000:
                        del self._dead_letter_failed[next(iter(self._dead_letter_failed))]
                self._log.warning(
                    "dead_letter_failed",
                    reason=result.invalid,
                    error=f"{type(exc).__name__}: {exc}",
                    note="kept as a failed job",
                )
                fallback.append((message, result))
                continue
            self.counters.dead_lettered += 1
            self.counters.poison[result.kind or Poison.INTERNAL] = (
                self.counters.poison.get(result.kind or Poison.INTERNAL, 0) + 1
            )
            self._log.warning("message_dead_lettered", reason=result.invalid)
        if not fallback:
            return
        messages = [m for m, _ in fallback]
        try:
            await self._insert_and_start([r for _, r in fallback], [m.body for m in messages])
        except StoreUnavailable as exc:
            await self._requeue(messages, exc)
            return
        for message, result in fallback:
            self._count_poison(message, result)
        await self.adapter.ack_many(messages)
        self.counters.acked += len(messages)

    def _count_poison(self, message: Message, result: Routed) -> None:
        """Count and log what routing had to change or refuse in one stored message."""
        if result.notes:
            self.counters.headers_replaced += 1
            self._log.warning(
                "message_headers_replaced", notes=result.notes[:5], dedup_key=result.spec.dedup_key
            )
        reason = result.spec.failed_reason
        if reason is None:
            return
        kind = result.kind or Poison.STORE_REFUSED
        self.counters.invalid += 1
        self.counters.poison[kind] = self.counters.poison.get(kind, 0) + 1
        self._log.warning(
            "message_invalid",
            kind=kind,
            reason=reason,
            dedup_key=result.spec.dedup_key,
            bytes=len(message.body),
        )

    async def _process_notifications(self, batch: Sequence[Message]) -> None:
        """Notify mode: ack once the named job's row is visible, then wake the pool."""
        named: list[tuple[Message, int]] = []
        bad: list[tuple[Message, Routed]] = []
        for message in batch:
            parsed = self.router.notified_job_id(message)
            if isinstance(parsed, int):
                named.append((message, parsed))
            else:
                bad.append(
                    (message, self.router.failed(message, parsed, kind=Poison.BAD_NOTIFICATION))
                )
        try:
            visible = await self.store.existing([job_id for _, job_id in named])
            if bad:
                await self._insert_and_start([r for _, r in bad], [m.body for m, _ in bad])
        except StoreUnavailable as exc:
            await self._requeue(batch, exc)
            return
        now = time.monotonic()
        settled: list[Message] = [m for m, _ in bad]
        for message, routed in bad:
            self._count_poison(message, routed)
        for message, job_id in named:
            if job_id in visible:
                self._notified_waiting.pop(job_id, None)
                settled.append(message)
                self.counters.notified += 1
                continue
            first_seen = self._notified_waiting.setdefault(job_id, now)
            if now - first_seen > self.source.route.notify_wait:
                # Nothing is lost by dropping it: the message carries no job, only an id.
                self._notified_waiting.pop(job_id, None)
                self._log.warning(
                    "notify_unknown_job", job_id=job_id, waited=round(now - first_seen, 1)
                )
                settled.append(message)
                continue
            # Not committed yet (the producer's transaction is still open): back to the
            # broker, a little later, so a fast redelivery does not spin.
            self._later(message)
        await self.adapter.ack_many(settled)
        self.counters.acked += len(settled)
        if len(self._notified_waiting) > 10_000:
            # Ids whose message went to another instance are never seen here again.
            horizon = now - 2 * self.source.route.notify_wait
            self._notified_waiting = {
                k: t for k, t in self._notified_waiting.items() if t > horizon
            }
        if visible:
            self.pool.wake()

    def _later(self, message: Message) -> None:
        async def nack_soon() -> None:
            await asyncio.sleep(0.2)
            if message.nack is not None:
                await self._settle(functools.partial(message.nack, True))
                self.counters.nacked += 1

        task = asyncio.create_task(nack_soon())
        self._delayed.add(task)
        task.add_done_callback(self._delayed.discard)

    def _reserve(self, specs: Sequence[JobSpec]) -> tuple[dict[str, int], DirectStart | None]:
        """Ask the pool for idle slots; the first specs of each queue then start at once."""
        wanted: dict[str, int] = {}
        for spec in specs:
            if spec.failed_reason is None and spec.delay <= 0:
                wanted[spec.queue] = wanted.get(spec.queue, 0) + 1
        reserved = {q: self.pool.reserve(q, n) for q, n in wanted.items()}
        if not any(reserved.values()):
            return reserved, None
        left = dict(reserved)
        flags = []
        for spec in specs:
            take = spec.failed_reason is None and spec.delay <= 0 and left.get(spec.queue, 0) > 0
            if take:
                left[spec.queue] -= 1
            flags.append(take)
        worker_id, lease = self.pool.direct_start()
        return reserved, DirectStart(worker_id, lease, flags)

    def _unreserve(self, reserved: dict[str, int]) -> None:
        for queue, count in reserved.items():
            if count:
                self.pool.unreserve(queue, count)

    async def _insert_and_start(
        self,
        routed: Sequence[Routed],
        bodies: Sequence[bytes],
        offsets: Sequence[StreamOffset] = (),
    ) -> list[int | None]:
        """Insert these specs (and offsets); start at once the jobs the pool has room for.

        Raises only StoreUnavailable. A batch the store refuses for its data is split until
        each refused message is alone, and that one is stored as a failed job with its raw
        body (``routed[i]`` then describes it). Every row inserted running here is started;
        an insert whose answer was lost may have committed some, which the pool is told.
        """
        specs = [r.spec for r in routed]
        if not specs and not offsets:
            return []
        reserved, direct = self._reserve(specs)
        try:
            try:
                enqueued = await self.store.enqueue(specs, direct, offsets)
                ids, to_start = enqueued.ids, enqueued.started
            except InvalidJobData as exc:
                # Nothing was written (one statement). Split it with no direct start: the
                # pool claims what is stored, so no row can be left running without a task.
                direct = None
                ids, to_start = [None] * len(specs), []
                await self._bisect(routed, bodies, 0, len(specs), exc, ids)
                if offsets:
                    # Only once every row is in: a crash before this reads the batch again,
                    # and the dedup keys absorb the rows already stored.
                    await self.store.enqueue_many([], None, offsets)
            except StoreUnavailable:
                if direct is not None:
                    self.pool.orphans_possible()
                raise
            started = self._start_direct(to_start)
        finally:
            self._unreserve(reserved)
        runnable = sum(
            1
            for r, i in zip(routed, ids, strict=True)
            if i is not None and not r.spec.failed_reason
        )
        if runnable > started:
            self.pool.wake()
        return ids

    async def _bisect(
        self,
        routed: Sequence[Routed],
        bodies: Sequence[bytes],
        lo: int,
        hi: int,
        error: InvalidJobData,
        ids: list[int | None],
    ) -> None:
        """Store routed[lo:hi], known to be refused as a whole, in halves, down to the
        messages that are refused alone."""
        if hi - lo == 1:
            ids[lo] = await self._insert_refused(routed[lo], bodies[lo], error)
            return
        mid = (lo + hi) // 2
        for a, b in ((lo, mid), (mid, hi)):
            try:
                ids[a:b] = await self.store.enqueue_many([r.spec for r in routed[a:b]])
            except InvalidJobData as exc:
                await self._bisect(routed, bodies, a, b, exc, ids)

    async def _insert_refused(
        self, routed: Routed, body: bytes, error: InvalidJobData
    ) -> int | None:
        """One message the store refused: a failed job with the raw body and the reason."""
        reason = f"store refused it: {error}"
        spec = routed.spec
        failed = dataclasses.replace(
            spec,
            payload=None,
            payload_json=None,
            body=body,
            failed_reason=storable_text(reason, 2000),
        )
        routed.spec, routed.invalid, routed.kind = failed, reason, Poison.STORE_REFUSED
        try:
            return (await self.store.enqueue_many([failed]))[0]
        except InvalidJobData as exc:
            self._log.warning("message_refused_twice", error=str(exc))
        # Even that was refused: keep only what cannot be refused (bytes and plain names).
        bare = JobSpec(
            handler=UNROUTABLE,
            body=body,
            queue=spec.queue,
            source=spec.source,
            dedup_key=spec.dedup_key,
            failed_reason=storable_text(reason, 2000),
        )
        routed.spec = bare
        try:
            return (await self.store.enqueue_many([bare]))[0]
        except InvalidJobData as exc:
            # Not this message: the store refuses the simplest row there is.
            raise StoreUnavailable(f"the store refuses even a bare failed job: {exc}") from exc

    def _start_direct(self, jobs: Sequence[Job]) -> int:
        """Hand the pool the jobs the insert made running in it; returns how many."""
        for job in jobs:
            self.pool.start_inserted(job)
        return len(jobs)

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
        await self._pause_until_store_answers()

    @property
    def held(self) -> list[str]:
        """Why the source is not taking messages now (store, backlog); empty: it is."""
        return sorted(self._held)

    async def hold(self, reason: str) -> None:
        """Stop the source taking messages, for ``reason`` (store, backlog)."""
        first = not self._held
        self._held.add(reason)
        if first:
            self._log.info("intake_held", reason=reason)
            await self.adapter.pause()

    async def release(self, reason: str) -> None:
        """Drop one reason; the source goes on once no reason is left."""
        if reason not in self._held:
            return
        self._held.discard(reason)
        if not self._held:
            self._log.info("intake_released", reason=reason)
            await self.adapter.resume()

    async def _pause_until_store_answers(self) -> None:
        await self.hold("store")
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
        await self.release("store")


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
