"""JobStore on PostgreSQL through asyncpg: every statement comes from ``sql/queries.sql``."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from typing import Any

import asyncpg
import structlog

from jobwire.models import Job, JobSpec, JobStatus, Outcome, StreamOffset
from jobwire.store.base import (
    ClaimRequest,
    DirectStart,
    InvalidJobData,
    NotifyCallback,
    Renewal,
    StoreRefused,
    StoreUnavailable,
)
from jobwire.store.queries import migrations, queries

log = structlog.get_logger("jobwire.store")

# Errors that mean "the database is not there right now", as opposed to a bug in a statement.
_UNAVAILABLE = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.TooManyConnectionsError,
    asyncpg.QueryCanceledError,
)


# SQLSTATE classes that say "the server cannot do this now", whatever the statement:
# connection (08), transaction rollback such as a deadlock (40), insufficient resources
# such as a full disk (53), operator intervention (57), system errors (58), internal (XX).
_OUTAGE_CLASSES = frozenset({"08", "40", "53", "57", "58", "XX"})
_READ_ONLY = "25006"  # connected to a standby (after a failover): not the rows' fault


def _is_outage(exc: asyncpg.PostgresError) -> bool:
    """True when a server error says the store is unavailable rather than the data bad."""
    state = str(getattr(exc, "sqlstate", "") or "")
    return state[:2] in _OUTAGE_CLASSES or state == _READ_ONLY


# Statuses whose listing reads a partial index (see list_jobs in queries.sql).
LIST_QUERY_BY_STATUS = {
    "failed": "list_failed_jobs",
    "cancelled": "list_failed_jobs",
    "pending": "list_ready_jobs",
    "retrying": "list_ready_jobs",
    "running": "list_running_jobs",
}


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
    }


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Skip asyncpg's reset query on release: pool connections never hold session state
    (LISTEN and advisory locks use dedicated connections), and the reset costs a round
    trip per query."""


async def _init_connection(conn: asyncpg.Connection) -> None:
    for kind in ("json", "jsonb"):
        await conn.set_type_codec(kind, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


def _job(row: asyncpg.Record) -> Job:
    # Job has a field for every column of jobs (a test holds them together).
    values = dict(row.items())
    values["status"] = JobStatus(values["status"])
    values["headers"] = values["headers"] or {}
    return Job(**values)


def _claimed(row: asyncpg.Record) -> Job:
    """A job as claim_jobs returns it (its columns by position)."""
    return Job(
        row[0],
        row[1],
        row[2],
        JobStatus.RUNNING,
        row[3],
        row[4],
        row[5],
        row[6],
        row[7],
        row[8],
        body=row[9],
        content_type=row[10],
        headers=row[11] or {},
        source=row[12],
        dedup_key=row[13],
        worker_id=row[14],
        started_at=row[15],
        parent_id=row[16],
        lease_until=row[17],
    )


@contextlib.asynccontextmanager
async def _guard(what: str) -> AsyncIterator[None]:
    """Turn connection-level failures into StoreUnavailable; let real SQL errors through."""
    try:
        yield
    except _UNAVAILABLE as exc:
        raise StoreUnavailable(f"{what}: {type(exc).__name__}: {exc}") from exc


@contextlib.asynccontextmanager
async def _connecting() -> AsyncIterator[None]:
    """Like _guard, and a server that refuses the connection is StoreRefused (no retry)."""
    try:
        async with _guard("connect"):
            yield
    except (
        asyncpg.InvalidCatalogNameError,
        asyncpg.InvalidAuthorizationSpecificationError,
        asyncpg.InvalidPasswordError,
        asyncpg.InsufficientPrivilegeError,
    ) as exc:
        raise StoreRefused(f"the database refused the connection: {exc}") from exc


async def migrate(dsn: str, schema: str) -> list[str]:
    """Apply missing numbered migrations under an advisory lock; returns the names applied."""
    async with _connecting():
        conn = await asyncpg.connect(dsn)
    applied: list[str] = []
    try:
        # One migrator per schema at a time, whichever instance starts first.
        await conn.execute("SELECT pg_advisory_lock(hashtext($1))", f"jobwire-migrate:{schema}")
        try:
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            await conn.execute(f'SET search_path TO "{schema}"')
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for version, name, sql in migrations():
                if version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                        version,
                        name,
                    )
                applied.append(f"{version:04d}_{name}")
        finally:
            await conn.execute(
                "SELECT pg_advisory_unlock(hashtext($1))", f"jobwire-migrate:{schema}"
            )
    finally:
        await conn.close()
    return applied


