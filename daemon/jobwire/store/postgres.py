"""The store on PostgreSQL through asyncpg: one class per role, composed into PostgresStore.

Every statement comes from ``sql/queries.sql``.
"""

from __future__ import annotations

import asyncpg

from jobwire.store.migrate import Leadership, migrate
from jobwire.store.pg_admin import LIST_QUERY_BY_STATUS, PgAdmin
from jobwire.store.pg_base import (
    connecting,
    init_connection,
    keep_session,
    notify_channel,
    server_settings,
)
from jobwire.store.pg_jobs import PgJobs
from jobwire.store.pg_schedules import PgSchedules

__all__ = [
    "LIST_QUERY_BY_STATUS",
    "Leadership",
    "PostgresStore",
    "migrate",
    "notify_channel",
    "server_settings",
]


class PostgresStore(PgJobs, PgSchedules, PgAdmin):
    """The production store: every role (jobs, schedules, admin) on one asyncpg pool."""

    @classmethod
    async def connect(
        cls,
        dsn: str,
        schema: str = "jobwire",
        *,
        min_size: int = 2,
        max_size: int = 10,
        command_timeout: float = 30.0,
        default_max_attempts: int = 5,
    ) -> PostgresStore:
        """Open a pool whose connections see ``schema`` first on their search_path."""
        own_backends: set[int] = set()

        async def init(conn: asyncpg.Connection) -> None:
            await init_connection(conn)
            own_backends.add(conn.get_server_pid())

        async with connecting():
            pool = await asyncpg.create_pool(
                dsn,
                min_size=min_size,
                max_size=max_size,
                command_timeout=command_timeout,
                server_settings=server_settings(schema),
                init=init,
                reset=keep_session,
            )
        return cls(pool, dsn, schema, default_max_attempts, own_backends)

    def pool_usage(self) -> tuple[int, int]:
        """(open connections, idle connections) of the asyncpg pool."""
        return self._pool.get_size(), self._pool.get_idle_size()
