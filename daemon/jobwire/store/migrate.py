"""Schema migrations under an advisory lock, the schema version check, and the leader's lock
held on a connection."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import structlog

from jobwire.store.base import StoreUnavailable
from jobwire.store.pg_base import UNAVAILABLE, connecting, guard, is_outage
from jobwire.store.queries import migrations, queries

log = structlog.get_logger("jobwire.store")


@dataclass(frozen=True)
class Migration:
    """One numbered SQL migration shipped with this jobwire."""

    version: int
    name: str
    sql: str

    @property
    def label(self) -> str:
        """``0004_history_indexes``."""
        return f"{self.version:04d}_{self.name}"


@dataclass(frozen=True)
class AppliedMigration:
    """One row of schema_migrations."""

    version: int
    name: str
    applied_at: datetime | None

    @property
    def label(self) -> str:
        """``0004_history_indexes``."""
        return f"{self.version:04d}_{self.name}"


def known_migrations() -> list[Migration]:
    """Every migration this jobwire ships, in order."""
    return [Migration(version, name, sql) for version, name, sql in migrations()]


def latest_version() -> int:
    """The schema version this jobwire needs (its last migration)."""
    return max((m.version for m in known_migrations()), default=0)


class SchemaMismatch(Exception):
    """The schema is missing, behind or ahead of what this jobwire knows; says what to run."""

    def __init__(self, schema: str, found: int | None, needed: int, missing: list[str]) -> None:
        self.schema = schema
        self.found = found  # None: the schema does not exist
        self.needed = needed
        self.missing = missing  # pending migrations (empty when the schema is ahead)
        super().__init__(self._message())

    @property
    def newer(self) -> bool:
        """The schema was migrated by a newer jobwire."""
        return not self.missing and self.found is not None

    def _message(self) -> str:
        if self.found is None:
            return f"schema {self.schema} does not exist: run `jobwire migrate`"
        if self.newer:
            return (
                f"schema {self.schema} is at {self.found:04d}, newer than this jobwire knows "
                f"({self.needed:04d}): upgrade jobwire"
            )
        if self.found >= self.needed:
            # A gap below the last applied one (restored or hand-edited schema_migrations).
            return (
                f"schema {self.schema} lacks migration {', '.join(self.missing)}: "
                "run `jobwire migrate`"
            )
        return (
            f"schema {self.schema} is at {self.found:04d}, this jobwire needs "
            f"{self.needed:04d}: run `jobwire migrate`"
        )


@dataclass(frozen=True)
class SchemaState:
    """What a schema holds compared with the migrations this jobwire ships."""

    schema: str
    exists: bool
    applied: list[AppliedMigration]
    known: list[Migration]

    @property
    def version(self) -> int | None:
        """The highest applied version; 0 for a schema without any, None for no schema."""
        if not self.exists:
            return None
        return max((a.version for a in self.applied), default=0)

    @property
    def pending(self) -> list[Migration]:
        """Migrations this jobwire ships that the schema lacks, in order."""
        done = {a.version for a in self.applied}
        return [m for m in self.known if m.version not in done]

    @property
    def unknown(self) -> list[AppliedMigration]:
        """Applied migrations this jobwire does not ship (a newer jobwire's)."""
        known = {m.version for m in self.known}
        return [a for a in self.applied if a.version not in known]

    def mismatch(self) -> SchemaMismatch | None:
        """Why this jobwire cannot use the schema as it is, or None when it can."""
        needed = max((m.version for m in self.known), default=0)
        if self.unknown:
            return SchemaMismatch(self.schema, self.version, needed, [])
        if not self.exists or self.pending:
            return SchemaMismatch(
                self.schema, self.version, needed, [m.label for m in self.pending]
            )
        return None


def _quoted(schema: str) -> str:
    # DDL takes no parameters: the schema is an identifier, quoted as one.
    return '"' + schema.replace('"', '""') + '"'


async def schema_state(conn: asyncpg.Connection, schema: str) -> SchemaState:
    """Read the schema's applied migrations without creating or locking anything."""
    known = known_migrations()
    # Read before anything exists: the schema and its schema_migrations table may be
    # missing, and looking must create neither (read commands never change the database).
    q = queries()
    if not await conn.fetchval(q["schema_exists"], schema):
        return SchemaState(schema, False, [], known)
    if not await conn.fetchval(q["schema_migrations_exists"], schema):
        return SchemaState(schema, True, [], known)
    rows = await conn.fetch(q["applied_migrations"].format(schema=_quoted(schema)))
    applied = [AppliedMigration(r["version"], r["name"], r["applied_at"]) for r in rows]
    return SchemaState(schema, True, applied, known)


async def schema_version(conn: asyncpg.Connection, schema: str) -> int | None:
    """The schema's highest applied migration; 0 with none recorded, None with no schema."""
    return (await schema_state(conn, schema)).version


async def check_schema(conn: asyncpg.Connection, schema: str) -> None:
    """Raise SchemaMismatch unless the schema is exactly what this jobwire needs."""
    problem = (await schema_state(conn, schema)).mismatch()
    if problem is not None:
        raise problem


class SchemaUnreadable(Exception):
    """The role may not read the schema's migrations: says what it lacks."""

    def __init__(self, schema: str, exc: asyncpg.PostgresError) -> None:
        self.schema = schema
        super().__init__(
            f"schema {schema}: its migrations cannot be read: {_reason(exc)}: connect as a "
            f"role with USAGE on schema {schema} and privileges on its tables"
        )


def _reason(exc: asyncpg.PostgresError) -> str:
    """The server's error on one line: its class, message, detail and hint."""
    # The message alone (str() may add DETAIL on lines of its own).
    message = getattr(exc, "message", None) or str(exc).splitlines()[0]
    reason = f"{type(exc).__name__}: {message}"
    for extra in ("detail", "hint"):
        value = getattr(exc, extra, None)
        if value:
            reason += f" ({extra}: {value})"
    return reason


async def read_schema_state(dsn: str, schema: str) -> SchemaState:
    """Connect and read the schema's state (read only: nothing is created)."""
    async with connecting():
        conn = await asyncpg.connect(dsn)
    try:
        async with guard("schema check"):
            try:
                return await schema_state(conn, schema)
            except asyncpg.PostgresError as exc:
                # A role without USAGE on the schema: every command ended in a traceback.
                if is_outage(exc):
                    raise
                raise SchemaUnreadable(schema, exc) from None
    finally:
        await conn.close()


async def check_schema_at(dsn: str, schema: str) -> None:
    """Connect and raise SchemaMismatch unless the schema is what this jobwire needs."""
    problem = (await read_schema_state(dsn, schema)).mismatch()
    if problem is not None:
        raise problem


def migration_script(schema: str, pending: list[Migration]) -> str:
    """The SQL ``jobwire migrate`` would run for these migrations, as a psql script."""
    q = queries()
    quoted = _quoted(schema)
    parts = [
        f"-- jobwire migrations for schema {schema}: what `jobwire migrate` would run.",
        q["create_schema"].format(schema=quoted) + ";",
        q["use_schema"].format(schema=quoted) + ";",
        q["create_schema_migrations"] + ";",
    ]
    for m in pending:
        record = q["record_migration"].replace("$1", str(m.version)).replace("$2", f"'{m.name}'")
        parts.append(f"\n-- {m.label}\nBEGIN;\n{m.sql.strip()}\n{record};\nCOMMIT;")
    return "\n".join(parts) + "\n"


class MigrationFailed(Exception):
    """The server refused a migration (or the schema's set-up): says which, why, what to do."""

    def __init__(self, schema: str, step: str, exc: asyncpg.PostgresError) -> None:
        self.schema = schema
        self.step = step
        self.sqlstate = str(getattr(exc, "sqlstate", "") or "")
        reason = _reason(exc)
        if isinstance(exc, asyncpg.InsufficientPrivilegeError):
            todo = (
                f"run `jobwire migrate` as a role that owns schema {schema} (or may create it); "
                "daemons of a role that may not then start on the migrated schema"
            )
        else:
            todo = (
                "fix the cause and run `jobwire migrate` again "
                "(`jobwire migrate --sql` prints the statements)"
            )
        super().__init__(
            f"schema {schema}: {step} failed: {reason}; nothing of it was applied: {todo}"
        )


async def migrate(
    dsn: str,
    schema: str,
    *,
    on_applying: Callable[[str], None] | None = None,
    on_applied: Callable[[str, float], None] | None = None,
    on_waiting: Callable[[list[int]], None] | None = None,
) -> list[str]:
    """Apply missing numbered migrations under an advisory lock; returns the names applied.

    Raises SchemaMismatch, applying nothing, when the schema holds migrations this jobwire
    does not know (a newer jobwire migrated it); MigrationFailed when the server refuses a
    step for a reason retrying does not change (a privilege, a clashing object); and
    StoreUnavailable when it cannot do it now (a lock not granted in time, a read-only
    server, the connection lost).
    """
    async with connecting():
        # statement_timeout 0, as on the store's connections: a timeout set on the role or
        # database cancelled the index builds of a large table at every start, for ever.
        conn = await asyncpg.connect(dsn, server_settings={"statement_timeout": "0"})
    try:
        await _end_with_client(conn)
        async with guard("migrate"):
            try:
                # Nothing to do is decided by reading only: a daemon's role that may not
                # create in the database (migrations are run by the owner) starts as long
                # as the schema is current. CREATE SCHEMA IF NOT EXISTS still needs that.
                state = await schema_state(conn, schema)
                problem = state.mismatch()
                if problem is None:
                    return []
                if problem.newer:
                    raise problem
                return await _migrate_locked(conn, schema, on_applying, on_applied, on_waiting)
            except asyncpg.PostgresError as exc:
                if is_outage(exc):
                    raise
                raise MigrationFailed(schema, "reading its migrations", exc) from None
    finally:
        await conn.close()


async def _end_with_client(conn: asyncpg.Connection) -> None:
    """Have the server end this session soon after its client is gone."""
    # A migrator killed outright (SIGKILL, OOM, a systemd stop past its timeout) while its
    # statement waited for a lock on jobs left its session waiting: in the queue for that
    # table's strongest lock, where it held up every daemon's reads and writes of jobs, and
    # holding the migration lock, until the blocker ended. PostgreSQL 14 checks the socket
    # while a statement runs when asked; older servers, and platforms without the check,
    # refuse the setting, and the session then lives as before.
    if conn.get_server_version().major < 14:
        return
    with contextlib.suppress(asyncpg.PostgresError):
        await conn.execute(queries()["check_client_connection"])


async def _as_schema_owner(conn: asyncpg.Connection, schema: str) -> None:
    """Create what follows as the schema's owner, when this role may act as it."""
    # A superuser (or a member of the owner role) running `jobwire migrate` on a schema
    # another role owns made the new tables its own: the daemons, connected as the owner,
    # then got "permission denied for table outbox" from every statement on it.
    row = await conn.fetchrow(queries()["schema_owner"], schema)
    if row is not None and row["owner"] != row["me"] and row["member"]:
        await conn.execute(queries()["set_role"].format(role=_quoted(row["owner"])))
        log.info("migration_as_owner", schema=schema, owner=row["owner"], user=row["me"])


async def _migrate_locked(
    conn: asyncpg.Connection,
    schema: str,
    on_applying: Callable[[str], None] | None,
    on_applied: Callable[[str, float], None] | None,
    on_waiting: Callable[[list[int]], None] | None,
) -> list[str]:
    q = queries()
    applied: list[str] = []
    lock_key = f"jobwire-migrate:{schema}"
    # One migrator per schema at a time, whichever instance starts first. One that waits
    # says so, with the holder's server pid: a migrator killed while its statement waited
    # for a lock leaves its server session (and this lock) until that statement ends.
    if not await conn.fetchval(q["try_advisory_lock"], lock_key):
        if on_waiting is not None:
            holders = await conn.fetch(q["advisory_lock_holders"], lock_key)
            on_waiting([r["pid"] for r in holders])
        await conn.execute(q["advisory_lock"], lock_key)
    try:
        quoted = _quoted(schema)
        step = "creating it"
        try:
            # Only when missing: CREATE SCHEMA IF NOT EXISTS checks the privilege to create
            # in the database first, which the schema's own owner may well not have.
            if not await conn.fetchval(q["schema_exists"], schema):
                await conn.execute(q["create_schema"].format(schema=quoted))
            step = "taking its owner's role"
            await _as_schema_owner(conn, schema)
            await conn.execute(q["use_schema"].format(schema=quoted))
            await conn.execute(q["create_schema_migrations"])
            step = "reading its migrations"
            state = await schema_state(conn, schema)
            if state.unknown:
                problem = state.mismatch()
                assert problem is not None
                raise problem
            for m in state.pending:
                step = f"migration {m.label}"
                if on_applying is not None:
                    on_applying(m.label)
                started = time.monotonic()
                async with conn.transaction():
                    await conn.execute(m.sql)
                    await conn.execute(q["record_migration"], m.version, m.name)
                applied.append(m.label)
                if on_applied is not None:
                    on_applied(m.label, time.monotonic() - started)
        except asyncpg.PostgresError as exc:
            if is_outage(exc):
                # Retried as an outage (a lock_timeout on the role, a read-only server):
                # named, so that a lock waited for is not taken for an unreachable server.
                raise StoreUnavailable(f"schema {schema}: {step}: {_reason(exc)}") from exc
            # Its transaction rolled back: the step left nothing behind, and says so.
            raise MigrationFailed(schema, step, exc) from None
    finally:
        # A lost connection has released the lock already; its error is the one to report.
        with contextlib.suppress(*UNAVAILABLE, asyncpg.PostgresError):
            await conn.execute(q["advisory_unlock"], lock_key)
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
            await self._conn.fetchval(queries()["ping"], timeout=5)
        except (*UNAVAILABLE, asyncpg.PostgresError):
            return False
        return True

    async def release(self) -> None:
        """Close the connection, which releases the lock."""
        with contextlib.suppress(Exception):
            await self._conn.close(timeout=5)
        self._conn.terminate()
