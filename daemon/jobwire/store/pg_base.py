"""What every PostgreSQL role class shares: the pool, error mapping and row decoding."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg

from jobwire.models import Job, JobSpec, JobStatus, StreamOffset, UnreadableJson
from jobwire.store.base import DirectStart, InvalidJobData, StoreRefused, StoreUnavailable
from jobwire.store.queries import queries
from jobwire.store.rows import job_columns, option_columns, shared_value

# insert_jobs' column arrays ($1-$5, $7, $8, $10, $12, $13, $16: handler, queue, priority,
# max attempts, delay, body, content type, source, parent, failed reason, run now) that may
# travel as one value ($26-$36, in this order) when every row holds the same.
_SHAREABLE = (0, 1, 2, 3, 4, 6, 7, 9, 11, 12, 15)


# Errors that mean "the database is not there right now", as opposed to a bug in a statement.
UNAVAILABLE = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.TooManyConnectionsError,
    asyncpg.QueryCanceledError,
    # A session terminated mid-operation (an administrator command, a failover's demotion)
    # can leave asyncpg's protocol state behind: "cannot switch to state 12; another
    # operation (2) is in progress" (MagicStack/asyncpg#1069). Seen in the failover drill;
    # the connection is dead, the data is not at fault.
    asyncpg.InternalClientError,
)


# SQLSTATE classes that say "the server cannot do this now", whatever the statement:
# connection (08), transaction rollback such as a deadlock (40), insufficient resources
# such as a full disk (53), a lock not available in time (55), operator intervention (57),
# system errors (58), internal (XX).
_OUTAGE_CLASSES = frozenset({"08", "40", "53", "55", "57", "58", "XX"})
_READ_ONLY = "25006"  # connected to a standby (after a failover): not the rows' fault


def is_outage(exc: asyncpg.PostgresError) -> bool:
    """True when a server error says the store is unavailable rather than the data bad."""
    state = str(getattr(exc, "sqlstate", "") or "")
    return state[:2] in _OUTAGE_CLASSES or state == _READ_ONLY


def notify_channel(schema: str) -> str:
    """The LISTEN/NOTIFY channel of one schema (the insert trigger uses the same name)."""
    return f"jobwire_{schema}"


def server_settings(schema: str) -> dict[str, str]:
    """The session settings of every connection jobwire opens to ``schema``."""
    return {
        "search_path": schema,
        "application_name": "jobwire",
        # A queue table's statistics are always stale: the planner then believes the claim
        # index holds a handful of rows and picks a bitmap scan, which reads every entry
        # (including those of already-claimed jobs) and sorts them, instead of walking the
        # index in claim order and stopping at LIMIT. Every jobwire statement is a key or
        # index-order lookup, so bitmap scans are never what we want here.
        "enable_bitmapscan": "off",
        # The client bounds every statement itself (database.command_timeout, cancelled
        # from here). A lower statement_timeout set on the role or database failed every
        # statement, and lifting it reached no open connection: a drill's daemon stored
        # nothing for minutes after the operator had put it back.
        "statement_timeout": "0",
    }


async def keep_session(conn: asyncpg.Connection) -> None:
    """Skip asyncpg's reset query on release: pool connections never hold session state
    (LISTEN and advisory locks use dedicated connections), and the reset costs a round
    trip per query."""


def read_json(text: str) -> Any:
    """A json or jsonb value; one the json module refuses is kept as ``UnreadableJson``
    (a decoder that raised would fail the read of every row with it)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        return UnreadableJson(text, f"{type(exc).__name__}: {str(exc)[:200]}")


def write_json(value: Any) -> str:
    """A value as json text; ``UnreadableJson`` as the text it was read from."""
    if isinstance(value, UnreadableJson):
        return str.__str__(value)
    return json.dumps(value)


async def init_connection(conn: asyncpg.Connection) -> None:
    """Decode json and jsonb with the json module on every pool connection."""
    for kind in ("json", "jsonb"):
        await conn.set_type_codec(kind, encoder=write_json, decoder=read_json, schema="pg_catalog")


def known_columns(row: asyncpg.Record, fields: frozenset[str]) -> dict[str, Any]:
    """A whole row's columns that ``fields`` names.

    A newer release's migration may add a column while this instance runs on (a rolling
    upgrade): it is left out, not a TypeError on every read of whole rows (the API's and
    the dashboard's job lists, ``Client.get``).
    """
    values = dict(row.items())
    if len(values) != len(fields):
        values = {name: value for name, value in values.items() if name in fields}
    return values


JOB_FIELDS = frozenset(f.name for f in dataclasses.fields(Job))
"""The jobs columns a Job holds."""


