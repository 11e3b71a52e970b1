"""The dashboard's part of the AdminStore role in memory (computed from the jobs as asked:
the memory store holds few, and has no rollup table)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from jobwire.models import FINISHED, Job, JobStatus
from jobwire.store.base import FailureGroup, ThroughputRow
from jobwire.store.fingerprint import error_fingerprint
from jobwire.store.memory_base import MemoryState


class MemoryDashboard(MemoryState):
    """Failure groups, frozen bulk actions, throughput and live changes, in memory."""

    def _failed(self) -> list[Job]:
        return [j for j in self.jobs.values() if j.status == JobStatus.FAILED]

    async def failure_groups(self, limit: int) -> list[FailureGroup]:
        """Failed jobs by fingerprint, the biggest group first."""
        groups: dict[str, list[Job]] = {}
        for job in self._failed():
            groups.setdefault(error_fingerprint(job.last_error), []).append(job)
        out = []
        for fingerprint, jobs in groups.items():
            finished = [j.finished_at for j in jobs if j.finished_at is not None]
            out.append(
                FailureGroup(
                    fingerprint=fingerprint,
                    count=len(jobs),
                    first_seen=min(finished, default=None),
                    last_seen=max(finished, default=None),
                    handlers=sorted({j.handler for j in jobs}),
                    queues=sorted({j.queue for j in jobs}),
                    sample_id=max(j.id for j in jobs),
                )
            )
        out.sort(key=lambda g: (-g.count, -g.sample_id))
        return out[:limit]

    async def failed_ids(
        self, fingerprint: str, limit: int, before_id: int | None = None
    ) -> list[int]:
        """One group's ids, newest first."""
        ids = [
            j.id
            for j in self._failed()
            if error_fingerprint(j.last_error) == fingerprint
            and (before_id is None or j.id < before_id)
        ]
        return sorted(ids, reverse=True)[:limit]

    async def finished_before(self, job_ids: Sequence[int], at: datetime) -> list[int]:
        """Those not finished again since ``at``."""
        jobs = [self.jobs.get(i) for i in job_ids]
        return [j.id for j in jobs if j is not None and j.finished_at and j.finished_at <= at]

    async def throughput(self, since: datetime) -> list[ThroughputRow]:
        """Finished jobs per minute, queue and status."""
        counts: dict[tuple[datetime, str, str], int] = {}
        for job in self.jobs.values():
            if job.status in FINISHED and job.finished_at and job.finished_at >= since:
                minute = job.finished_at.replace(second=0, microsecond=0)
                key = (minute, job.queue, str(job.status))
                counts[key] = counts.get(key, 0) + 1
        return sorted((m, q, s, n) for (m, q, s), n in counts.items())

    async def rollup_throughput(self) -> int:
        """Nothing to roll up: ``throughput`` counts the jobs themselves."""
        return 0

    async def change_marker(self) -> int:
        """A number that moves when jobs change (a digest of every job's state)."""
        await self.ping()
        return hash(tuple((j.id, str(j.status), j.attempts) for j in self.jobs.values()))

    async def backfill_fingerprints(self, batch: int) -> int:
        """Nothing to backfill: fingerprints are computed as asked."""
        return 0
