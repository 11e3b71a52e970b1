"""The store on PostgreSQL through asyncpg: one class per role, composed into PostgresStore.

Every statement comes from ``sql/queries.sql``.
"""

from __future__ import annotations

import asyncpg

from jobwire.store.migrate import Leadership, migrate
from jobwire.store.pg_admin import LIST_QUERY_BY_STATUS, PgAdmin
from jobwire.store.pg_base import (
    connecting,
    guard,
    init_connection,
    keep_session,
    notify_channel,
    server_settings,
)
from jobwire.store.pg_jobs import PgJobs
from jobwire.store.pg_outbox import PgOutbox
from jobwire.store.pg_outbox_admin import PgOutboxAdmin
from jobwire.store.pg_schedules import PgSchedules
from jobwire.store.queries import queries

__all__ = [
    "LIST_QUERY_BY_STATUS",
    "Leadership",
    "PostgresStore",
    "migrate",
    "notify_channel",
    "server_settings",
]


class PostgresStore(PgJobs, PgOutbox, PgOutboxAdmin, PgSchedules, PgAdmin):
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
        connect_timeout: float = 60.0,
        default_max_attempts: int | None = 5,
    ) -> PostgresStore:
        """Open a pool whose connections see ``schema`` first on their search_path.

        ``default_max_attempts`` None: the value the daemon published in the database.
        """
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
                timeout=connect_timeout,
                server_settings=server_settings(schema),
                init=init,
                reset=keep_session,
            )
        if default_max_attempts is None:
            try:
                async with guard("settings"):
                    default_max_attempts = await pool.fetchval(queries()["default_max_attempts"])
            except BaseException:
                pool.terminate()
                raise
        assert default_max_attempts is not None
        return cls(pool, dsn, schema, default_max_attempts, own_backends)

    def pool_usage(self) -> tuple[int, int]:
        """(open connections, idle connections) of the asyncpg pool."""
        return self._pool.get_size(), self._pool.get_idle_size()
