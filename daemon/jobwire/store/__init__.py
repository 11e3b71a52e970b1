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
    default_max_attempts: int = 5,
) -> Store:
    """A connected store on the PostgreSQL at ``dsn`` (for code that only needs a role)."""
    # Imported here: the role ports stay importable without asyncpg.
    from jobwire.store.postgres import PostgresStore

    return await PostgresStore.connect(
        dsn,
        schema,
        min_size=min_size,
        max_size=max_size,
        default_max_attempts=default_max_attempts,
    )
