"""Migrations as operators meet them: a role that may not create, settings on the role, a
clashing object of their own, another migrator holding the lock. Each ends in a clear
message and exit code, or in a finished migration, never in a traceback."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from jobwire.store.base import StoreUnavailable
from jobwire.store.migrate import known_migrations, latest_version, migrate, migration_script
from tests.conftest import ADMIN_URL, db_url
from tests.support.daemon import jobwire
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(120)


async def _execute(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _run(url: str, sql: str) -> None:
    asyncio.run(_execute(url, sql))


def _as(url: str, role: str) -> str:
    """The same database's URL for another role (trust authentication: no password)."""
    return url.replace("://postgres@", f"://{role}@", 1)


@pytest.fixture
def empty_db() -> Iterator[str]:
    """A database nothing of jobwire's is in, where PUBLIC may not create (as hardened)."""
    name = f"jwempty_{uuid.uuid4().hex[:10]}"
    try:
        _run(ADMIN_URL, f'CREATE DATABASE "{name}"')
    except OSError as exc:
        pytest.skip(f"no PostgreSQL at {ADMIN_URL}: {exc}")
    _run(db_url(name), f'REVOKE CREATE ON DATABASE "{name}" FROM PUBLIC')
    yield db_url(name)
    _run(ADMIN_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def role(empty_db: str) -> Iterator[str]:
    """A login role of the test's own, without CREATE on the database."""
    name = f"jwrole_{uuid.uuid4().hex[:10]}"
    _run(ADMIN_URL, f'CREATE ROLE "{name}" LOGIN')
    yield name
    # The database first: it holds the role's grants and whatever the role created.
    _run(ADMIN_URL, f'DROP DATABASE IF EXISTS "{empty_db.rpartition("/")[2]}" WITH (FORCE)')
    _run(ADMIN_URL, f'DROP ROLE IF EXISTS "{name}"')


def test_a_role_that_may_not_create_starts_on_a_current_schema(empty_db: str, role: str) -> None:
    # The owner migrated; the daemons' role may only read and write the rows. With the
    # default database.migrate: true every start failed on CREATE SCHEMA IF NOT EXISTS.
    assert asyncio.run(migrate(empty_db, "jobwire"))
    _run(
        empty_db,
        f'GRANT USAGE ON SCHEMA jobwire TO "{role}";'
        f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA jobwire TO "{role}";',
    )
    assert asyncio.run(migrate(_as(empty_db, role), "jobwire")) == []


def test_a_migration_the_role_may_not_run_is_exit_2_saying_what_to_do(
    empty_db: str, role: str
) -> None:
    out = jobwire("migrate", "--database-url", _as(empty_db, role), check=False)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert "permission denied for database" in out.stderr
    assert "run `jobwire migrate` as a role that owns schema jobwire" in out.stderr
    assert "then start on the migrated schema" in out.stderr


def test_an_operator_object_in_the_way_names_the_migration_and_keeps_the_rest(
    empty_db: str,
) -> None:
    before = known_migrations()[:10]
    _run(empty_db, migration_script("jobwire", before))
    _run(
        empty_db,
        "CREATE TABLE jobwire.outbox (mine text); INSERT INTO jobwire.jobs (handler) VALUES ('h')",
    )
    out = jobwire("migrate", "--database-url", empty_db, check=False)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert "migration 0011_outbox failed" in out.stderr
    assert 'relation "outbox" already exists' in out.stderr

    async def state() -> tuple[int, int]:
        conn = await asyncpg.connect(empty_db)
        try:
            version = await conn.fetchval("SELECT max(version) FROM jobwire.schema_migrations")
            jobs = await conn.fetchval("SELECT count(*) FROM jobwire.jobs")
        finally:
            await conn.close()
        return version, jobs

    assert asyncio.run(state()) == (before[-1].version, 1)
    # Once the operator moves theirs away, the same command finishes the work.
    _run(empty_db, "ALTER TABLE jobwire.outbox SET SCHEMA public")
    assert jobwire("migrate", "--database-url", empty_db).returncode == 0
    assert asyncio.run(state()) == (latest_version(), 1)


@pytest.fixture
async def locked_jobs(empty_db: str) -> AsyncIterator[asyncpg.Connection]:
    """A schema one migration behind, and a session holding a lock on its jobs table."""
    await _execute(empty_db, migration_script("jobwire", known_migrations()[:11]))
    conn = await asyncpg.connect(empty_db)
    await conn.execute("BEGIN; LOCK TABLE jobwire.jobs IN ACCESS SHARE MODE")
    yield conn
    await conn.close()


async def _waited(url: str, seconds: float) -> bool:
    """Whether a session has waited for a lock for longer than ``seconds``."""
    conn = await asyncpg.connect(url)
    try:
        return bool(
            await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                " AND now() - query_start > make_interval(secs => $1))",
                seconds,
            )
        )
    finally:
        await conn.close()


async def test_a_statement_timeout_on_the_role_does_not_cancel_a_migration(
    empty_db: str, role: str, locked_jobs: asyncpg.Connection
) -> None:
    # A migration that waits (a lock, a large table's index build) longer than the role's
    # statement_timeout was cancelled at every start.
    await _execute(
        empty_db,
        f'ALTER ROLE "{role}" SUPERUSER; ALTER ROLE "{role}" SET statement_timeout = \'300ms\'',
    )
    task = asyncio.create_task(migrate(_as(empty_db, role), "jobwire"))
    await wait_for(lambda: _waited(empty_db, 0.6), what="the migration waiting past 300ms")
    assert not task.done()
    await locked_jobs.execute("COMMIT")
    assert await asyncio.wait_for(task, 30) == [m.label for m in known_migrations()[11:]]


