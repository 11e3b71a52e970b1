"""Enqueue from synchronous code on the caller's own database connection (psycopg, Django).

The job is inserted by the ``enqueue`` SQL function inside the caller's transaction: it
exists exactly when the caller's own writes commit, and a rollback takes it away with them.
Any DB-API connection or cursor that speaks PostgreSQL with ``%s`` placeholders works
(psycopg 3, psycopg2, Django's ``connection.connection``); nothing here imports a driver.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from jobwire.api_models import BadInput, check_enqueue
from jobwire.client import UNMIGRATED_SQLSTATES, SchemaNotMigrated, quoted_schema, with_trace
from jobwire.store.queries import queries

# A day inside Python's years on either side: a naive run_at is read in the session's time
# zone, which may move it up to a day.
_EARLIEST = datetime.min + timedelta(days=1)
_LATEST = datetime.max - timedelta(days=1)


def _check_run_at(run_at: object, delay: float) -> None:
    """Refuse a run_at that is no datetime, or (with the delay) leaves years 1-9999: the
    first aborted the caller's transaction at the cast, the second made a row that no
    reader in Python (the daemon's API, the Client) could decode."""
    if run_at is None:
        return
    if not isinstance(run_at, datetime):
        raise BadInput("run_at", f"run_at must be a datetime, not {type(run_at).__name__}")
    wall = run_at.replace(tzinfo=None)
    if not _EARLIEST <= wall <= _LATEST or timedelta(seconds=delay) > _LATEST - wall:
        raise BadInput("run_at", "run_at (plus delay) must fall within the years 1 to 9999")


def enqueue(
    conn: Any,
    handler: str,
    payload: Any = None,
    *,
    queue: str = "default",
    priority: int = 0,
    run_at: datetime | None = None,
    delay: str | float | None = None,
    dedup_key: str | None = None,
    max_attempts: int | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: str | float | None = None,
    concurrency_key: str | None = None,
    unique: str = "forever",
    after: Iterable[int] | None = None,
    schema: str = "jobwire",
) -> int:
    """Insert a job through ``conn`` (a connection or cursor) without committing; its id.

    A dedup key already taken gives the existing job's id. ``max_attempts`` None: the
    daemon's retry.max_attempts, as the daemon published it in the database. ``timeout``,
    ``concurrency_key``, ``unique`` and ``after`` as Client.enqueue takes them.
    """
    # The same checks as the HTTP API, the CLI and the Client, before any SQL: a value the
    # database would refuse must not abort the caller's transaction.
    spec = check_enqueue(
        {
            "handler": handler,
            "payload": payload,
            "queue": queue,
            "priority": priority,
            "delay": 0.0 if delay is None else delay,
            "dedup_key": dedup_key,
            "max_attempts": max_attempts,
            "headers": dict(headers or {}),
            "timeout": timeout,
            "concurrency_key": concurrency_key,
            "unique": unique,
            "after": None if after is None else list(after),
        }
    ).spec(source="api")
    _check_run_at(run_at, spec.delay)
    sql = queries()["enqueue_dbapi"].format(schema=quoted_schema(schema))
    params = (
        spec.handler,
        None if spec.payload is None else json.dumps(spec.payload),
        spec.queue,
        spec.priority,
        run_at,
        None if delay is None else spec.delay,
        spec.dedup_key,
        spec.max_attempts,
        json.dumps(with_trace(spec.headers)),
        spec.timeout,
        spec.concurrency_key,
        spec.unique,
        spec.after,
    )
    try:
        if hasattr(conn, "cursor"):
            with conn.cursor() as cur:
                cur.execute(sql, params)
                row = cur.fetchone()
        else:
            conn.execute(sql, params)
            row = conn.fetchone()
    except Exception as exc:
        # psycopg 3 names the SQLSTATE sqlstate, psycopg2 pgcode.
        state = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
        if state in UNMIGRATED_SQLSTATES:
            raise SchemaNotMigrated(schema, exc) from exc
        raise
    return int(row[0])
