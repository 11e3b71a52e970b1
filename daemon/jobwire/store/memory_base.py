"""The memory store's state and what PostgreSQL would refuse, shared by its role classes."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from jobwire.models import FINISHED, Job, JobSpec, JobStatus, StreamOffset
from jobwire.storable import MAX_KEY_BYTES, json_problem, problem_of
from jobwire.store.base import (
    DirectStart,
    InvalidJobData,
    NotifyCallback,
    QueueState,
    ScheduleRow,
    StoreUnavailable,
)

READY = (JobStatus.PENDING, JobStatus.RETRYING)


def now() -> datetime:
    """The current time, as PostgreSQL's now() gives it (aware, UTC)."""
    return datetime.now(UTC)


def refused(spec: JobSpec) -> str | None:
    """Why PostgreSQL would refuse this spec's row, for the memory store to refuse it too."""
    texts = [spec.handler, spec.queue, spec.source, spec.dedup_key, spec.content_type]
    texts.append(spec.concurrency_key)
    texts += [spec.failed_reason, *spec.headers, *spec.headers.values()]
    for text in texts:
        if text is not None and problem_of(text):
            return f"DataError: text {problem_of(text)}"
    if not -(2**31) <= spec.priority < 2**31:
        return "DataError: priority out of int32 range"
    if spec.timeout is not None and not spec.timeout > 0:
        return "CheckViolationError: jobs_timeout_positive"
    if spec.unique not in (None, "forever", "active"):
        return "CheckViolationError: jobs_unique_mode"
    if spec.dedup_key is not None and len(spec.dedup_key.encode()) > 2 * MAX_KEY_BYTES:
        return "ProgramLimitExceededError: index row size exceeds the maximum"
    payload = spec.payload
    if spec.payload_json is not None:
        try:
            payload = json.loads(spec.payload_json)
        except (ValueError, RecursionError):
            return "DataError: invalid input syntax for type json"
    problem = json_problem(payload, "payload")
    return None if problem is None else f"DataError: jsonb {problem}"


class MemoryState:
    """The tables, in dicts, and the helpers every memory role class writes them through."""

    def __init__(self, default_max_attempts: int = 5) -> None:
        self.jobs: dict[int, Job] = {}
        self.job_runs: list[dict[str, Any]] = []
        self.workers: dict[str, dict[str, Any]] = {}
        self.schedules: dict[str, ScheduleRow] = {}
        self.offsets: dict[tuple[str, str, int], int] = {}
        self.locks: set[str] = set()
        # The outbox's rows (memory_outbox.py), in id order.
        self.outbox: list[Any] = []
        # The relays' leases (as outbox_leases): lease id -> (output, ids, until).
        self.outbox_leases: dict[int, tuple[str, set[int], datetime]] = {}
        self._next_lease = 1
        # Flow controls: paused queues (queue_state) and token buckets (name -> tokens, when).
        self.queue_state: dict[str, QueueState] = {}
        self.buckets: dict[str, tuple[float, float]] = {}
        self._by_key: dict[str, int] = {}
        self._next_id = 1
        self._next_run_id = 1
        self._next_schedule_id = 1
        self._listeners: list[NotifyCallback] = []
        self._default_max_attempts = default_max_attempts
        self.available = True

    async def ping(self) -> None:
        """Raise StoreUnavailable while ``available`` is False (tests simulate outages)."""
        if not self.available:
            raise StoreUnavailable("memory store switched off")

    async def close(self) -> None:
        """Nothing to release."""

    def _fire(self, message: str) -> None:
        for callback in list(self._listeners):
            callback(message)

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
        at = now()
        started = job.started_at or at
        self.job_runs.append(
            {
                "id": self._next_run_id,
                "job_id": job.id,
                "attempt": job.attempts,
                "worker_id": worker_id or "?",
                "status": status,
                "started_at": started,
                "finished_at": at,
                "duration": (at - started).total_seconds() if duration is None else duration,
                "error": error,
                "result": result,
            }
        )
        self._next_run_id += 1

    def _finished(self, job: Job) -> None:
        """A job's status just changed: if it is final, what PostgreSQL's triggers then do
        (migration 0013: a job with a reply address gets its one reply row)."""
        if job.reply is not None and job.status in FINISHED and not job.reply.get("replied"):
            self._write_reply(job)
            job.reply = {**job.reply, "replied": True}

    def _write_reply(self, job: Job) -> None:
        """The outbox row of a finished job's reply (the outbox role writes it)."""
        raise NotImplementedError

    def _release_key(self, job: Job) -> None:
        """A finished "active" job lets its dedup key go, as PostgreSQL's trigger does."""
        if job.unique_mode == "active" and job.dedup_key is not None and job.status in FINISHED:
            if self._by_key.get(job.dedup_key) == job.id:
                del self._by_key[job.dedup_key]
            job.released_key, job.dedup_key = job.dedup_key, None

    def _key_holder(self, key: str) -> int | None:
        """The id of the job holding a dedup key, if one does (after any release it owes)."""
        job_id = self._by_key.get(key)
        if job_id is not None and job_id in self.jobs:
            # Every path that finishes a job would otherwise have to remember to release it.
            self._release_key(self.jobs[job_id])
        return self._by_key.get(key)

    def _insert(
        self,
        specs: Sequence[JobSpec],
        direct: DirectStart | None,
        offsets: Sequence[StreamOffset],
    ) -> list[int | None]:
        """The rows of one batch, all or none; offsets never move backwards."""
        for spec in specs:
            problem = refused(spec)
            if problem is not None:
                raise InvalidJobData(problem)
            if spec.after:
                # Dependencies are kept by PostgreSQL triggers; the memory store has none.
                raise InvalidJobData("after: job dependencies need the PostgreSQL store")
        for o in offsets:
            key = (o.group_id, o.topic, o.partition)
            self.offsets[key] = max(self.offsets.get(key, o.next_offset), o.next_offset)
        ids: list[int | None] = []
        at = now()
        flags = list(direct.flags) if direct else [False] * len(specs)
        for s, run_now in zip(specs, flags, strict=True):
            if s.dedup_key is not None and self._key_holder(s.dedup_key) is not None:
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
                payload=s.payload if s.payload_json is None else json.loads(s.payload_json),
                run_at=at + timedelta(seconds=max(s.delay, 0.0)),
                created_at=at,
                body=s.body,
                content_type=s.content_type,
                headers=dict(s.headers),
                source=s.source,
                dedup_key=s.dedup_key,
                last_error=s.failed_reason,
                parent_id=s.parent_id,
                finished_at=at if s.failed_reason else None,
                timeout=s.timeout,
                concurrency_key=s.concurrency_key,
                unique_mode=s.unique or "forever",
                reply=None if s.reply is None else dict(s.reply),
            )
            if run_now and direct and not s.failed_reason:
                job.status, job.attempts, job.worker_id = JobStatus.RUNNING, 1, direct.worker_id
                job.lease_until = at + timedelta(seconds=direct.lease)
                job.started_at = at
            self._next_id += 1
            self.jobs[job.id] = job
            self._finished(job)  # stored failed: its reply all the same
            if s.dedup_key is not None:
                self._by_key[s.dedup_key] = job.id
            ids.append(job.id)
        if any(i is not None for i in ids):
            self._fire("jobs")
        return ids
