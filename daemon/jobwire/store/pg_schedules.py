"""The ScheduleStore role on PostgreSQL: schedules, the leader's lock, retention."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import asyncpg

from jobwire.models import JobSpec
from jobwire.store.base import PurgeCursor, ScheduleRow
from jobwire.store.migrate import Leadership
from jobwire.store.pg_base import PgBase, guard, known_columns, server_settings


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
            return [_schedule_of(r) for r in await self._pool.fetch(self._q["due_schedules"])]

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
                    # A leader frozen between these statements held the tick's dedup key and
                    # the schedule's row: the leader that took over waited on them, and fired
                    # nothing at all, until the frozen one thawed. The server now ends such a
                    # transaction (rolled back: the new leader fires the tick once).
                    await conn.execute(self._q["fire_idle_timeout"])
                    rows = await conn.fetch(self._q["sched_insert_jobs"], *self._sched_args(specs))
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

    async def purge_finished(
        self, older_than: float, batch: int, cursor: PurgeCursor | None = None
    ) -> int:
        """Delete one batch of old finished jobs, oldest first (from ``cursor`` on, which it
        moves); returns how many went."""
        since = None if cursor is None else cursor.finished_at
        async with guard("purge"), self._pool.acquire() as conn, conn.transaction():
            await conn.execute(self._q["purge_plan"])
            row = await conn.fetchrow(self._q["purge_finished"], older_than, batch, since)
        assert row is not None  # an aggregate: always one row
        if cursor is not None and row["last"] is not None:
            cursor.finished_at = row["last"]
        return int(row["n"])

    async def maintain_tables(
        self, tables: Sequence[str] | None, *, vacuum: bool, analyze: bool, timeout: float
    ) -> list[str]:
        """VACUUM (never FULL) and/or ANALYZE jobwire's own tables, all or those named; returns
        the tables done. A name that is not one of them raises ValueError, touching none."""
        statement = self._q[
            "builtins_vacuum_analyze"
            if vacuum and analyze
            else ("builtins_vacuum" if vacuum else "builtins_analyze")
        ]
        async with guard("maintenance"), self._pool.acquire() as conn:
            own = [r["tablename"] for r in await conn.fetch(self._q["builtins_own_tables"])]
            unknown = sorted(set(tables or ()) - set(own))
            if unknown:
                raise ValueError(f"not jobwire tables: {', '.join(unknown)}")
            chosen = [t for t in own if tables is None or t in tables]
            for table in chosen:
                # Outside any transaction block (VACUUM refuses one): a lone simple query.
                quoted = '"' + table.replace('"', '""') + '"'
                await conn.execute(statement.format(table=quoted), timeout=timeout)
        return chosen

    async def list_schedules(self) -> list[ScheduleRow]:
        """Every schedule row, by name."""
        async with guard("list schedules"):
            return [_schedule_of(r) for r in await self._pool.fetch(self._q["list_schedules"])]

    async def get_schedule(self, name: str) -> ScheduleRow | None:
        """One schedule row."""
        async with guard("get schedule"):
            row = await self._pool.fetchrow(self._q["get_schedule"], name)
        return None if row is None else _schedule_of(row)

    async def set_schedule_enabled(self, name: str, enabled: bool) -> bool:
        """Pause or resume a schedule; False if there is none by that name."""
        async with guard("set schedule"):
            return (
                await self._pool.fetchval(self._q["set_schedule_enabled"], name, enabled)
                is not None
            )

    def _sched_args(self, specs: Sequence[JobSpec]) -> list[list[Any]]:
        """The sched_insert_jobs parameters: one array per column."""
        return [
            [s.handler for s in specs],
            [s.queue for s in specs],
            [s.priority for s in specs],
            [s.max_attempts or self._default_max_attempts for s in specs],
            [None if s.payload is None else json.dumps(s.payload) for s in specs],
            [s.source for s in specs],
            [s.dedup_key for s in specs],
            [s.schedule_id for s in specs],
        ]

    async def enqueue_scheduled(self, specs: Sequence[JobSpec]) -> list[int]:
        """Insert jobs linked to their schedule (``spec.schedule_id``); the new ids."""
        async with guard("enqueue scheduled"):
            rows = await self._pool.fetch(self._q["sched_insert_jobs"], *self._sched_args(specs))
        return [r["id"] for r in rows]

    async def add_schedule(self, values: Mapping[str, Any]) -> ScheduleRow | None:
        """Add a run-time schedule (origin 'api'); None when the name is taken."""
        async with guard("add schedule"):
            row = await self._pool.fetchrow(
                self._q["sched_add_schedule"], values["name"], *_schedule_args(values)
            )
        return None if row is None else _schedule_of(row)

    async def update_schedule(self, name: str, values: Mapping[str, Any]) -> ScheduleRow | None:
        """Change a run-time schedule; None when there is no run-time schedule by that name."""
        async with guard("update schedule"):
            row = await self._pool.fetchrow(
                self._q["sched_update_schedule"], name, *_schedule_args(values)
            )
        return None if row is None else _schedule_of(row)

    async def remove_schedule(self, name: str) -> bool:
        """Delete a run-time schedule (its jobs stay); False when there is none by that name."""
        async with guard("remove schedule"):
            return await self._pool.fetchval(self._q["sched_delete_schedule"], name) is not None

    async def last_schedule_jobs(self) -> dict[int, tuple[int, str]]:
        """Each schedule's newest job: ``{schedule id: (job id, status)}``."""
        async with guard("last schedule jobs"):
            rows = await self._pool.fetch(self._q["sched_last_jobs"])
        return {r["schedule_id"]: (r["id"], r["status"]) for r in rows}

    async def try_leadership(
        self, key: str, *, idle_timeout: float | None = None
    ) -> Leadership | None:
        """Take an advisory lock on a dedicated connection; the holder leads until it closes.

        The lock lives exactly as long as that connection: a leader that dies, or whose
        connection drops, loses it at once and another instance takes over. With
        ``idle_timeout`` the server also ends the connection once the holder has sent
        nothing for that long (PostgreSQL 14 and later): a leader that is frozen, not dead,
        lets go too. While another session holds it (pg_locks, read through the pool) no
        connection is opened: a follower asking every second costs one pooled statement,
        not a new backend.
        """
        async with guard("leadership"):
            if await self._pool.fetchval(self._q["lead_lock_held"], key):
                return None
            conn = await asyncpg.connect(self._dsn, server_settings=server_settings(self._schema))
            try:
                if await conn.fetchval(self._q["try_advisory_lock"], key):
                    if idle_timeout is not None and conn.get_server_version().major >= 14:
                        # A SIGSTOPped or paused leader kept its connection, and so the
                        # lock, for as long as it was frozen: no schedule fired meanwhile.
                        await conn.execute(
                            self._q["lead_idle_timeout"], f"{int(idle_timeout * 1000)}ms"
                        )
                    return Leadership(conn)
            except BaseException:
                conn.terminate()
                raise
            await conn.close()
        return None


def _schedule_args(v: Mapping[str, Any]) -> list[Any]:
    """The columns of sched_add_schedule and sched_update_schedule after the name ($2-$15)."""
    return [
        v["cron"],
        v["interval_s"],
        v["timezone"],
        v["handler"],
        v["payload"],  # the pool's jsonb codec encodes it
        v["queue"],
        v["priority"],
        v["max_attempts"],
        v["enabled"],
        v["start_at"],
        v["end_at"],
        v["max_runs"],
        v["catch_up"],
        v["next_run_at"],
    ]


_SCHEDULE_FIELDS = frozenset(f.name for f in dataclasses.fields(ScheduleRow))


def _schedule_of(row: asyncpg.Record) -> ScheduleRow:
    """A schedules row as a ScheduleRow, columns of a newer release left out."""
    return ScheduleRow(**known_columns(row, _SCHEDULE_FIELDS))
