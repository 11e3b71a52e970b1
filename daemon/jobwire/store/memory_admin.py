"""The AdminStore and ScheduleStore roles in memory."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from jobwire.models import FINISHED, LIVE, Job, JobSpec, JobStatus
from jobwire.store.base import (
    UNROUTABLE_HANDLER,
    AuditEntry,
    AuditRow,
    JobFilter,
    PurgeCursor,
    ScheduleRow,
)
from jobwire.store.memory_base import READY, MemoryState, now
from jobwire.store.memory_dashboard import MemoryDashboard

# Statuses counted as PostgreSQL counts them (through a partial index); not succeeded.
_COUNTED = frozenset({"failed", "cancelled", "pending", "retrying", "running"})


def _poison(job: Job) -> bool:
    """Only fails again: unroutable, or stored failed before it ever ran."""
    return job.handler == UNROUTABLE_HANDLER or (
        job.status == JobStatus.FAILED and job.attempts == 0
    )


def _selected(job: Job, where: JobFilter) -> bool:
    return (
        (where.status is None or job.status == where.status)
        and (where.queue is None or job.queue == where.queue)
        and (where.handler is None or job.handler == where.handler)
        and (where.source is None or job.source == where.source)
        and (where.created_before is None or job.created_at < where.created_before)
        and (where.created_after is None or job.created_at >= where.created_after)
        and (where.ids is None or job.id in where.ids)
        and not (where.exclude_poison and _poison(job))
    )


class MemoryAdmin(MemoryDashboard):
    """What operators and applications run on the memory store."""

    def __init__(self, default_max_attempts: int = 5) -> None:
        super().__init__(default_max_attempts)
        self.audit: list[AuditRow] = []

    async def ids_by_dedup_key(self, keys: Sequence[str]) -> dict[str, int]:
        """Existing job ids for the given dedup keys."""
        held = {k: self._key_holder(k) for k in keys}
        return {k: v for k, v in held.items() if v is not None}

    async def cancel(self, job_id: int) -> str | None:
        """Cancel a waiting job, flag a running one."""
        job = self.jobs.get(job_id)
        if job is None:
            return None
        if job.status in READY:
            job.status = JobStatus.CANCELLED
            job.finished_at = now()
            self._finished(job)
        elif job.status == JobStatus.RUNNING:
            job.cancel_requested = True
            self._fire(f"cancel:{job_id}")
        return str(job.status)

    async def retry(self, job_ids: Sequence[int] = (), status: str | None = None) -> list[int]:
        """Requeue failed or cancelled jobs with a fresh allowance of attempts."""
        out = []
        for job in self.jobs.values():
            if (job.id in job_ids or job.status == status) and job.status in (
                JobStatus.FAILED,
                JobStatus.CANCELLED,
            ):
                job.status = JobStatus.PENDING
                job.max_attempts = job.attempts + self._default_max_attempts
                job.run_at = now()
                job.finished_at = job.result = None
                job.cancel_requested = False
                out.append(job.id)
        if out:
            self._fire("jobs")
        return out

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
        *,
        handler: str | None = None,
        source: str | None = None,
    ) -> list[Job]:
        """Newest first; ``before_id`` pages on."""
        found = [
            j
            for j in self._matching(status, queue, handler, source)
            if before_id is None or j.id < before_id
        ]
        return [dataclasses.replace(j) for j in sorted(found, key=lambda j: -j.id)[:limit]]

    def _matching(
        self, status: str | None, queue: str | None, handler: str | None, source: str | None
    ) -> list[Job]:
        return [
            j
            for j in self.jobs.values()
            if (status is None or j.status == status)
            and (queue is None or j.queue == queue)
            and (handler is None or j.handler == handler)
            and (source is None or j.source == source)
        ]

    async def count_jobs(
        self,
        status: str,
        queue: str | None = None,
        handler: str | None = None,
        source: str | None = None,
        *,
        cap: int,
    ) -> int | None:
        """Matching jobs up to ``cap``; None for succeeded, as PostgreSQL answers."""
        if status not in _COUNTED:
            return None
        return min(cap, len(self._matching(status, queue, handler, source)))

    async def failed_since(self, seconds: float, cap: int) -> dict[str, int]:
        """Recently failed jobs by queue, up to ``cap`` in all."""
        cutoff = now() - timedelta(seconds=seconds)
        out: dict[str, int] = {}
        recent = [
            j
            for j in self.jobs.values()
            if j.status == JobStatus.FAILED and j.finished_at and j.finished_at > cutoff
        ]
        for job in recent[:cap]:
            out[job.queue] = out.get(job.queue, 0) + 1
        return out

    async def record_audit(self, entry: AuditEntry) -> int:
        """Append one audit row."""
        row = AuditRow(len(self.audit) + 1, now(), **dataclasses.asdict(entry))
        self.audit.append(row)
        return row.id

    async def list_audit(self, limit: int = 50, before_id: int | None = None) -> list[AuditRow]:
        """Audit rows, newest first."""
        rows = [r for r in reversed(self.audit) if before_id is None or r.id < before_id]
        return rows[:limit]

    async def runs(self, job_id: int) -> list[dict[str, Any]]:
        """Attempts of one job, oldest first."""
        found = [dict(r) for r in self.job_runs if r["job_id"] == job_id]
        return sorted(found, key=lambda r: (r["attempt"], r["id"]))

    async def stats(self, finished: bool = True) -> dict[str, dict[str, int]]:
        """Counts by queue and status (live jobs only unless ``finished``)."""
        out: dict[str, dict[str, int]] = {}
        for job in self.jobs.values():
            if not finished and job.status not in LIVE:
                continue
            by_status = out.setdefault(job.queue, {})
            by_status[str(job.status)] = by_status.get(str(job.status), 0) + 1
        return out

    async def list_workers(self) -> list[dict[str, Any]]:
        """Registered instances."""
        return [{"id": k, "heartbeat_age": 0.0, **v} for k, v in self.workers.items()]

    # -- bulk actions: select a frozen set of ids, then act on it ---------------------

    async def select_ids(
        self, where: JobFilter, limit: int, before_id: int | None = None
    ) -> list[int]:
        """Matching ids, newest first; ``before_id`` pages on."""
        found = sorted(
            (
                j.id
                for j in self.jobs.values()
                if (before_id is None or j.id < before_id) and _selected(j, where)
            ),
            reverse=True,
        )
        return found[:limit]

    async def jobs_by_ids(self, job_ids: Sequence[int]) -> list[Job]:
        """These jobs, newest first."""
        found = sorted({i for i in job_ids if i in self.jobs}, reverse=True)
        return [dataclasses.replace(self.jobs[i]) for i in found]

    async def retry_ids(self, job_ids: Sequence[int], include_poison: bool = False) -> list[int]:
        """Requeue those still failed or cancelled (poison only if asked)."""
        eligible = [
            i
            for i in dict.fromkeys(job_ids)
            if i in self.jobs
            and self.jobs[i].status in (JobStatus.FAILED, JobStatus.CANCELLED)
            and (include_poison or not _poison(self.jobs[i]))
        ]
        return await self.retry(eligible) if eligible else []

    async def cancel_ids(self, job_ids: Sequence[int]) -> dict[int, str]:
        """Cancel those still waiting, flag running ones."""
        out: dict[int, str] = {}
        for i in dict.fromkeys(job_ids):
            job = self.jobs.get(i)
            if job is not None and job.status in LIVE:
                status = await self.cancel(i)
                assert status is not None
                out[i] = status
        return out

    async def delete_ids(self, job_ids: Sequence[int]) -> list[int]:
        """Delete those that are finished, with their runs; children lose their parent."""
        gone = [
            i for i in dict.fromkeys(job_ids) if i in self.jobs and self.jobs[i].status in FINISHED
        ]
        for i in gone:
            job = self.jobs.pop(i)
            if job.dedup_key is not None:
                self._by_key.pop(job.dedup_key, None)
        drop = set(gone)
        self.job_runs = [r for r in self.job_runs if r["job_id"] not in drop]
        for job in self.jobs.values():
            if job.parent_id in drop:
                job.parent_id = None  # ON DELETE SET NULL
        return gone


class MemoryLock:
    """A leadership lock of the memory store: held until released."""

    def __init__(self, locks: set[str], key: str) -> None:
        self._locks = locks
        self._key = key

    async def still_held(self) -> bool:
        """True until released."""
        return self._key in self._locks

    async def release(self) -> None:
        """Give the lock up."""
        self._locks.discard(self._key)


_TIMING = ("cron", "interval_s", "timezone", "start_at")
# What a run-time schedule's values hold (the columns an operator sets, and its next tick).
_COLUMNS = (
    "name",
    "cron",
    "interval_s",
    "timezone",
    "handler",
    "payload",
    "queue",
    "priority",
    "max_attempts",
    "enabled",
    "start_at",
    "end_at",
    "max_runs",
    "catch_up",
    "next_run_at",
)


class MemorySchedules(MemoryState):
    """What the scheduler and the schedules commands run on the memory store."""

    async def sync_schedules(self, rows: Sequence[dict[str, Any]]) -> None:
        """Write the configured schedules (config wins); disable those no longer listed."""
        await self.ping()
        for r in rows:
            old = self.schedules.get(r["name"])
            values = {k: r[k] for k in r if k != "next_run_at"}
            # A schedule whose timing did not change keeps its next tick (missed ticks stay due).
            keep = old is not None and old.next_run_at is not None
            keep = keep and all(getattr(old, k) == r[k] for k in _TIMING)
            next_run_at = old.next_run_at if keep and old else r["next_run_at"]
            if old is None:
                self.schedules[r["name"]] = ScheduleRow(
                    id=self._next_schedule_id,
                    run_count=0,
                    last_run_at=None,
                    next_run_at=next_run_at,
                    **values,
                )
                self._next_schedule_id += 1
            else:
                self.schedules[r["name"]] = dataclasses.replace(
                    old, next_run_at=next_run_at, origin="config", **values
                )
        names = {r["name"] for r in rows}
        for name, row in self.schedules.items():
            if row.enabled and row.origin == "config" and name not in names:
                self.schedules[name] = dataclasses.replace(row, enabled=False)

    async def due_schedules(self) -> list[ScheduleRow]:
        """Enabled schedules whose next tick has come, the most overdue first."""
        await self.ping()
        at = now()
        due = [
            s
            for s in self.schedules.values()
            if s.enabled and s.next_run_at is not None and s.next_run_at <= at
        ]
        return sorted(due, key=lambda s: s.next_run_at or at)

    async def fire_schedule(
        self,
        name: str,
        specs: Sequence[JobSpec],
        last_run_at: datetime | None,
        next_run_at: datetime | None,
        expected_next: datetime,
    ) -> int | None:
        """Insert tick jobs and move the schedule on; None if it had moved on already."""
        await self.ping()
        row = self.schedules.get(name)
        if row is None or not row.enabled or row.next_run_at != expected_next:
            return None  # moved on, or paused since the leader read it
        made = len(await self.enqueue_scheduled(specs))
        self.schedules[name] = dataclasses.replace(
            row,
            last_run_at=last_run_at or row.last_run_at,
            next_run_at=next_run_at,
            run_count=row.run_count + made,
            enabled=row.enabled and (row.max_runs is None or row.run_count + made < row.max_runs),
        )
        return made

    async def list_schedules(self) -> list[ScheduleRow]:
        """Every schedule, by name."""
        return [self.schedules[name] for name in sorted(self.schedules)]

    async def get_schedule(self, name: str) -> ScheduleRow | None:
        """One schedule by name."""
        return self.schedules.get(name)

    async def set_schedule_enabled(self, name: str, enabled: bool) -> bool:
        """Pause or resume a schedule; False if there is none by that name."""
        row = self.schedules.get(name)
        if row is None:
            return False
        self.schedules[name] = dataclasses.replace(row, enabled=enabled)
        return True

    async def enqueue_scheduled(self, specs: Sequence[JobSpec]) -> list[int]:
        """Insert jobs linked to their schedule (``spec.schedule_id``); the new ids."""
        await self.ping()
        ids = self._insert(specs, None, ())
        for job_id, spec in zip(ids, specs, strict=True):
            if job_id is not None:
                self.jobs[job_id].schedule_id = spec.schedule_id
        return [i for i in ids if i is not None]

    async def add_schedule(self, values: Mapping[str, Any]) -> ScheduleRow | None:
        """Add a run-time schedule (origin 'api'); None when the name is taken."""
        await self.ping()
        if values["name"] in self.schedules:
            return None
        row = ScheduleRow(
            id=self._next_schedule_id,
            run_count=0,
            last_run_at=None,
            origin="api",
            **{k: values[k] for k in _COLUMNS},
        )
        self._next_schedule_id += 1
        self.schedules[row.name] = row
        return row

    async def update_schedule(self, name: str, values: Mapping[str, Any]) -> ScheduleRow | None:
        """Change a run-time schedule; None when there is no run-time schedule by that name."""
        await self.ping()
        old = self.schedules.get(name)
        if old is None or old.origin != "api":
            return None
        keep = old.next_run_at is not None
        keep = keep and all(getattr(old, k) == values[k] for k in (*_TIMING, "end_at"))
        changed = {k: values[k] for k in _COLUMNS if k not in ("name", "next_run_at")}
        next_run_at = old.next_run_at if keep else values["next_run_at"]
        row = dataclasses.replace(old, next_run_at=next_run_at, **changed)
        self.schedules[name] = row
        return row

    async def remove_schedule(self, name: str) -> bool:
        """Delete a run-time schedule (its jobs stay); False when there is none by that name."""
        await self.ping()
        row = self.schedules.get(name)
        if row is None or row.origin != "api":
            return False
        del self.schedules[name]
        return True

    async def last_schedule_jobs(self) -> dict[int, tuple[int, str]]:
        """Each schedule's newest job: ``{schedule id: (job id, status)}``."""
        await self.ping()
        out: dict[int, tuple[int, str]] = {}
        for job in self.jobs.values():
            sid = job.schedule_id
            if sid is not None and (sid not in out or out[sid][0] < job.id):
                out[sid] = (job.id, str(job.status))
        return out

    async def try_leadership(
        self, key: str, *, idle_timeout: float | None = None
    ) -> MemoryLock | None:
        """The lock named ``key`` unless it is held (in memory a holder cannot freeze apart
        from the store, so ``idle_timeout`` has nothing to do)."""
        await self.ping()
        if key in self.locks:
            return None
        self.locks.add(key)
        return MemoryLock(self.locks, key)

    async def maintain_tables(
        self, tables: Sequence[str] | None, *, vacuum: bool, analyze: bool, timeout: float
    ) -> list[str]:
        """Nothing to vacuum in memory: the tables named (or "jobs") as if done."""
        return list(tables) if tables is not None else ["jobs"]

    async def purge_finished(
        self, older_than: float, batch: int, cursor: PurgeCursor | None = None
    ) -> int:
        """Delete one batch of old finished jobs, oldest first (from ``cursor`` on, which it
        moves); their runs go with them."""
        cutoff = now() - timedelta(seconds=older_than)
        since = None if cursor is None else cursor.finished_at
        old = sorted(
            (
                j
                for j in self.jobs.values()
                if j.status in FINISHED
                and j.finished_at is not None
                and j.finished_at < cutoff
                and (since is None or j.finished_at >= since)
            ),
            key=lambda j: j.finished_at or cutoff,
        )[:batch]
        if cursor is not None and old:
            cursor.finished_at = old[-1].finished_at
        gone = {j.id for j in old}
        for job in old:
            del self.jobs[job.id]
            if job.dedup_key is not None:
                self._by_key.pop(job.dedup_key, None)
        self.job_runs = [r for r in self.job_runs if r["job_id"] not in gone]
        for job in self.jobs.values():
            if job.parent_id in gone:
                job.parent_id = None  # ON DELETE SET NULL
        return len(gone)
