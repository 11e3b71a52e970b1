"""Job storage: the role ports (jobs, schedules, admin) and their PostgreSQL and in-memory
implementations."""

from __future__ import annotations

from jobwire.store.base import (
    AdminStore,
    ClaimRequest,
    DirectStart,
    Enqueued,
    JobStore,
    MaintenanceStore,
    OperatorStore,
    ScheduleRow,
    ScheduleStore,
    Store,
    StoreUnavailable,
)

__all__ = [
    "AdminStore",
    "ClaimRequest",
    "DirectStart",
    "Enqueued",
    "JobStore",
    "MaintenanceStore",
    "OperatorStore",
    "ScheduleRow",
    "ScheduleStore",
    "Store",
    "StoreUnavailable",
    "connect",
]


async def connect(
    dsn: str,
    schema: str = "jobwire",
    *,
    min_size: int = 2,
    max_size: int = 10,
    command_timeout: float = 30.0,
    connect_timeout: float = 60.0,
    default_max_attempts: int | None = 5,
) -> Store:
    """A connected store on the PostgreSQL at ``dsn`` (for code that only needs a role).

    ``default_max_attempts`` None: the value the daemon published in the database.
    """
    # Imported here: the role ports stay importable without asyncpg.
    from jobwire.store.postgres import PostgresStore

    return await PostgresStore.connect(
        dsn,
        schema,
        min_size=min_size,
        max_size=max_size,
        command_timeout=command_timeout,
        connect_timeout=connect_timeout,
        default_max_attempts=default_max_attempts,
    )