async def test_a_migrator_waiting_for_another_says_whose_lock_it_waits_for(
    empty_db: str, locked_jobs: asyncpg.Connection
) -> None:
    holder = await asyncpg.connect(empty_db)
    try:
        await holder.execute("SELECT pg_advisory_lock(hashtext('jobwire-migrate:jobwire'))")
        told: list[list[int]] = []
        await locked_jobs.execute("COMMIT")
        task = asyncio.create_task(migrate(empty_db, "jobwire", on_waiting=told.append))
        await wait_for(lambda: told, what="on_waiting")
        assert told == [[holder.get_server_pid()]]
        assert not task.done()
        await holder.execute("SELECT pg_advisory_unlock(hashtext('jobwire-migrate:jobwire'))")
        assert len(await asyncio.wait_for(task, 30)) == len(known_migrations()) - 11
    finally:
        await holder.close()


async def _waiting_sessions(url: str) -> list[int]:
    """The server pids of sessions waiting for a lock in this database."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
    finally:
        await conn.close()
    return [r["pid"] for r in rows]


async def test_a_migrator_killed_while_waiting_for_a_lock_leaves_no_session_behind(
    empty_db: str, locked_jobs: asyncpg.Connection
) -> None:
    # Its session stayed in the queue for jobs' strongest lock, holding up every daemon's
    # reads and writes behind it, and held the migration lock, until the blocker ended.
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "jobwire",
        "migrate",
        "--database-url",
        empty_db,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        stdin=asyncio.subprocess.DEVNULL,
    )
    try:
        await wait_for(lambda: _waiting_sessions(empty_db), what="the migration waiting")
    finally:
        proc.kill()
        await proc.wait()
    await wait_for(
        lambda: _no_waiting(empty_db), timeout=15, what="the killed migrator's session gone"
    )
    # The blocker still holds its lock: the migration lock is free for the next migrator.
    assert not await locked_jobs.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))"
    )
    await locked_jobs.execute("COMMIT")
    assert await migrate(empty_db, "jobwire") == [m.label for m in known_migrations()[11:]]


async def _no_waiting(url: str) -> bool:
    return not await _waiting_sessions(url)


def test_the_schema_owner_migrates_without_create_on_the_database(empty_db: str, role: str) -> None:
    # CREATE SCHEMA IF NOT EXISTS checks the database privilege before it looks: the
    # owner the refusal message sends the operator to was refused the same way.
    _run(empty_db, f'CREATE SCHEMA jobwire AUTHORIZATION "{role}"')
    applied = asyncio.run(migrate(_as(empty_db, role), "jobwire"))
    assert applied == [m.label for m in known_migrations()]


def test_a_superuser_migrating_a_schema_another_role_owns_creates_as_that_role(
    empty_db: str, role: str
) -> None:
    # The owner migrated up to 0010; `jobwire migrate` then ran as postgres (a superuser).
    # The tables it created were postgres's, and the daemons, connected as the owner, were
    # refused every statement on them ("permission denied for table outbox").
    _run(empty_db, f'CREATE SCHEMA jobwire AUTHORIZATION "{role}"')
    _run(
        _as(empty_db, role),
        migration_script("jobwire", known_migrations()[:10]).replace(
            "CREATE SCHEMA IF NOT EXISTS", "-- CREATE SCHEMA IF NOT EXISTS"
        ),
    )
    assert asyncio.run(migrate(empty_db, "jobwire"))

    async def owners() -> set[str]:
        conn = await asyncpg.connect(empty_db)
        try:
            rows = await conn.fetch(
                "SELECT pg_get_userbyid(relowner) AS owner FROM pg_class"
                " WHERE relnamespace = 'jobwire'::regnamespace"
                " UNION SELECT pg_get_userbyid(proowner) FROM pg_proc"
                " WHERE pronamespace = 'jobwire'::regnamespace"
            )
        finally:
            await conn.close()
        return {r["owner"] for r in rows}

    assert asyncio.run(owners()) == {role}
    out = jobwire("outbox", "list", "--database-url", _as(empty_db, role), check=False)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("command", [["jobs", "list"], ["migrate", "--status"]])
def test_a_role_without_usage_on_the_schema_is_told_what_it_lacks(
    empty_db: str, role: str, command: list[str]
) -> None:
    # The schema check of every command read schema_migrations unguarded: a traceback.
    assert asyncio.run(migrate(empty_db, "jobwire"))
    out = jobwire(*command, "--database-url", _as(empty_db, role), check=False)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert "permission denied for schema jobwire" in out.stderr
    assert "USAGE on schema jobwire" in out.stderr


async def test_a_lock_timeout_on_the_role_is_an_outage_naming_the_migration(
    empty_db: str, role: str, locked_jobs: asyncpg.Connection
) -> None:
    # Retried like an unavailable database; the message said only "LockNotAvailableError"
    # (a traceback before), not which migration waited for what.
    await _execute(
        empty_db,
        f'ALTER ROLE "{role}" SUPERUSER; ALTER ROLE "{role}" SET lock_timeout = \'200ms\'',
    )
    with pytest.raises(StoreUnavailable) as raised:
        await migrate(_as(empty_db, role), "jobwire")
    assert "migration 0012_job_dependencies" in str(raised.value)
    assert "lock timeout" in str(raised.value)
