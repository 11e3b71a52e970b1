"""The JobStore role on PostgreSQL: inserts, claims, outcomes, leases, LISTEN (the instances'
rows in pg_workers)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg
import structlog

from jobwire.backoff import Backoff
from jobwire.effects import effects_of
from jobwire.models import Job, JobSpec, JobStatus, Outcome, StreamOffset
from jobwire.store.base import (
    ClaimRequest,
    DirectStart,
    Enqueued,
    InvalidJobData,
    NotifyCallback,
    Renewal,
    StoreUnavailable,
    started_jobs,
)
from jobwire.store.flow import flow_left, plain_queues
from jobwire.store.pg_base import UNAVAILABLE, guard, is_outage, server_settings
from jobwire.store.pg_flow import PgFlow
from jobwire.store.pg_outbox import write_effects
from jobwire.store.pg_workers import PgWorkers
from jobwire.store.rows import ids_in_order, shared_value

log = structlog.get_logger("jobwire.store")


def _claimed(row: asyncpg.Record) -> Job:
    """A job as claim_jobs returns it (its columns by position)."""
    return Job(
        row[0],
        row[1],
        row[2],
        JobStatus.RUNNING,
        row[3],
        row[4],
        row[5],
        row[6],
        row[7],
        row[8],
        body=row[9],
        content_type=row[10],
        headers=row[11] or {},
        source=row[12],
        dedup_key=row[13],
        worker_id=row[14],
        started_at=row[15],
        parent_id=row[16],
        lease_until=row[17],
        timeout=row[18],
        concurrency_key=row[19],
    )


class PgJobs(PgWorkers, PgFlow):
    """What the intake and the worker pool run on PostgreSQL."""

    async def enqueue(
        self,
        specs: Sequence[JobSpec],
        direct: DirectStart | None = None,
        offsets: Sequence[StreamOffset] = (),
    ) -> Enqueued:
        """Insert jobs in one statement; duplicates (by dedup key) yield None.

        ``offsets`` (Kafka positions) are written in the same transaction as the rows.
        """
        if not specs and not offsets:
            return Enqueued([])
        rows = await self._insert(self._insert_args(specs, direct, offsets))
        ids = ids_in_order(specs, rows)
        return Enqueued(ids, started_jobs(specs, ids, direct, self._default_max_attempts))

    async def enqueue_many(
        self,
        specs: Sequence[JobSpec],
        direct: DirectStart | None = None,
        offsets: Sequence[StreamOffset] = (),
    ) -> list[int | None]:
        """An id per spec, None for a duplicate (see enqueue)."""
        return (await self.enqueue(specs, direct, offsets)).ids

    async def _insert(self, columns: list[Any]) -> list[asyncpg.Record]:
        try:
            async with guard("enqueue"):
                # One statement, rows and offsets: its own transaction, one round trip.
                rows: list[asyncpg.Record] = await self._pool.fetch(
                    self._q["insert_jobs"], *columns
                )
                return rows
        except asyncpg.PostgresError as exc:
            if is_outage(exc):
                raise StoreUnavailable(f"enqueue: {type(exc).__name__}: {exc}") from exc
            # Anything else is about the rows (a NUL character jsonb refuses, an integer out
            # of range, JSON too deep for the server): the caller finds the row that did it.
            raise InvalidJobData(f"{type(exc).__name__}: {exc}") from exc

    async def stored_offsets(
        self, group_id: str, partitions: Sequence[tuple[str, int]]
    ) -> dict[tuple[str, int], int]:
        """The next offset stored for each (topic, partition) of a consumer group."""
        if not partitions:
            return {}
        async with guard("offsets"):
            rows = await self._pool.fetch(
                self._q["stored_offsets"],
                group_id,
                [t for t, _ in partitions],
                [p for _, p in partitions],
            )
        return {(r["topic"], r["partition"]): r["next_offset"] for r in rows}

    async def claim(self, request: ClaimRequest) -> list[Job]:
        """Claim ready jobs for one worker: plain jobs by the fast claim, then (when the
        request has flow controls) keyed and rate-limited ones by the flow claim."""
        flow = request.flow
        fast = plain_queues(request)
        queues = [q for q, n in fast.items() if n > 0]
        jobs: list[Job] = []
        if queues and request.limit > 0:
            async with guard("claim"):
                rows = await self._pool.fetch(
                    self._q["claim_jobs"],
                    queues,
                    [fast[q] for q in queues],
                    request.limit,
                    request.worker_id,
                    request.lease,
                    list(flow.handler_rates) if flow is not None else [],
                )
            jobs = [_claimed(r) for r in rows]
        if flow is not None and flow.queues:
            per_queue, limit = flow_left(request, flow, jobs)
            jobs += await self._claim_flow(request, flow, per_queue, limit, _claimed)
        # The claim's RETURNING gives rows in no particular order; the pool starts them in
        # claim order.
        return sorted(jobs, key=lambda j: (-j.priority, j.id))

    async def complete_many(self, worker_id: str, outcomes: Sequence[Outcome]) -> int:
        """Write a batch of outcomes in one statement."""
        if not outcomes:
            return 0
        if any(effects_of(o) is not None for o in outcomes):
            return await self._complete_with_effects(worker_id, outcomes)
        try:
            async with guard("complete"):
                count = await self._pool.fetchval(
                    self._q["complete_jobs"], *self._complete_args(worker_id, outcomes)
                )
        except asyncpg.PostgresError as exc:
            if is_outage(exc):
                raise StoreUnavailable(f"complete: {type(exc).__name__}: {exc}") from exc
            # A result the server refuses (past jsonb's size limit): the completer writes the
            # batch one outcome at a time and the refused one as a bare failure. Raised as it
            # was, it stopped every completion behind it (found by a drill).
            raise InvalidJobData(f"{type(exc).__name__}: {exc}") from exc
        return int(count)

    async def _complete_with_effects(self, worker_id: str, outcomes: Sequence[Outcome]) -> int:
        """complete_many when some outcomes carry effects (outbox rows, child jobs): one
        transaction, the effects first (they lock the attempts still held, see
        outbox_write_effects), then the same complete_jobs statement."""
        try:
            async with guard("complete"), self._pool.acquire() as conn, conn.transaction():
                await write_effects(conn, self._q, worker_id, outcomes)
                count = await conn.fetchval(
                    self._q["complete_jobs"], *self._complete_args(worker_id, outcomes)
                )
        except asyncpg.PostgresError as exc:
            if is_outage(exc):
                raise StoreUnavailable(f"complete: {type(exc).__name__}: {exc}") from exc
            # A child job or message the server refuses: the completer retries the batch one
            # outcome at a time, and a refused one is written as a bare failure.
            raise InvalidJobData(f"{type(exc).__name__}: {exc}") from exc
        return int(count)

    @staticmethod
    def _complete_args(worker_id: str, outcomes: Sequence[Outcome]) -> list[Any]:
        """complete_jobs' parameters for a batch of outcomes; a column every outcome
        shares (the attempt, status, result, error, retry delay) goes as one value."""
        args = [
            [o.job_id for o in outcomes],
            [o.attempt for o in outcomes],
            [str(o.status) for o in outcomes],
            [o.duration for o in outcomes],
            [o.result_json for o in outcomes],
            [o.error for o in outcomes],
            [o.retry_in or 0.0 for o in outcomes],
            worker_id,
            # Job id -> position in the arrays above (1-based, as SQL arrays are); the
            # connection's jsonb codec serialises it.
            {str(o.job_id): i for i, o in enumerate(outcomes, 1)},
        ]
        return args + [shared_value(args, i) for i in (1, 2, 4, 5, 6)]

    async def renew_leases(self, worker_id: str, lease: float, job_ids: Sequence[int]) -> Renewal:
        """Extend the leases of the jobs this worker still holds; report which it holds and
        which of those were asked to cancel."""
        if not job_ids:
            return Renewal()
        async with guard("renew leases"):
            rows = await self._pool.fetch(self._q["renew_leases"], worker_id, lease, list(job_ids))
        return Renewal(
            held=frozenset(r["id"] for r in rows),
            cancel=frozenset(r["id"] for r in rows if r["cancel_requested"]),
            locked=frozenset(r["id"] for r in rows if r["locked"]),
        )

    async def recover_expired_leases(self) -> list[int]:
        """Take back jobs of dead workers."""
        async with guard("recover leases"):
            rows = await self._pool.fetch(self._q["recover_expired_leases"])
        return [r["id"] for r in rows]

    async def release_unknown(self, worker_id: str, known_ids: Sequence[int]) -> list[int]:
        """Give back running jobs of this worker that it does not know it runs."""
        async with guard("release unknown"):
            rows = await self._pool.fetch(
                self._q["release_unknown_jobs"], worker_id, list(known_ids)
            )
        return [r["id"] for r in rows]

    async def release(self, worker_id: str, job_ids: Sequence[int]) -> list[int]:
        """Give unfinished jobs back at shutdown."""
        if not job_ids:
            return []
        async with guard("release"):
            rows = await self._pool.fetch(self._q["release_jobs"], worker_id, list(job_ids))
        return [r["id"] for r in rows]

    async def ready_backlog(self, cap: int) -> int:
        """Ready jobs, up to ``cap``."""
        async with guard("backlog"):
            return int(await self._pool.fetchval(self._q["ready_backlog"], cap))

    async def oldest_ready(self, queues: Sequence[str]) -> dict[str, float]:
        """Age of each queue's oldest ready job, through jobs_ready."""
        if not queues:
            return {}
        async with guard("oldest ready"):
            rows = await self._pool.fetch(self._q["oldest_ready"], list(queues))
        return {r["queue"]: float(r["age"] or 0.0) for r in rows}

    async def oldest_ready_elsewhere(self, queues: Sequence[str]) -> float:
        """Age of the oldest ready job outside these queues, through jobs_ready."""
        async with guard("oldest ready"):
            age = await self._pool.fetchval(self._q["oldest_ready_elsewhere"], list(queues))
        return float(age or 0.0)

    async def existing(self, job_ids: Sequence[int]) -> set[int]:
        """Ids among these with a committed row."""
        if not job_ids:
            return set()
        async with guard("existing"):
            rows = await self._pool.fetch(self._q["existing_ids"], list(job_ids))
        return {r["id"] for r in rows}

    async def set_progress(self, job_id: int, percent: int, note: str | None) -> None:
        """Store progress of a running job."""
        async with guard("progress"):
            await self._pool.execute(self._q["set_progress"], job_id, percent, note)

    def _relay(self, on_notify: NotifyCallback) -> Callable[[Any, int, str, str], None]:
        def relay(_conn: Any, pid: int, _channel: str, message: str) -> None:
            # Our own inserts already woke our pool (Intake calls wake()); echoing them back
            # would cost a claim per batch. Cancel requests are always passed on.
            if message == "jobs" and pid in self._own_backends:
                return
            on_notify(message)

        return relay

    async def listen(self, on_notify: NotifyCallback, on_reconnect: Callable[[], None]) -> None:
        """LISTEN on a dedicated connection; reconnect with backoff and report each reconnect."""
        backoff = Backoff(initial=0.1, maximum=5.0, jitter="none")
        connected_before = False
        while True:
            try:
                conn = await asyncpg.connect(
                    self._dsn, server_settings=server_settings(self._schema)
                )
            except (*UNAVAILABLE, asyncpg.PostgresError) as exc:
                delay = backoff.next()
                log.warning("listen_connect_failed", error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)
                continue
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _c, lost=lost: lost.set())
            try:
                await conn.add_listener(self._channel, self._relay(on_notify))
                backoff.reset()
                if connected_before:
                    log.info("listen_reconnected", channel=self._channel)
                    # Anything inserted while we were deaf is found by a catch-up claim.
                    on_reconnect()
                connected_before = True
                while not lost.is_set():
                    # A silent (half-open) connection sends no termination: ping it now and then.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(5.0):
                            await lost.wait()
                        break
                    await conn.fetchval(self._q["ping"], timeout=5.0)
            except (*UNAVAILABLE, asyncpg.PostgresError) as exc:
                log.warning("listen_connection_lost", error=str(exc))
            finally:
                if not conn.is_closed():
                    conn.terminate()
            if lost.is_set():
                log.warning("listen_connection_lost", error="connection closed")
