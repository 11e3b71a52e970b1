"""The dashboard's part of the AdminStore role on PostgreSQL: failure groups, frozen bulk
actions, the throughput rollup, and the live-changes marker."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import structlog

from jobwire.store.base import FailureGroup, ThroughputRow
from jobwire.store.pg_base import PgBase, guard

log = structlog.get_logger("jobwire.store")

ROLLUP_KEPT = timedelta(days=1)  # rollup minutes older than this are dropped as it goes


class PgDashboard(PgBase):
    """What the dashboard reads and runs beyond the CLI's admin statements."""

    async def failure_groups(self, limit: int) -> list[FailureGroup]:
        """Failed jobs by fingerprint, through jobs_failed_fingerprint."""
        async with guard("failure groups"):
            rows = await self._pool.fetch(self._q["dash_failure_groups"], limit)
        return [
            FailureGroup(
                fingerprint=r["fingerprint"] or "(not yet grouped)",
                count=r["n"],
                first_seen=r["first_seen"],
                last_seen=r["last_seen"],
                handlers=sorted(r["handlers"]),
                queues=sorted(r["queues"]),
                sample_id=r["sample_id"],
            )
            for r in rows
        ]

    async def failed_ids(
        self, fingerprint: str, limit: int, before_id: int | None = None
    ) -> list[int]:
        """One group's ids, newest first (keyset paging)."""
        async with guard("select"):
            rows = await self._pool.fetch(
                self._q["dash_failed_ids_by_fingerprint"], fingerprint, limit, before_id
            )
        return [r["id"] for r in rows]

    async def finished_before(self, job_ids: Sequence[int], at: datetime) -> list[int]:
        """Those not finished again since ``at``."""
        async with guard("select"):
            rows = await self._pool.fetch(self._q["dash_finished_before"], list(job_ids), at)
        return [r["id"] for r in rows]

    async def throughput(self, since: datetime) -> list[ThroughputRow]:
        """The rollup's minutes since ``since``."""
        async with guard("throughput"):
            rows = await self._pool.fetch(self._q["dash_throughput"], since)
        return [(r["minute"], r["queue"], r["status"], r["n"]) for r in rows]

    async def rollup_throughput(self) -> int:
        """Count the minutes finished since the last rollup, in one transaction."""
        async with guard("rollup"):
            async with self._pool.acquire() as conn, conn.transaction():
                bounds = await conn.fetchrow(self._q["dash_rollup_bounds"])
                if bounds["lo"] >= bounds["hi"]:
                    return 0
                status = await conn.execute(
                    self._q["dash_rollup_throughput"], bounds["lo"], bounds["hi"]
                )
                await conn.execute(self._q["dash_rollup_forget"], bounds["hi"] - ROLLUP_KEPT)
        return int(status.rsplit(" ", 1)[-1])

    async def change_marker(self) -> int:
        """A number that moves when jobs are inserted, changed or deleted (dash_change_marker)."""
        async with guard("change marker"):
            marker = await self._pool.fetchval(self._q["dash_change_marker"], timeout=5.0)
        return int(marker or 0)

    async def backfill_fingerprints(self, batch: int) -> int:
        """Fingerprint up to ``batch`` failed rows kept from before migration 0010."""
        async with guard("backfill fingerprints"):
            status = await self._pool.execute(self._q["dash_backfill_fingerprints"], batch)
        return int(status.rsplit(" ", 1)[-1])