def job_of(row: asyncpg.Record) -> Job:
    """A jobs row as a Job (Job has a field for every column; a test holds them together)."""
    values = known_columns(row, JOB_FIELDS)
    values["status"] = JobStatus(values["status"])
    values["headers"] = values["headers"] or {}
    return Job(**values)


@contextlib.asynccontextmanager
async def guard(what: str) -> AsyncIterator[None]:
    """Turn connection-level failures into StoreUnavailable; let real SQL errors through."""
    try:
        yield
    except asyncpg.DataError as exc:
        # Before UNAVAILABLE: asyncpg raises this InterfaceError subclass itself when a value
        # cannot be encoded (a lone surrogate, an int beyond int32): the data, not the store.
        raise InvalidJobData(f"{what}: {type(exc).__name__}: {exc}") from exc
    except asyncpg.InternalClientError as exc:
        # asyncpg's own words ("cannot switch to state 12") read like a bug in jobwire; what
        # happened is a session ended under a statement (see UNAVAILABLE).
        raise StoreUnavailable(
            f"{what}: the database session ended mid-statement (asyncpg: {exc})"
        ) from exc
    except UNAVAILABLE as exc:
        raise StoreUnavailable(f"{what}: {type(exc).__name__}: {exc}") from exc
    except asyncpg.PostgresError as exc:
        # A server that cannot write now (read-only, a full disk, a lock not granted in
        # time) is away for this statement like a dropped connection: the caller backs off.
        # Raised as it was, the pool's loops crashed once a second, each with a traceback.
        if is_outage(exc):
            raise StoreUnavailable(f"{what}: {type(exc).__name__}: {exc}") from exc
        raise


@contextlib.asynccontextmanager
async def connecting() -> AsyncIterator[None]:
    """Like guard, and a server that refuses the connection is StoreRefused (no retry)."""
    try:
        async with guard("connect"):
            yield
    except (
        asyncpg.InvalidCatalogNameError,
        asyncpg.InvalidAuthorizationSpecificationError,
        asyncpg.InvalidPasswordError,
        asyncpg.InsufficientPrivilegeError,
    ) as exc:
        raise StoreRefused(f"the database refused the connection: {exc}") from exc
    except ValueError as exc:
        # The URL itself (a bad port, an unclosed [ of an IPv6 address): no retry helps.
        # The message names the part at fault; the password is masked as every secret is.
        raise StoreRefused(f"the database URL cannot be used: {exc}") from None


class PgBase:
    """The state every role class reads: the pool, the schema and the named statements."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        dsn: str,
        schema: str,
        default_max_attempts: int,
        own_backends: set[int] | None = None,
    ) -> None:
        self._pool = pool
        # Server pids of this pool's connections: their "jobs inserted" notifications come
        # back to our own listener, and the inserting code has already woken its pool.
        self._own_backends = own_backends if own_backends is not None else set()
        self._dsn = dsn
        self._schema = schema
        self._channel = notify_channel(schema)
        self._default_max_attempts = default_max_attempts
        self._q = queries()

    @property
    def schema(self) -> str:
        """The schema this store reads and writes."""
        return self._schema

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the database answers."""
        async with guard("ping"):
            await self._pool.fetchval(self._q["ping"])

    async def publish_default_max_attempts(self, attempts: int) -> None:
        """Store the attempts of a job that sets none, for SQL callers and the Client."""
        async with guard("settings"):
            await self._pool.execute(self._q["publish_default_max_attempts"], attempts)

    async def close(self) -> None:
        """Close the pool, waiting briefly for connections in use."""
        try:
            async with asyncio.timeout(5):
                await self._pool.close()
        except (TimeoutError, *UNAVAILABLE):
            self._pool.terminate()

    def _insert_args(
        self,
        specs: Sequence[JobSpec],
        direct: DirectStart | None,
        offsets: Sequence[StreamOffset] = (),
    ) -> list[Any]:
        """The insert_jobs parameters: one array per column, the direct-start ones, the
        stream offsets, the per-job options, then each shared value ($26-$36) of a column
        sent as a NULL array because all its rows hold that value."""
        args = [
            *job_columns(specs, self._default_max_attempts),
            [s.failed_reason for s in specs],
            direct.worker_id if direct else None,
            direct.lease if direct else 0.0,
            list(direct.flags) if direct else [False] * len(specs),
            [o.group_id for o in offsets],
            [o.topic for o in offsets],
            [o.partition for o in offsets],
            [o.next_offset for o in offsets],
            *option_columns(specs),
            # $25: reply addresses (a NULL array when none has one: nothing to encode).
            [json.dumps(s.reply) if s.reply else None for s in specs]
            if any(s.reply for s in specs)
            else None,
        ]
        return args + [shared_value(args, i) for i in _SHAREABLE]
