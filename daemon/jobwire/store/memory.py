"""JobStore in memory: the same semantics as PostgreSQL, for fast unit tests of the core."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from jobwire.models import FINISHED, LIVE, Job, JobSpec, JobStatus, Outcome, StreamOffset
from jobwire.storable import MAX_KEY_BYTES, problem_of
from jobwire.store.base import (
    ClaimRequest,
    DirectStart,
    InvalidJobData,
    NotifyCallback,
    Renewal,
    StoreUnavailable,
)

_READY = (JobStatus.PENDING, JobStatus.RETRYING)


def _now() -> datetime:
    return datetime.now(UTC)


def _json_problem(value: Any, depth: int = 0) -> str | None:
    """What jsonb would refuse in a decoded JSON value (strings it cannot hold, NaN)."""
    if depth > 900:
        return "JSON too deep"
    if isinstance(value, str):
        return problem_of(value)
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return "NaN or Infinity in JSON"
    if isinstance(value, dict):
        for key, item in value.items():
            problem = problem_of(key) or _json_problem(item, depth + 1)
            if problem:
                return problem
    if isinstance(value, list):
        for item in value:
            problem = _json_problem(item, depth + 1)
            if problem:
                return problem
    return None


def _refused(spec: JobSpec) -> str | None:
    """Why PostgreSQL would refuse this spec's row, for the memory store to refuse it too."""
    texts = [spec.handler, spec.queue, spec.source, spec.dedup_key, spec.content_type]
    texts += [spec.failed_reason, *spec.headers, *spec.headers.values()]
    for text in texts:
        if text is not None and problem_of(text):
            return f"DataError: text {problem_of(text)}"
    if not -(2**31) <= spec.priority < 2**31:
        return "DataError: priority out of int32 range"
    if spec.dedup_key is not None and len(spec.dedup_key.encode()) > 2 * MAX_KEY_BYTES:
        return "ProgramLimitExceededError: index row size exceeds the maximum"
    payload = spec.payload
    if spec.payload_json is not None:
        try:
            payload = json.loads(spec.payload_json)
        except (ValueError, RecursionError):
            return "DataError: invalid input syntax for type json"
    try:
        problem = _json_problem(payload)
    except RecursionError:
        problem = "JSON too deep"
    return None if problem is None else f"DataError: jsonb {problem}"


