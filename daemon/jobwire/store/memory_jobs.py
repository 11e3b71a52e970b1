"""The JobStore role in memory: inserts, claims, outcomes, leases, workers, notifications."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from typing import Any

from jobwire.effects import effects_of
from jobwire.models import FINISHED, Job, JobSpec, JobStatus, Outcome, StreamOffset
from jobwire.store.base import (
    ClaimRequest,
    DirectStart,
    Enqueued,
    NotifyCallback,
    Renewal,
    started_jobs,
)
from jobwire.store.flow import flow_left, plain_queues
from jobwire.store.memory_base import READY, now
from jobwire.store.memory_flow import MemoryFlow
from jobwire.store.memory_outbox import write_effects


class MemoryJobs(MemoryFlow):
    """What the intake and the worker pool run on the memory store."""

    async def enqueue(
        self,
        specs: Sequence[JobSpec],
        direct: DirectStart | None = None,
        offsets: Sequence[StreamOffset] = (),
    ) -> Enqueued:
        """Insert jobs, skipping duplicate dedup keys; offsets never move backwards.

        Refuses, as PostgreSQL does, a whole batch with one value it cannot hold.
        """
        await self.ping()
        ids = self._insert(specs, direct, offsets)
        return Enqueued(ids, started_jobs(specs, ids, direct, self._default_max_attempts))

    async def enqueue_many(
        self,
        specs: Sequence[JobSpec],
        direct: DirectStart | None = None,
        offsets: Sequence[StreamOffset] = (),
    ) -> list[int | None]:
        """An id per spec, None for a duplicate (see enqueue)."""
        return (await self.enqueue(specs, direct, offsets)).ids

    async def stored_offsets(
        self, group_id: str, partitions: Sequence[tuple[str, int]]
    ) -> dict[tuple[str, int], int]:
        """The next offset stored for each (topic, partition) of a consumer group."""
        await self.ping()
        found = {}
        for topic, partition in partitions:
            if (group_id, topic, partition) in self.offsets:
                found[(topic, partition)] = self.offsets[(group_id, topic, partition)]
        return found

    async def claim(self, request: ClaimRequest) -> list[Job]:
        """Claim ready jobs, priority first then FIFO, within the per-queue limits: plain
        jobs as the fast claim does, then keyed and rate-limited ones as the flow claim."""
        at = now()
        # A paused queue starts nothing, whatever the pool last read (as the SQL claims).
        paused = {q for q, s in self.queue_state.items() if s.paused}
        if paused & request.per_queue.keys():
            per_queue = {q: 0 if q in paused else n for q, n in request.per_queue.items()}
            request = dataclasses.replace(request, per_queue=per_queue)
        flow = request.flow
        limited = flow.handler_rates if flow is not None else {}
        candidates: list[Job] = []
        for queue, n in plain_queues(request).items():
            if n <= 0:
                continue
            ready = sorted(
                (
                    j
                    for j in self.jobs.values()
                    if j.queue == queue
                    and j.status in READY
                    and j.run_at <= at
                    and j.concurrency_key is None
                    and j.handler not in limited
                ),
                key=lambda j: (-j.priority, j.id),
            )
            candidates.extend(ready[:n])
        chosen = sorted(candidates, key=lambda j: (-j.priority, j.id))[: max(request.limit, 0)]
        if flow is not None and flow.queues:
            per_queue, limit = flow_left(request, flow, chosen)
            chosen += self._flow_candidates(flow, per_queue, limit, at)
        for job in chosen:
            job.status = JobStatus.RUNNING
            job.attempts += 1
            job.worker_id = request.worker_id
            job.lease_until = at + timedelta(seconds=request.lease)
            job.started_at = at
            job.progress = job.progress_note = None
        return [dataclasses.replace(j) for j in chosen]

    async def complete_many(self, worker_id: str, outcomes: Sequence[Outcome]) -> int:
        """Apply outcomes still held by this worker."""
        at = now()
        count = 0
        for o in outcomes:
            job = self.jobs.get(o.job_id)
            if (
                job is None
                or job.status != JobStatus.RUNNING
                or job.worker_id != worker_id
                or job.attempts != o.attempt
            ):
                continue
            count += 1
            job.status = o.status
            job.result = None if o.result_json is None else json.loads(o.result_json)
            job.last_error = o.error
            if o.status == JobStatus.RETRYING:
                job.run_at = at + timedelta(seconds=o.retry_in or 0.0)
            job.finished_at = at if o.status in FINISHED else None
            if o.status == JobStatus.SUCCEEDED:
                job.progress = 100
                effects = effects_of(o)
                if effects is not None:
                    write_effects(self, job, effects)
            self._release_key(job)
            self._finished(job)
            self._add_run(job, worker_id, str(o.status), o.error, o.duration, job.result)
            job.lease_until = job.worker_id = None
        return count

    async def renew_leases(self, worker_id: str, lease: float, job_ids: Sequence[int]) -> Renewal:
        """Extend the leases of these jobs still held by this worker; report cancel requests."""
        until = now() + timedelta(seconds=lease)
        held = set()
        cancelled = set()
        for job_id in job_ids:
            job = self.jobs.get(job_id)
            if job is not None and job.status == JobStatus.RUNNING and job.worker_id == worker_id:
                job.lease_until = until
                held.add(job.id)
                if job.cancel_requested:
                    cancelled.add(job.id)
        return Renewal(frozenset(held), frozenset(cancelled))

    async def recover_expired_leases(self) -> list[int]:
        """Take back jobs whose lease ran out; the lost attempt counts."""
        at = now()
        lost = []
        for job in self.jobs.values():
            if job.status == JobStatus.RUNNING and job.lease_until and job.lease_until < at:
                if job.cancel_requested:
                    job.status = JobStatus.CANCELLED
                elif job.attempts >= job.max_attempts:
                    job.status = JobStatus.FAILED
                else:
                    job.status = JobStatus.RETRYING
                job.last_error = (
                    f"lease expired: worker {job.worker_id or '?'} stopped heartbeating "
                    f"during attempt {job.attempts}"
                )
                job.finished_at = at if job.status in FINISHED else None
                job.run_at = at
                self._finished(job)
                self._add_run(job, job.worker_id, "lost", "lease expired")
                job.lease_until = job.worker_id = None
                lost.append(job.id)
        return lost

    def _give_back(self, job: Job) -> None:
        """Back to waiting (or cancelled, if asked), the attempt not counted."""
        at = now()
        job.status = JobStatus.CANCELLED if job.cancel_requested else JobStatus.PENDING
        job.finished_at = at if job.cancel_requested else None
        job.attempts -= 1
        job.lease_until = job.worker_id = job.started_at = None
        job.run_at = at
        self._finished(job)

    async def release_unknown(self, worker_id: str, known_ids: Sequence[int]) -> list[int]:
        """Give back running jobs of this worker other than ``known_ids`` (no run counted)."""
        await self.ping()
        known = set(known_ids)
        released = []
        for job in self.jobs.values():
            if job.status != JobStatus.RUNNING or job.worker_id != worker_id or job.id in known:
                continue
            self._give_back(job)
            released.append(job.id)
        return released

    async def release(self, worker_id: str, job_ids: Sequence[int]) -> list[int]:
        """Give jobs back without counting the attempt (its run is recorded, interrupted)."""
        released = []
        for job_id in job_ids:
            job = self.jobs.get(job_id)
            if job is None or job.status != JobStatus.RUNNING or job.worker_id != worker_id:
                continue
            self._add_run(job, worker_id, "interrupted", "given back at shutdown")
            self._give_back(job)
            released.append(job.id)
        return released

    async def ready_backlog(self, cap: int) -> int:
        """Ready jobs, up to ``cap``."""
        await self.ping()
        at = now()
        return min(cap, sum(1 for j in self.jobs.values() if j.status in READY and j.run_at <= at))

    async def oldest_ready(self, queues: Sequence[str]) -> dict[str, float]:
        """Age of each queue's oldest ready job, 0 when none is ready."""
        await self.ping()
        return _oldest(self.jobs.values(), lambda q: q in queues, queues)

    async def oldest_ready_elsewhere(self, queues: Sequence[str]) -> float:
        """Age of the oldest ready job outside these queues, 0 when none is ready."""
        await self.ping()
        return _oldest(self.jobs.values(), lambda q: q not in queues, ["*"])["*"]

    async def existing(self, job_ids: Sequence[int]) -> set[int]:
        """Ids among these with a row."""
        await self.ping()
        return {i for i in job_ids if i in self.jobs}

    async def set_progress(self, job_id: int, percent: int, note: str | None) -> None:
        """Record progress of a running job."""
        job = self.jobs.get(job_id)
        if job is not None and job.status == JobStatus.RUNNING:
            job.progress, job.progress_note = percent, note

    async def register_worker(
        self,
        worker_id: str,
        host: str,
        pid: int,
        version: str,
        state: dict[str, Any] | None = None,
    ) -> None:
        """Remember this instance."""
        self.workers[worker_id] = {
            "host": host,
            "pid": pid,
            "version": version,
            "state": dict(state or {}),
        }

    async def heartbeat_worker(self, worker_id: str, state: dict[str, Any]) -> None:
        """Refresh this instance's state."""
        if worker_id in self.workers:
            self.workers[worker_id]["state"] = state

    async def other_workers(self, worker_id: str, within: float) -> list[dict[str, Any]]:
        """The state of each other instance on this store (all in this process: alive)."""
        return [dict(w["state"]) for i, w in self.workers.items() if i != worker_id]

    async def unregister_worker(self, worker_id: str) -> None:
        """Forget this instance."""
        self.workers.pop(worker_id, None)

    async def listen(self, on_notify: NotifyCallback, on_reconnect: Callable[[], None]) -> None:
        """Register the callback until cancelled."""
        self._listeners.append(on_notify)
        try:
            await asyncio.Event().wait()
        finally:
            self._listeners.remove(on_notify)


def _oldest(
    jobs: Iterable[Job], counted: Callable[[str], bool], keys: Sequence[str]
) -> dict[str, float]:
    """Seconds the oldest ready job of each key has waited (``keys == ["*"]``: all counted
    queues as one); a job waits from run_at, or from its insert when run_at was earlier."""
    at = now()
    ages = dict.fromkeys(keys, 0.0)
    for j in jobs:
        if counted(j.queue) and j.status in READY and j.run_at <= at:
            key = "*" if keys == ["*"] else j.queue
            ages[key] = max(ages[key], (at - max(j.run_at, j.created_at)).total_seconds())
    return ages