class Leadership:
    """An advisory lock held on its own connection: held while the connection lives."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def still_held(self) -> bool:
        """Ping the connection: a dropped connection has lost the lock."""
        if self._conn.is_closed():
            return False
        try:
            await self._conn.fetchval("SELECT 1", timeout=5)
        except (*_UNAVAILABLE, asyncpg.PostgresError):
            return False
        return True

    async def release(self) -> None:
        """Close the connection, which releases the lock."""
        with contextlib.suppress(Exception):
            await self._conn.close(timeout=5)
        self._conn.terminate()


class _Superseded(Exception):
    """Another leader fired this schedule first: roll back."""


class PostgresStore:
    """The production JobStore."""

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
            await _init_connection(conn)
            own_backends.add(conn.get_server_pid())

        async with _connecting():
            pool = await asyncpg.create_pool(
                dsn,
                min_size=min_size,
                max_size=max_size,
                command_timeout=command_timeout,
                server_settings=server_settings(schema),
                init=init,
                reset=_keep_session,
            )
        return cls(pool, dsn, schema, default_max_attempts, own_backends)

    @property
    def schema(self) -> str:
        """The schema this store reads and writes."""
        return self._schema

    async def close(self) -> None:
        """Close the pool, waiting briefly for connections in use."""
        try:
            async with asyncio.timeout(5):
                await self._pool.close()
        except (TimeoutError, *_UNAVAILABLE):
            self._pool.terminate()

    def pool_usage(self) -> tuple[int, int]:
        """(open connections, idle connections) of the asyncpg pool."""
        return self._pool.get_size(), self._pool.get_idle_size()

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the database answers."""
        async with _guard("ping"):
            await self._pool.fetchval("SELECT 1")

    async def enqueue_many(
        self,
        specs: Sequence[JobSpec],
        direct: DirectStart | None = None,
        offsets: Sequence[StreamOffset] = (),
    ) -> list[int | None]:
        """Insert jobs in one statement; duplicates (by dedup key) yield None.

        ``offsets`` (Kafka positions) are written in the same transaction as the rows.
        """
        if not specs and not offsets:
            return []
        rows = await self._insert(self._insert_args(specs, direct, offsets))
        inserted_keys = {r["dedup_key"] for r in rows if r["dedup_key"] is not None}
        # Identity values ascend in input order (the INSERT orders by ordinality), so the
        # n-th inserted spec owns the n-th smallest id.
        ids = iter(sorted(r["id"] for r in rows))
        out: list[int | None] = []
        for spec in specs:
            if spec.dedup_key is None:
                out.append(next(ids))
            elif spec.dedup_key in inserted_keys:
                # The first spec with a key owns the row; a repeat in the same batch does not.
                inserted_keys.discard(spec.dedup_key)
                out.append(next(ids))
            else:
                out.append(None)
        return out

    def _insert_args(
        self,
        specs: Sequence[JobSpec],
        direct: DirectStart | None,
        offsets: Sequence[StreamOffset] = (),
    ) -> list[Any]:
        """The insert_jobs parameters: one array per column, the direct-start ones, then the
        stream offsets."""
        default_attempts = self._default_max_attempts
        return [
            [s.handler for s in specs],
            [s.queue for s in specs],
            [s.priority for s in specs],
            [s.max_attempts or default_attempts for s in specs],
            [max(s.delay, 0.0) for s in specs],
            [
                s.payload_json
                if s.payload_json is not None
                else (None if s.payload is None else json.dumps(s.payload))
                for s in specs
            ],
            [s.body for s in specs],
            [s.content_type for s in specs],
            [json.dumps(s.headers) if s.headers else None for s in specs],
            [s.source for s in specs],
            [s.dedup_key for s in specs],
            [s.parent_id for s in specs],
            [s.failed_reason for s in specs],
            direct.worker_id if direct else None,
            direct.lease if direct else 0.0,
            list(direct.flags) if direct else [False] * len(specs),
            [o.group_id for o in offsets],
            [o.topic for o in offsets],
            [o.partition for o in offsets],
            [o.next_offset for o in offsets],
        ]

    # -- schedules ----------------------------------------------------------------

    async def sync_schedules(self, rows: Sequence[dict[str, Any]]) -> None:
        """Write the configured schedules (config wins); disable those no longer listed."""
        async with _guard("sync schedules"):
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

    async def due_schedules(self) -> list[dict[str, Any]]:
        """Enabled schedules whose next tick has come."""
        async with _guard("due schedules"):
            return [dict(r) for r in await self._pool.fetch(self._q["due_schedules"])]

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
            async with _guard("fire schedule"):
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
        async with _guard("purge"), self._pool.acquire() as conn, conn.transaction():
            await conn.execute(self._q["purge_plan"])
            status = await conn.execute(self._q["purge_finished"], older_than, batch)
        return int(status.split()[-1])

    async def list_schedules(self) -> list[dict[str, Any]]:
        """Every schedule row, by name."""
        async with _guard("list schedules"):
            return [dict(r) for r in await self._pool.fetch(self._q["list_schedules"])]

    async def get_schedule(self, name: str) -> dict[str, Any] | None:
        """One schedule row."""
        async with _guard("get schedule"):
            row = await self._pool.fetchrow(self._q["get_schedule"], name)
        return None if row is None else dict(row)

    async def set_schedule_enabled(self, name: str, enabled: bool) -> bool:
        """Pause or resume a schedule; False if there is none by that name."""
        async with _guard("set schedule"):
            return (
                await self._pool.fetchval(self._q["set_schedule_enabled"], name, enabled)
                is not None
            )

    async def try_leadership(self, key: str) -> Leadership | None:
        """Take an advisory lock on a dedicated connection; the holder leads until it closes.

        The lock lives exactly as long as that connection: a leader that dies, or whose
        connection drops, loses it at once and another instance takes over.
        """
        async with _guard("leadership"):
            conn = await asyncpg.connect(self._dsn, server_settings=server_settings(self._schema))
            try:
                if await conn.fetchval(self._q["try_advisory_lock"], key):
                    return Leadership(conn)
            except BaseException:
                conn.terminate()
                raise
            await conn.close()
        return None

    async def _insert(self, columns: list[Any]) -> list[asyncpg.Record]:
        try:
            async with _guard("enqueue"):
                # One statement, rows and offsets: its own transaction, one round trip.
                rows: list[asyncpg.Record] = await self._pool.fetch(
                    self._q["insert_jobs"], *columns
                )
                return rows
        except asyncpg.PostgresError as exc:
            if _is_outage(exc):
                raise StoreUnavailable(f"enqueue: {type(exc).__name__}: {exc}") from exc
            # Anything else is about the rows (a NUL character jsonb refuses, an integer out
            # of range, JSON too deep for the server): the caller finds the row that did it.
            raise InvalidJobData(f"{type(exc).__name__}: {exc}") from exc

    async def stored_offsets(
        self, group_id: str, partitions: Sequence[tuple[str, int]]
    ) -> dict[tuple[str, int], int]:
        """The next offset stored for each (topic, partition) of a consumer group."""
        if not partitions:
            return {}
        async with _guard("offsets"):
            rows = await self._pool.fetch(
                self._q["stored_offsets"],
                group_id,
                [t for t, _ in partitions],
                [p for _, p in partitions],
            )
        return {(r["topic"], r["partition"]): r["next_offset"] for r in rows}

    async def list_offsets(self) -> list[dict[str, Any]]:
        """Every stored Kafka position (for operators)."""
        async with _guard("offsets"):
            rows = await self._pool.fetch(self._q["list_offsets"])
        return [dict(r) for r in rows]

    async def ids_by_dedup_key(self, keys: Sequence[str]) -> dict[str, int]:
        """Existing job ids for the given dedup keys."""
        async with _guard("lookup"):
            rows = await self._pool.fetch(self._q["ids_by_dedup_key"], list(keys))
        return {r["dedup_key"]: r["id"] for r in rows}

    async def claim(self, request: ClaimRequest) -> list[Job]:
        """Claim ready jobs for one worker."""
        queues = [q for q, n in request.per_queue.items() if n > 0]
        if not queues or request.limit <= 0:
            return []
        async with _guard("claim"):
            rows = await self._pool.fetch(
                self._q["claim_jobs"],
                queues,
                [request.per_queue[q] for q in queues],
                request.limit,
                request.worker_id,
                request.lease,
            )
        return [_claimed(r) for r in rows]

    async def complete_many(self, worker_id: str, outcomes: Sequence[Outcome]) -> int:
        """Write a batch of outcomes in one statement."""
        if not outcomes:
            return 0
        async with _guard("complete"):
            count = await self._pool.fetchval(
                self._q["complete_jobs"],
                [o.job_id for o in outcomes],
                [o.attempt for o in outcomes],
                [str(o.status) for o in outcomes],
                [o.duration for o in outcomes],
                [o.result_json for o in outcomes],
                [o.error for o in outcomes],
                [o.retry_in or 0.0 for o in outcomes],
                worker_id,
                # Job id -> position in the arrays above (1-based, as SQL arrays are); the
                # connection's jsonb codec serialises it.
                {str(o.job_id): i for i, o in enumerate(outcomes, 1)},
            )
        return int(count)

    async def renew_leases(self, worker_id: str, lease: float, job_ids: Sequence[int]) -> Renewal:
        """Extend the leases of the jobs this worker still holds; report which it holds and
        which of those were asked to cancel."""
        if not job_ids:
            return Renewal()
        async with _guard("renew leases"):
            rows = await self._pool.fetch(self._q["renew_leases"], worker_id, lease, list(job_ids))
        return Renewal(
            held=frozenset(r["id"] for r in rows),
            cancel=frozenset(r["id"] for r in rows if r["cancel_requested"]),
        )

    async def recover_expired_leases(self) -> list[int]:
        """Take back jobs of dead workers."""
        async with _guard("recover leases"):
            rows = await self._pool.fetch(self._q["recover_expired_leases"])
        return [r["id"] for r in rows]

    async def release_unknown(self, worker_id: str, known_ids: Sequence[int]) -> list[int]:
        """Give back running jobs of this worker that it does not know it runs."""
        async with _guard("release unknown"):
            rows = await self._pool.fetch(
                self._q["release_unknown_jobs"], worker_id, list(known_ids)
            )
        return [r["id"] for r in rows]

    async def release(self, worker_id: str, job_ids: Sequence[int]) -> list[int]:
        """Give unfinished jobs back at shutdown."""
        if not job_ids:
            return []
        async with _guard("release"):
            rows = await self._pool.fetch(self._q["release_jobs"], worker_id, list(job_ids))
        return [r["id"] for r in rows]

    async def cancel(self, job_id: int) -> str | None:
        """Cancel or flag a job and tell the worker running it."""
        async with _guard("cancel"):
            async with self._pool.acquire() as conn, conn.transaction():
                status = await conn.fetchval(self._q["cancel_job"], job_id)
                if status == "running":
                    await conn.execute(self._q["notify"], self._channel, f"cancel:{job_id}")
        return None if status is None else str(status)

    async def retry(self, job_ids: Sequence[int] = (), status: str | None = None) -> list[int]:
        """Requeue failed or cancelled jobs and wake the pools."""
        async with _guard("retry"):
            async with self._pool.acquire() as conn, conn.transaction():
                rows = await conn.fetch(
                    self._q["retry_jobs"], list(job_ids), status, self._default_max_attempts
                )
                if rows:
                    await conn.execute(self._q["notify"], self._channel, "jobs")
        return [r["id"] for r in rows]

    async def ready_backlog(self, cap: int) -> int:
        """Ready jobs, up to ``cap``."""
        async with _guard("backlog"):
            return int(await self._pool.fetchval(self._q["ready_backlog"], cap))

    async def existing(self, job_ids: Sequence[int]) -> set[int]:
        """Ids among these with a committed row."""
        if not job_ids:
            return set()
        async with _guard("existing"):
            rows = await self._pool.fetch(self._q["existing_ids"], list(job_ids))
        return {r["id"] for r in rows}

    async def get(self, job_id: int) -> Job | None:
        """One job by id."""
        async with _guard("get"):
            row = await self._pool.fetchrow(self._q["get_job"], job_id)
        return None if row is None else _job(row)

    async def list_jobs(
        self,
        status: str | None = None,
        queue: str | None = None,
        limit: int = 50,
        before_id: int | None = None,
    ) -> list[Job]:
        """Newest first; ``before_id`` pages on (keyset paging, no OFFSET)."""
        query = LIST_QUERY_BY_STATUS.get(status or "", "list_jobs")
        async with _guard("list"):
            rows = await self._pool.fetch(self._q[query], status, queue, limit, before_id)
        return [_job(r) for r in rows]

    async def runs(self, job_id: int) -> list[dict[str, Any]]:
        """Attempts of one job."""
        async with _guard("runs"):
            rows = await self._pool.fetch(self._q["job_runs"], job_id)
        return [dict(r) for r in rows]

    async def stats(self, finished: bool = True) -> dict[str, dict[str, int]]:
        """Counts by queue and status (without finished jobs: live ones only, cheaply)."""
        query = "count_by_queue_and_status" if finished else "count_live_by_queue_and_status"
        async with _guard("stats"):
            rows = await self._pool.fetch(self._q[query])
        out: dict[str, dict[str, int]] = {}
        for r in rows:
            out.setdefault(r["queue"], {})[r["status"]] = r["n"]
        return out

    async def set_progress(self, job_id: int, percent: int, note: str | None) -> None:
        """Store progress of a running job."""
        async with _guard("progress"):
            await self._pool.execute(self._q["set_progress"], job_id, percent, note)

    async def register_worker(self, worker_id: str, host: str, pid: int, version: str) -> None:
        """Insert this instance's row."""
        async with _guard("register worker"):
            await self._pool.execute(self._q["register_worker"], worker_id, host, pid, version)

    async def heartbeat_worker(self, worker_id: str, state: dict[str, Any]) -> None:
        """Refresh this instance's heartbeat."""
        async with _guard("worker heartbeat"):
            # The connection's jsonb codec serialises the dict itself.
            await self._pool.execute(self._q["heartbeat_worker"], worker_id, state)

    async def list_workers(self) -> list[dict[str, Any]]:
        """The workers table, oldest instance first."""
        async with _guard("list workers"):
            rows = await self._pool.fetch(self._q["list_workers"])
        return [dict(r) for r in rows]

    async def unregister_worker(self, worker_id: str) -> None:
        """Delete this instance's row."""
        async with _guard("unregister worker"):
            await self._pool.execute(self._q["unregister_worker"], worker_id)

    async def notify(self, message: str) -> None:
        """Send a notification on this schema's channel."""
        async with _guard("notify"):
            await self._pool.execute(self._q["notify"], self._channel, message)

    def _relay(self, on_notify: NotifyCallback) -> Callable[[Any, int, str, str], None]:
        def relay(_conn: Any, pid: int, _channel: str, message: str) -> None:
            # Our own inserts already woke our pool (Intake calls wake()); echoing them back
            # would cost a claim per batch. Cancel requests are always passed on.
            if message == "jobs" and pid in self._own_backends:
                return
            on_notify(message)

        return relay

    async def listen(self, on_notify: NotifyCallback, on_reconnect: Callable[[], None]) -> None:
        """LISTEN on a dedicated connection; reconnect with backoff and report each reconnect."""
        delay = 0.1
        connected_before = False
        while True:
            try:
                conn = await asyncpg.connect(
                    self._dsn, server_settings=server_settings(self._schema)
                )
            except (*_UNAVAILABLE, asyncpg.PostgresError) as exc:
                log.warning("listen_connect_failed", error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _c, lost=lost: lost.set())
            try:
                await conn.add_listener(self._channel, self._relay(on_notify))
                delay = 0.1
                if connected_before:
                    log.info("listen_reconnected", channel=self._channel)
                    # Anything inserted while we were deaf is found by a catch-up claim.
                    on_reconnect()
                connected_before = True
                while not lost.is_set():
                    # A silent (half-open) connection sends no termination: ping it now and then.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(5.0):
                            await lost.wait()
                        break
                    await conn.fetchval("SELECT 1", timeout=5.0)
            except (*_UNAVAILABLE, asyncpg.PostgresError) as exc:
                log.warning("listen_connection_lost", error=str(exc))
            finally:
                if not conn.is_closed():
                    conn.terminate()
            if lost.is_set():
                log.warning("listen_connection_lost", error="connection closed")