class MemoryStore:
    """A JobStore held in dicts; one process, no durability."""

    def __init__(self, default_max_attempts: int = 5) -> None:
        self.jobs: dict[int, Job] = {}
        self.job_runs: list[dict[str, Any]] = []
        self.workers: dict[str, dict[str, Any]] = {}
        self._by_key: dict[str, int] = {}
        self.offsets: dict[tuple[str, str, int], int] = {}
        self._next_id = 1
        self._listeners: list[NotifyCallback] = []
        self._default_max_attempts = default_max_attempts
        self.available = True

    def _add_run(
        self,
        job: Job,
        worker_id: str | None,
        status: str,
        error: str | None,
        duration: float | None = None,
        result: Any = None,
    ) -> None:
        """One job_runs row, written when the attempt ends (as the PostgreSQL store does)."""
        now = _now()
        started = job.started_at or now
        self.job_runs.append(
            {
                "job_id": job.id,
                "attempt": job.attempts,
                "worker_id": worker_id or "?",
                "status": status,
                "started_at": started,
                "finished_at": now,
                "duration": (now - started).total_seconds() if duration is None else duration,
                "error": error,
                "result": result,
            }
        )

    async def ping(self) -> None:
        """Raise StoreUnavailable while ``available`` is False (tests simulate outages)."""
        if not self.available:
            raise StoreUnavailable("memory store switched off")

    async def enqueue_many(
        self,
        specs: Sequence[JobSpec],
        direct: DirectStart | None = None,
        offsets: Sequence[StreamOffset] = (),
    ) -> list[int | None]:
        """Insert jobs, skipping duplicate dedup keys; offsets never move backwards.

        Refuses, as PostgreSQL does, a whole batch with one value it cannot hold.
        """
        await self.ping()
        for spec in specs:
            problem = _refused(spec)
            if problem is not None:
                raise InvalidJobData(problem)
        for o in offsets:
            key = (o.group_id, o.topic, o.partition)
            self.offsets[key] = max(self.offsets.get(key, o.next_offset), o.next_offset)
        ids: list[int | None] = []
        now = _now()
        flags = list(direct.flags) if direct else [False] * len(specs)
        for s, run_now in zip(specs, flags, strict=True):
            if s.dedup_key is not None and s.dedup_key in self._by_key:
                ids.append(None)
                continue
            job = Job(
                id=self._next_id,
                handler=s.handler,
                queue=s.queue,
                status=JobStatus.FAILED if s.failed_reason else JobStatus.PENDING,
                priority=s.priority,
                attempts=0,
                max_attempts=s.max_attempts or self._default_max_attempts,
                payload=s.payload,
                run_at=now + timedelta(seconds=s.delay),
                created_at=now,
                body=s.body,
                content_type=s.content_type,
                headers=dict(s.headers),
                source=s.source,
                dedup_key=s.dedup_key,
                last_error=s.failed_reason,
                parent_id=s.parent_id,
                finished_at=now if s.failed_reason else None,
            )
            if run_now and direct and not s.failed_reason:
                job.status, job.attempts, job.worker_id = JobStatus.RUNNING, 1, direct.worker_id
                job.lease_until = now + timedelta(seconds=direct.lease)
                job.started_at = now
            self._next_id += 1
            self.jobs[job.id] = job
            if s.dedup_key is not None:
                self._by_key[s.dedup_key] = job.id
            ids.append(job.id)
        if any(i is not None for i in ids):
            self._fire("jobs")
        return ids

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
        """Claim ready jobs, priority first then FIFO, within the per-queue limits."""
        now = _now()
        candidates: list[Job] = []
        for queue, n in request.per_queue.items():
            ready = sorted(
                (
                    j
                    for j in self.jobs.values()
                    if j.queue == queue and j.status in _READY and j.run_at <= now
                ),
                key=lambda j: (-j.priority, j.id),
            )
            candidates.extend(ready[:n])
        chosen = sorted(candidates, key=lambda j: (-j.priority, j.id))[: request.limit]
        for job in chosen:
            job.status = JobStatus.RUNNING
            job.attempts += 1
            job.worker_id = request.worker_id
            job.lease_until = now + timedelta(seconds=request.lease)
            job.started_at = now
            job.progress = job.progress_note = None
        return [dataclasses.replace(j) for j in chosen]

    async def complete_many(self, worker_id: str, outcomes: Sequence[Outcome]) -> int:
        """Apply outcomes still held by this worker."""
        now = _now()
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
                job.run_at = now + timedelta(seconds=o.retry_in or 0.0)
            job.finished_at = now if o.status in FINISHED else None
            if o.status == JobStatus.SUCCEEDED:
                job.progress = 100
            self._add_run(job, worker_id, str(o.status), o.error, o.duration, job.result)
            job.lease_until = job.worker_id = None
        return count

    async def renew_leases(self, worker_id: str, lease: float, job_ids: Sequence[int]) -> Renewal:
        """Extend the leases of these jobs still held by this worker; report cancel requests."""
        until = _now() + timedelta(seconds=lease)
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
        """Take back jobs whose lease ran out."""
        now = _now()
        lost = []
        for job in self.jobs.values():
            if job.status == JobStatus.RUNNING and job.lease_until and job.lease_until < now:
                if job.cancel_requested:
                    job.status = JobStatus.CANCELLED
                elif job.attempts >= job.max_attempts:
                    job.status = JobStatus.FAILED
                else:
                    job.status = JobStatus.RETRYING
                job.last_error = (
                    f"lease expired: worker {job.worker_id} stopped heartbeating "
                    f"during attempt {job.attempts}"
                )
                job.finished_at = now if job.status in FINISHED else None
                job.run_at = now
                self._add_run(job, job.worker_id, "lost", "lease expired")
                job.lease_until = job.worker_id = None
                lost.append(job.id)
        return lost

    async def release_unknown(self, worker_id: str, known_ids: Sequence[int]) -> list[int]:
        """Give back running jobs of this worker other than ``known_ids`` (no run counted)."""
        await self.ping()
        known = set(known_ids)
        released = []
        for job in self.jobs.values():
            if job.status != JobStatus.RUNNING or job.worker_id != worker_id or job.id in known:
                continue
            job.status = JobStatus.CANCELLED if job.cancel_requested else JobStatus.PENDING
            job.finished_at = _now() if job.cancel_requested else None
            job.attempts -= 1
            job.lease_until = job.worker_id = job.started_at = None
            job.run_at = _now()
            released.append(job.id)
        return released

    async def release(self, worker_id: str, job_ids: Sequence[int]) -> list[int]:
        """Give jobs back without counting the attempt."""
        now = _now()
        released = []
        for job_id in job_ids:
            job = self.jobs.get(job_id)
            if job is None or job.status != JobStatus.RUNNING or job.worker_id != worker_id:
                continue
            self._add_run(job, worker_id, "interrupted", "given back at shutdown")
            job.status = JobStatus.CANCELLED if job.cancel_requested else JobStatus.PENDING
            job.finished_at = now if job.cancel_requested else None
            job.attempts -= 1
            job.lease_until = job.worker_id = job.started_at = None
            job.run_at = now
            released.append(job.id)
        return released

    async def cancel(self, job_id: int) -> str | None:
        """Cancel a waiting job, flag a running one."""
        job = self.jobs.get(job_id)
        if job is None:
            return None
        if job.status in _READY:
            job.status = JobStatus.CANCELLED
            job.finished_at = _now()
        elif job.status == JobStatus.RUNNING:
            job.cancel_requested = True
            self._fire(f"cancel:{job_id}")
        return str(job.status)

    async def retry(self, job_ids: Sequence[int] = (), status: str | None = None) -> list[int]:
        """Requeue failed or cancelled jobs."""
        out = []
        for job in self.jobs.values():
            if (job.id in job_ids or job.status == status) and job.status in (
                JobStatus.FAILED,
                JobStatus.CANCELLED,
            ):
                job.status = JobStatus.PENDING
                job.max_attempts = job.attempts + self._default_max_attempts
                job.run_at = _now()
                job.finished_at = job.result = None
                job.cancel_requested = False
                out.append(job.id)
        if out:
            self._fire("jobs")
        return out

    async def ready_backlog(self, cap: int) -> int:
        """Ready jobs, up to ``cap``."""
        await self.ping()
        now = _now()
        return min(
            cap, sum(1 for j in self.jobs.values() if j.status in _READY and j.run_at <= now)
        )

    async def existing(self, job_ids: Sequence[int]) -> set[int]:
        """Ids among these with a row."""
        await self.ping()
        return {i for i in job_ids if i in self.jobs}

    async def get(self, job_id: int) -> Job | None:
        """One job."""
        job = self.jobs.get(job_id)
        return None if job is None else dataclasses.replace(job)

    async def list_jobs(
        self,
        status: str | None = None,
        queue: str | None = None,
        limit: int = 50,
        before_id: int | None = None,
    ) -> list[Job]:
        """Newest first; ``before_id`` pages on."""
        found = [
            j
            for j in self.jobs.values()
            if (status is None or j.status == status)
            and (queue is None or j.queue == queue)
            and (before_id is None or j.id < before_id)
        ]
        return [dataclasses.replace(j) for j in sorted(found, key=lambda j: -j.id)[:limit]]

    async def runs(self, job_id: int) -> list[dict[str, Any]]:
        """Attempts of one job."""
        return [dict(r) for r in self.job_runs if r["job_id"] == job_id]

    async def stats(self, finished: bool = True) -> dict[str, dict[str, int]]:
        """Counts by queue and status (live jobs only unless ``finished``)."""
        out: dict[str, dict[str, int]] = {}
        for job in self.jobs.values():
            if not finished and job.status not in LIVE:
                continue
            by_status = out.setdefault(job.queue, {})
            by_status[str(job.status)] = by_status.get(str(job.status), 0) + 1
        return out

    async def set_progress(self, job_id: int, percent: int, note: str | None) -> None:
        """Record progress of a running job."""
        job = self.jobs.get(job_id)
        if job is not None and job.status == JobStatus.RUNNING:
            job.progress, job.progress_note = percent, note

    async def register_worker(self, worker_id: str, host: str, pid: int, version: str) -> None:
        """Remember this instance."""
        self.workers[worker_id] = {"host": host, "pid": pid, "version": version, "state": {}}

    async def heartbeat_worker(self, worker_id: str, state: dict[str, Any]) -> None:
        """Refresh this instance's state."""
        if worker_id in self.workers:
            self.workers[worker_id]["state"] = state

    async def list_workers(self) -> list[dict[str, Any]]:
        """Registered instances."""
        return [{"id": k, "heartbeat_age": 0.0, **v} for k, v in self.workers.items()]

    async def unregister_worker(self, worker_id: str) -> None:
        """Forget this instance."""
        self.workers.pop(worker_id, None)

    async def notify(self, message: str) -> None:
        """Call every listener."""
        self._fire(message)

    def _fire(self, message: str) -> None:
        for callback in list(self._listeners):
            callback(message)

    async def listen(self, on_notify: NotifyCallback, on_reconnect: Callable[[], None]) -> None:
        """Register the callback until cancelled."""
        self._listeners.append(on_notify)
        try:
            await asyncio.Event().wait()
        finally:
            self._listeners.remove(on_notify)

    async def close(self) -> None:
        """Nothing to release."""
