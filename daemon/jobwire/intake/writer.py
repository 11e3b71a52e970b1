"""Writing a batch: one insert with its offsets, the direct hand-off to an idle pool, and the
split of a batch the store refuses down to the messages that caused it."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

from jobwire.intake.ports import Handoff
from jobwire.models import Job, JobSpec, StreamOffset
from jobwire.routing import UNROUTABLE, Poison, Routed
from jobwire.storable import storable_text
from jobwire.store.base import DirectStart, InvalidJobData, JobStore, StoreUnavailable


class BatchWriter:
    """Inserts routed messages for one source; raises nothing but StoreUnavailable."""

    def __init__(self, store: JobStore, pool: Handoff, log: Any) -> None:
        self._store = store
        self._pool = pool
        self._log = log

    async def write(
        self,
        routed: Sequence[Routed],
        bodies: Sequence[bytes],
        offsets: Sequence[StreamOffset] = (),
    ) -> list[int | None]:
        """Insert these specs (and offsets); start at once the jobs the pool has room for.

        A batch the store refuses for its data is split until each refused message is
        alone, and that one is stored as a failed job with its raw body (``routed[i]`` then
        describes it). Every row inserted running here is started; an insert whose answer
        was lost may have committed some, which the pool is told.
        """
        specs = [r.spec for r in routed]
        if not specs and not offsets:
            return []
        reserved, direct = self._reserve(specs)
        try:
            sent = time.monotonic()
            try:
                enqueued = await self._store.enqueue(specs, direct, offsets)
                ids, to_start = enqueued.ids, enqueued.started
            except InvalidJobData as exc:
                # Nothing was written (one statement). Split it with no direct start: the
                # pool claims what is stored, so no row can be left running without a task.
                ids, to_start = [None] * len(specs), []
                await self._bisect(routed, bodies, 0, len(specs), exc, ids)
                if offsets:
                    # Only once every row is in: a crash before this reads the batch again,
                    # and the dedup keys absorb the rows already stored.
                    await self._store.enqueue_many([], None, offsets)
            except StoreUnavailable:
                if direct is not None:
                    self._pool.orphans_possible()
                raise
            started = self._start(to_start, sent)
        finally:
            self._unreserve(reserved)
        runnable = sum(
            1
            for r, i in zip(routed, ids, strict=True)
            if i is not None and not r.spec.failed_reason
        )
        if runnable > started:
            self._pool.wake()
        return ids

    def _reserve(self, specs: Sequence[JobSpec]) -> tuple[dict[str, int], DirectStart | None]:
        """Ask the pool for idle slots; the first specs of each queue then start at once."""
        wanted: dict[str, int] = {}
        limited = self._pool.limited_handlers
        for spec in specs:
            if _direct(spec, limited):
                wanted[spec.queue] = wanted.get(spec.queue, 0) + 1
        reserved = {q: self._pool.reserve(q, n) for q, n in wanted.items()}
        if not any(reserved.values()):
            return reserved, None
        left = dict(reserved)
        flags = []
        for spec in specs:
            take = _direct(spec, limited) and left.get(spec.queue, 0) > 0
            if take:
                left[spec.queue] -= 1
            flags.append(take)
        worker_id, lease = self._pool.direct_start()
        return reserved, DirectStart(worker_id, lease, flags)

    def _unreserve(self, reserved: dict[str, int]) -> None:
        for queue, count in reserved.items():
            if count:
                self._pool.unreserve(queue, count)

    def _start(self, jobs: Sequence[Job], sent: float) -> int:
        """Hand the pool the jobs the insert made running in it; returns how many."""
        for job in jobs:
            self._pool.start_inserted(job, sent)
        return len(jobs)

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
                ids[a:b] = await self._store.enqueue_many([r.spec for r in routed[a:b]])
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
            return (await self._store.enqueue_many([failed]))[0]
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
            return (await self._store.enqueue_many([bare]))[0]
        except InvalidJobData as exc:
            # Not this message: the store refuses the simplest row there is.
            raise StoreUnavailable(f"the store refuses even a bare failed job: {exc}") from exc


def _direct(spec: JobSpec, limited: frozenset[str]) -> bool:
    """Whether a spec may start straight from the intake: runnable now, and with no key or
    handler rate to obey (only the flow claim may start those)."""
    return (
        spec.failed_reason is None
        and spec.delay <= 0
        and spec.concurrency_key is None
        and spec.handler not in limited
    )
