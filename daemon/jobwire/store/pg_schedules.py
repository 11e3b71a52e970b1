"""The ScheduleStore role on PostgreSQL: schedules, the leader's lock, retention."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from jobwire.models import JobSpec
from jobwire.store.base import ScheduleRow
from jobwire.store.migrate import Leadership
from jobwire.store.pg_base import PgBase, guard, server_settings


class _Superseded(Exception):
    """Another leader fired this schedule first: roll back."""


class PgSchedules(PgBase):
    """What the scheduler and the schedules commands run on PostgreSQL."""

    async def sync_schedules(self, rows: Sequence[dict[str, Any]]) -> None:
        """Write the configured schedules (config wins); disable those no longer listed."""
        async with guard("sync schedules"):
            async with self._pool.acquire() as conn, conn.transaction():
                for r in rows:
                    await conn.execute(
                        self._q["upsert_schedule"],
                        r["name"],
                        r["cron"],
                        r["interval_s"],
                        r["timezone"],
                        r["handler"],
                        r["payload"],
                        r["queue"],
                        r["priority"],
                        r["max_attempts"],
                        r["enabled"],
                        r["start_at"],
                        r["end_at"],
                        r["max_runs"],
                        r["catch_up"],
                        r["next_run_at"],
                    )
                await conn.execute(self._q["disable_unlisted_schedules"], [r["name"] for r in rows])

    async def due_schedules(self) -> list[ScheduleRow]:
        """Enabled schedules whose next tick has come."""
        async with guard("due schedules"):
            return [ScheduleRow(**r) for r in await self._pool.fetch(self._q["due_schedules"])]

    async def fire_schedule(
        self,
        name: str,
        specs: Sequence[JobSpec],
        last_run_at: datetime | None,
        next_run_at: datetime | None,
        expected_next: datetime,
    ) -> int | None:
        """Insert a schedule's tick jobs and move it on, in one transaction.

        Returns how many jobs were new, or None when another leader had already moved the
        schedule on (nothing is written then).
        """
        try:
            async with guard("fire schedule"):
                async with self._pool.acquire() as conn, conn.transaction():
                    rows = await conn.fetch(self._q["insert_jobs"], *self._insert_args(specs, None))
                    moved = await conn.fetchval(
                        self._q["schedule_fired"],
                        name,
                        last_run_at,
                        next_run_at,
                        len(rows),
                        expected_next,
                    )
                    if moved is None:
                        raise _Superseded  # rolls the inserts back
        except _Superseded:
            return None
        return len(rows)

    async def purge_finished(self, older_than: float, batch: int) -> int:
        """Delete one batch of old finished jobs, oldest first; returns how many went."""
        async with guard("purge"), self._pool.acquire() as conn, conn.transaction():
            await conn.execute(self._q["purge_plan"])
            status = await conn.execute(self._q["purge_finished"], older_than, batch)
        return int(status.split()[-1])

    async def list_schedules(self) -> list[ScheduleRow]:
        """Every schedule row, by name."""
        async with guard("list schedules"):
            return [ScheduleRow(**r) for r in await self._pool.fetch(self._q["list_schedules"])]

    async def get_schedule(self, name: str) -> ScheduleRow | None:
        """One schedule row."""
        async with guard("get schedule"):
            row = await self._pool.fetchrow(self._q["get_schedule"], name)
        return None if row is None else ScheduleRow(**row)

    async def set_schedule_enabled(self, name: str, enabled: bool) -> bool:
        """Pause or resume a schedule; False if there is none by that name."""
        async with guard("set schedule"):
            return (
                await self._pool.fetchval(self._q["set_schedule_enabled"], name, enabled)
                is not None
            )

    async def try_leadership(self, key: str) -> Leadership | None:
        """Take an advisory lock on a dedicated connection; the holder leads until it closes.

        The lock lives exactly as long as that connection: a leader that dies, or whose
        connection drops, loses it at once and another instance takes over.
        """
        async with guard("leadership"):
            conn = await asyncpg.connect(self._dsn, server_settings=server_settings(self._schema))
            try:
                if await conn.fetchval(self._q["try_advisory_lock"], key):
                    return Leadership(conn)
            except BaseException:
                conn.terminate()
                raise
            await conn.close()
        return None
