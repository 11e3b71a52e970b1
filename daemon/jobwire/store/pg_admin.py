"""The AdminStore role on PostgreSQL: look up, list, count, cancel and retry jobs."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from jobwire.models import Job
from jobwire.store.base import AuditEntry, AuditRow, JobFilter
from jobwire.store.pg_base import guard, job_of, known_columns
from jobwire.store.pg_dashboard import PgDashboard

# Statuses whose listing reads a partial index (see list_jobs in queries.sql).
LIST_QUERY_BY_STATUS = {
    "failed": "list_failed_jobs",
    "cancelled": "list_failed_jobs",
    "pending": "list_ready_jobs",
    "retrying": "list_ready_jobs",
    "running": "list_running_jobs",
}
# The same with the handler and source filters too (the dashboard's), and their counts.
FIND_QUERY_BY_STATUS = {
    status: query.replace("list_", "find_") for status, query in LIST_QUERY_BY_STATUS.items()
}
# The bulk actions' id selection, through the same indexes.
SELECT_QUERY_BY_STATUS = {
    status: query.replace("list_", "select_").replace("_jobs", "_job_ids")
    for status, query in LIST_QUERY_BY_STATUS.items()
}
COUNT_QUERY_BY_STATUS = {
    status: query.replace("list_", "count_") for status, query in LIST_QUERY_BY_STATUS.items()
}

# A later release's audit column is left out (see pg_base.known_columns).
_AUDIT_FIELDS = frozenset(f.name for f in dataclasses.fields(AuditRow))


def retry_statement(
    job_ids: list[int], status: str | None, attempts: int
) -> tuple[str, tuple[Any, ...]]:
    """The retry statement and its arguments: by ids alone, or ids and a whole status."""
    if status is None:
        return "retry_job_ids", (job_ids, attempts, True)  # poison too, as retry_jobs
    return "retry_jobs", (job_ids, status, attempts)


class PgAdmin(PgDashboard):
    """What operators and applications run on PostgreSQL (enqueueing is PgJobs')."""

    async def ids_by_dedup_key(self, keys: Sequence[str]) -> dict[str, int]:
        """Existing job ids for the given dedup keys."""
        async with guard("lookup"):
            rows = await self._pool.fetch(self._q["ids_by_dedup_key"], list(keys))
        return {r["dedup_key"]: r["id"] for r in rows}

    async def cancel(self, job_id: int) -> str | None:
        """Cancel or flag a job and tell the worker running it."""
        async with guard("cancel"):
            async with self._pool.acquire() as conn, conn.transaction():
                status = await conn.fetchval(self._q["cancel_job"], job_id)
                if status == "running":
                    await conn.execute(self._q["notify"], self._channel, f"cancel:{job_id}")
        return None if status is None else str(status)

    async def retry(self, job_ids: Sequence[int] = (), status: str | None = None) -> list[int]:
        """Requeue failed or cancelled jobs and wake the pools."""
        query, args = retry_statement(list(job_ids), status, self._default_max_attempts)
        async with guard("retry"):
            async with self._pool.acquire() as conn, conn.transaction():
                rows = await conn.fetch(self._q[query], *args)
                if rows:
                    await conn.execute(self._q["notify"], self._channel, "jobs")
        return [r["id"] for r in rows]

    async def get(self, job_id: int) -> Job | None:
        """One job by id."""
        async with guard("get"):
            row = await self._pool.fetchrow(self._q["get_job"], job_id)
        return None if row is None else job_of(row)

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
        """Newest first; ``before_id`` pages on (keyset paging, no OFFSET)."""
        args: tuple[object, ...] = (status, queue, limit, before_id)
        if handler is None and source is None:
            query = LIST_QUERY_BY_STATUS.get(status or "", "list_jobs")
        else:
            query = FIND_QUERY_BY_STATUS.get(status or "", "find_jobs")
            args += (handler, source)
        async with guard("list"):
            rows = await self._pool.fetch(self._q[query], *args)
        return [job_of(r) for r in rows]

    async def count_jobs(
        self,
        status: str,
        queue: str | None = None,
        handler: str | None = None,
        source: str | None = None,
        *,
        cap: int,
    ) -> int | None:
        """Matching jobs up to ``cap``, through the status's partial index; None otherwise."""
        query = COUNT_QUERY_BY_STATUS.get(status)
        if query is None:
            return None
        async with guard("count"):
            found = await self._pool.fetchval(self._q[query], status, queue, handler, source, cap)
        return int(found)

    async def failed_since(self, seconds: float, cap: int) -> dict[str, int]:
        """Recently failed jobs by queue, through jobs_failed."""
        async with guard("count failed"):
            rows = await self._pool.fetch(self._q["failed_since"], float(seconds), cap)
        return {r["queue"]: r["n"] for r in rows}

    async def record_audit(self, entry: AuditEntry) -> int:
        """Insert one audit row."""
        async with guard("audit"):
            audit_id = await self._pool.fetchval(
                self._q["insert_audit"],
                entry.actor,
                entry.role,
                entry.action,
                entry.target,
                entry.count,
                entry.detail,
            )
        return int(audit_id)

    async def list_audit(self, limit: int = 50, before_id: int | None = None) -> list[AuditRow]:
        """Audit rows, newest first."""
        async with guard("list audit"):
            rows = await self._pool.fetch(self._q["list_audit"], limit, before_id)
        return [AuditRow(**known_columns(r, _AUDIT_FIELDS)) for r in rows]

    async def runs(self, job_id: int) -> list[dict[str, Any]]:
        """Attempts of one job."""
        async with guard("runs"):
            rows = await self._pool.fetch(self._q["job_runs"], job_id)
        return [dict(r) for r in rows]

    async def stats(self, finished: bool = True) -> dict[str, dict[str, int]]:
        """Counts by queue and status (without finished jobs: live ones only, cheaply)."""
        query = "count_by_queue_and_status" if finished else "count_live_by_queue_and_status"
        async with guard("stats"):
            rows = await self._pool.fetch(self._q[query])
        out: dict[str, dict[str, int]] = {}
        for r in rows:
            out.setdefault(r["queue"], {})[r["status"]] = r["n"]
        return out

    async def list_workers(self) -> list[dict[str, Any]]:
        """The workers table, oldest instance first."""
        async with guard("list workers"):
            rows = await self._pool.fetch(self._q["list_workers"])
        return [dict(r) for r in rows]

    async def select_ids(
        self, where: JobFilter, limit: int, before_id: int | None = None
    ) -> list[int]:
        """Matching ids, newest first, through the status's partial index (keyset paging)."""
        query = SELECT_QUERY_BY_STATUS.get(where.status or "", "select_job_ids")
        async with guard("select"):
            rows = await self._pool.fetch(
                self._q[query],
                where.status,
                where.queue,
                limit,
                before_id,
                where.handler,
                where.source,
                where.created_before,
                where.created_after,
                None if where.ids is None else list(where.ids),
                where.exclude_poison,
            )
        return [r["id"] for r in rows]

    async def jobs_by_ids(self, job_ids: Sequence[int]) -> list[Job]:
        """These jobs, newest first."""
        async with guard("get"):
            rows = await self._pool.fetch(self._q["jobs_by_ids"], list(job_ids))
        return [job_of(r) for r in rows]

    async def retry_ids(self, job_ids: Sequence[int], include_poison: bool = False) -> list[int]:
        """Requeue those still failed or cancelled, and wake the pools."""
        async with guard("retry"):
            async with self._pool.acquire() as conn, conn.transaction():
                rows = await conn.fetch(
                    self._q["retry_job_ids"],
                    list(job_ids),
                    self._default_max_attempts,
                    include_poison,
                )
                if rows:
                    await conn.execute(self._q["notify"], self._channel, "jobs")
        return [r["id"] for r in rows]

    async def cancel_ids(self, job_ids: Sequence[int]) -> dict[int, str]:
        """Cancel or flag those still live, and tell the workers running flagged ones."""
        async with guard("cancel"):
            async with self._pool.acquire() as conn, conn.transaction():
                rows = await conn.fetch(self._q["cancel_job_ids"], list(job_ids))
                for r in rows:
                    if r["status"] == "running":
                        await conn.execute(self._q["notify"], self._channel, f"cancel:{r['id']}")
        return {r["id"]: str(r["status"]) for r in rows}

    async def delete_ids(self, job_ids: Sequence[int]) -> list[int]:
        """Delete those that are finished (their runs with them)."""
        async with guard("delete"):
            rows = await self._pool.fetch(self._q["delete_job_ids"], list(job_ids))
        return [r["id"] for r in rows]
