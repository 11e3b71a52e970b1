"""Only `migrate` and `run` change the schema; every other command refuses one it does not
match, and needs only the database from the config."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from jobwire.config import parse_config
from jobwire.store.migrate import (
    AppliedMigration,
    SchemaState,
    known_migrations,
    latest_version,
    migrate,
    migration_script,
)
from jobwire.store.postgres import PostgresStore
from tests.conftest import ADMIN_URL, db_url
from tests.support.daemon import REPO, Daemon, jobwire, write_config

pytestmark = pytest.mark.timeout(120)

LATEST = f"{latest_version():04d}"
LABELS = [m.label for m in known_migrations()]


def _admin(sql: str) -> None:
    async def go() -> None:
        conn = await asyncpg.connect(ADMIN_URL)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(go())


def fetchval(url: str, sql: str) -> Any:
    async def go() -> Any:
        conn = await asyncpg.connect(url)
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    return asyncio.run(go())


def execute(url: str, sql: str) -> None:
    """Run statements (several allowed: the simple query protocol, as psql)."""

    async def go() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(go())


@pytest.fixture
def empty_url() -> Iterator[str]:
    """A database with nothing of jobwire's in it."""
    name = f"jwempty_{uuid.uuid4().hex[:10]}"
    try:
        _admin(f'CREATE DATABASE "{name}"')
    except OSError as exc:
        pytest.skip(f"no PostgreSQL at {ADMIN_URL}: {exc}")
    yield db_url(name)
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def behind_url(empty_url: str) -> str:
    """A database migrated by the previous jobwire: every migration but the last."""
    execute(empty_url, migration_script("jobwire", known_migrations()[:-1]))
    return empty_url


def has_schema(url: str) -> bool:
    return bool(fetchval(url, "SELECT count(*) FROM pg_namespace WHERE nspname = 'jobwire'"))


def versions(url: str) -> list[int]:
    """The versions recorded in jobwire.schema_migrations, in order."""

    async def go() -> list[int]:
        conn = await asyncpg.connect(url)
        try:
            rows = await conn.fetch("SELECT version FROM jobwire.schema_migrations ORDER BY 1")
        finally:
            await conn.close()
        return [r["version"] for r in rows]

    return asyncio.run(go())


def jobwire_in(cwd: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    """The CLI run from ``cwd`` (where ./jobwire.yaml is looked up), without a config env."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("JOBWIRE_")}
    return subprocess.run(
        [sys.executable, "-m", "jobwire", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**environ, "PYTHONPATH": str(REPO / "daemon"), **(env or {})},
        stdin=subprocess.DEVNULL,
    )


# -- the check itself, without a database ------------------------------------------------


def _state(exists: bool, applied: list[int]) -> SchemaState:
    rows = [AppliedMigration(v, f"m{v}", None) for v in applied]
    return SchemaState("jobwire", exists, rows, known_migrations())


def test_mismatch_messages_say_what_to_run() -> None:
    every = [m.version for m in known_migrations()]
    assert _state(True, every).mismatch() is None
    missing = _state(False, []).mismatch()
    assert str(missing) == "schema jobwire does not exist: run `jobwire migrate`"
    behind = _state(True, every[:-1]).mismatch()
    assert str(behind) == (
        f"schema jobwire is at {every[-2]:04d}, this jobwire needs {LATEST}: run `jobwire migrate`"
    )
    ahead = _state(True, [*every, 99]).mismatch()
    assert ahead is not None and ahead.newer
    assert str(ahead) == (
        f"schema jobwire is at 0099, newer than this jobwire knows ({LATEST}): upgrade jobwire"
    )
    gap = _state(True, every[:1] + every[2:]).mismatch()
    assert gap is not None and LABELS[1] in str(gap) and "jobwire migrate" in str(gap)


def test_a_command_reading_only_the_database_ignores_other_sections() -> None:
    text = (
        "database: {url: '${JW_TEST_DB:-embedded}', schema: other}\n"
        "http: {admin_token: '${JW_TEST_UNSET_TOKEN}'}\n"
    )
    config = parse_config(text, "x.yaml", env={}, sections=("database", "logging"))
    assert config.database.db_schema == "other" and config.http.admin_token is None
    given = parse_config(
        "database: {url: '${JW_TEST_UNSET_URL}'}\n",
        "x.yaml",
        env={},
        sections=("database",),
        database_url="postgresql://h/db",
    )
    assert given.database.url == "postgresql://h/db"


# -- read commands change nothing and refuse a schema they do not match ------------------


def test_jobs_list_on_an_unmigrated_database_refuses_and_creates_nothing(
    empty_url: str,
) -> None:
    for args in (["jobs", "list"], ["stats"], ["schedules", "list"], ["jobs", "show", "1"]):
        proc = jobwire(*args, "--database-url", empty_url, check=False)
        assert proc.returncode == 2, proc.stderr
        assert "schema jobwire does not exist: run `jobwire migrate`" in proc.stderr
    assert not has_schema(empty_url)


def test_a_schema_missing_the_last_migration_is_refused(behind_url: str) -> None:
    proc = jobwire("jobs", "list", "--database-url", behind_url, check=False)
    assert proc.returncode == 2
    previous = f"{latest_version() - 1:04d}"
    assert (
        f"jobwire: schema jobwire is at {previous}, this jobwire needs {LATEST}: "
        "run `jobwire migrate`" in proc.stderr
    )
    # Still missing: refusing is all it did.
    assert latest_version() not in versions(behind_url)


def test_a_newer_schema_is_refused_by_every_command(database_url: str) -> None:
    fetchval(database_url, "INSERT INTO jobwire.schema_migrations VALUES (9999, 'future')")
    expected = f"schema jobwire is at 9999, newer than this jobwire knows ({LATEST}): upgrade"
    for args in (["jobs", "list"], ["migrate"], ["migrate", "--dry-run"], ["run", "--no-migrate"]):
        proc = jobwire(*args, "--database-url", database_url, check=False)
        assert proc.returncode == 2, (args, proc.stderr)
        assert expected in proc.stderr, (args, proc.stderr)
    assert versions(database_url)[-1] == 9999


# -- migrate -------------------------------------------------------------------------------


def test_migrate_reports_what_it_applied_then_up_to_date(empty_url: str) -> None:
    out = jobwire("migrate", "--database-url", empty_url).stdout.splitlines()
    assert [line.split(" (")[0] for line in out[:-1]] == [f"applied {x}" for x in LABELS]
    assert out[-1] == f"schema jobwire is now at {LATEST}"
    again = jobwire("migrate", "--database-url", empty_url).stdout
    assert again.strip() == f"schema jobwire is up to date at {LATEST}"
    assert jobwire("jobs", "list", "--database-url", empty_url).returncode == 0


def test_migrate_status_lists_applied_and_pending(behind_url: str) -> None:
    proc = jobwire("migrate", "--status", "--database-url", behind_url, check=False)
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert [line.split()[:2] for line in lines[1:-1]] == [["applied", x] for x in LABELS[:-1]] + [
        ["pending", LABELS[-1]]
    ]
    assert "run `jobwire migrate`" in lines[-1]
    out = jobwire("migrate", "--database-url", behind_url).stdout.splitlines()
    assert [line.split(" (")[0] for line in out] == [
        f"applied {LABELS[-1]}",
        f"schema jobwire is now at {LATEST}",
    ]
    proc = jobwire("migrate", "--status", "--database-url", behind_url, check=False)
    assert proc.returncode == 0 and proc.stdout.splitlines()[-1] == "up to date"


def test_migrate_dry_run_applies_nothing(behind_url: str) -> None:
    out = jobwire("migrate", "--dry-run", "--database-url", behind_url).stdout
    assert f"would apply {LABELS[-1]}" in out and LABELS[0] not in out
    assert latest_version() not in versions(behind_url)


def test_migrate_dry_run_on_an_empty_database_creates_nothing(empty_url: str) -> None:
    out = jobwire("migrate", "--dry-run", "--database-url", empty_url).stdout
    assert out.splitlines()[: len(LABELS)] == [f"would apply {x}" for x in LABELS]
    assert not has_schema(empty_url)


def test_migrate_sql_prints_the_script_and_runs_nothing(empty_url: str) -> None:
    script = jobwire("migrate", "--sql", "--database-url", empty_url).stdout
    assert "CREATE TABLE jobs (" in script
    assert all(f"-- {x}" in script for x in LABELS)
    assert not has_schema(empty_url)
    # The script is what migrate would do: applied by psql's equivalent, the schema is current.
    execute(empty_url, script)
    assert versions(empty_url) == [m.version for m in known_migrations()]
    assert jobwire("jobs", "list", "--database-url", empty_url).returncode == 0


def test_run_no_migrate_refuses_an_unmigrated_database(empty_url: str, tmp_path: Path) -> None:
    proc = jobwire("run", "--no-migrate", "--database-url", empty_url, check=False, timeout=60)
    assert proc.returncode == 2
    assert "schema jobwire does not exist: run `jobwire migrate`" in proc.stderr
    config = write_config(
        tmp_path / "jobwire.yaml", {"database": {"url": empty_url, "migrate": False}}
    )
    proc = jobwire("run", "-c", str(config), check=False, timeout=60)
    assert proc.returncode == 2 and "run `jobwire migrate`" in proc.stderr
    assert not has_schema(empty_url)


# -- read commands need the database alone -------------------------------------------------


def test_jobs_list_needs_no_other_secret_nor_any_config(database_url: str, tmp_path: Path) -> None:
    (tmp_path / "jobwire.yaml").write_text(
        "database: {url: '${JW_TEST_UNSET_DB}'}\n"
        "http: {admin_token: '${JW_TEST_UNSET_ADMIN_TOKEN}'}\n"
    )
    # The daemon's own view: the unset variables are errors.
    assert jobwire_in(tmp_path, "check-config").returncode == 2
    proc = jobwire_in(tmp_path, "jobs", "list", "--database-url", database_url)
    assert proc.returncode == 0, proc.stderr
    assert "STATUS" in proc.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = jobwire_in(empty, "stats", "--database-url", database_url)
    assert proc.returncode == 0, proc.stderr
    proc = jobwire_in(empty, "jobs", "list", env={"JOBWIRE_DATABASE_URL": database_url})
    assert proc.returncode == 0, proc.stderr


def test_schema_option_picks_another_schema(database_url: str) -> None:
    asyncio.run(migrate(database_url, "jobwire_b"))
    fetchval(database_url, "DROP SCHEMA jobwire CASCADE")
    args = ("jobs", "list", "--database-url", database_url)
    assert jobwire(*args, check=False).returncode == 2
    assert jobwire(*args, "--schema", "jobwire_b").returncode == 0


# -- run migrates and tells systemd --------------------------------------------------------


def test_run_migrates_and_tells_systemd_what_it_applies(empty_url: str, tmp_path: Path) -> None:
    address = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(address)
    listener.settimeout(0.2)
    config = write_config(tmp_path / "jobwire.yaml", {"database": {"url": empty_url}})
    daemon = Daemon(config, tmp_path / "daemon.log", env={"NOTIFY_SOCKET": address})
    received: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while not any("READY=1" in m for m in received):
            assert time.monotonic() < deadline, received
            try:
                received.append(listener.recv(4096).decode())
            except TimeoutError:
                continue
        assert daemon.terminate() == 0
    finally:
        daemon.stop_quietly()
        listener.close()
    statuses = [m for m in received if "STATUS=applying migration" in m]
    assert [m.splitlines()[0] for m in statuses] == [
        f"STATUS=applying migration {x}" for x in LABELS
    ]
    assert all("EXTEND_TIMEOUT_USEC=" in m for m in statuses)
    assert versions(empty_url) == [m.version for m in known_migrations()]


def test_0014_frees_the_rows_a_relay_of_the_previous_release_held(empty_url: str) -> None:
    """Upgrading to batch leases: a row leased the old way (on the row) is claimed at once
    (the claim no longer reads lease_until), its earlier try kept; a sent row stays sent."""
    execute(
        empty_url, migration_script("jobwire", [m for m in known_migrations() if m.version < 14])
    )
    execute(
        empty_url,
        "INSERT INTO jobwire.outbox (output, job_id, body, lease_until, attempts)"
        " VALUES ('out', 1, 'x', now() + interval '1 hour', 1);"
        "INSERT INTO jobwire.outbox (output, job_id, body, sent_at, attempts)"
        " VALUES ('out', 2, 'y', now(), 1)",
    )

    async def upgrade_and_claim() -> list[tuple[int | None, int]]:
        await migrate(empty_url, "jobwire")
        store = await PostgresStore.connect(empty_url, "jobwire", min_size=1, max_size=2)
        try:
            return [(r.job_id, r.attempts) for r in await store.claim_outbox("out", 10, 30.0)]
        finally:
            await store.close()

    assert asyncio.run(upgrade_and_claim()) == [(1, 2)]


def test_0015_moves_the_address_of_unsent_replies_out_of_their_key(empty_url: str) -> None:
    """Reply rows written keyed by 0013's trigger: an unsent one gets its address as the
    jobwire-reply-to header and no key (its other headers kept); a sent one, an ordinary
    output's keyed row and a reply row that already has the header keep theirs. A reply
    written after the upgrade has no key."""
    execute(
        empty_url, migration_script("jobwire", [m for m in known_migrations() if m.version < 15])
    )
    execute(
        empty_url,
        "INSERT INTO jobwire.outbox (output, job_id, n, key, headers, body, sent_at) VALUES"
        " ('reply:rpc', 1, 0, 'amq.gen-1', '{\"jobwire-correlation\": \"c-1\"}', 'x', NULL),"
        " ('reply:rpc', 2, 0, 'amq.gen-2', '{}', 'x', now()),"
        " ('out', 3, 0, 'k', '{}', 'x', NULL),"
        " ('reply:rpc', 4, 0, 'old', '{\"jobwire-reply-to\": \"new\"}', 'x', NULL)",
    )

    async def upgrade_and_read() -> list[tuple[int, str | None, str]]:
        await migrate(empty_url, "jobwire")
        conn = await asyncpg.connect(empty_url)
        try:
            await conn.execute(
                "INSERT INTO jobwire.jobs (handler, status, finished_at, reply)"
                " VALUES ('rpc', 'failed', now(), $1::jsonb)",
                json.dumps({"output": "reply:rpc", "to": "amq.gen-5"}),
            )
            rows = await conn.fetch(
                "SELECT job_id, key, headers::text FROM jobwire.outbox ORDER BY id"
            )
        finally:
            await conn.close()
        return [(r["job_id"], r["key"], r["headers"]) for r in rows]

    (one, two, three, four, five) = asyncio.run(upgrade_and_read())
    assert one == (1, None, '{"jobwire-reply-to": "amq.gen-1", "jobwire-correlation": "c-1"}')
    assert two == (2, "amq.gen-2", "{}")
    assert three == (3, "k", "{}")
    assert four == (4, None, '{"jobwire-reply-to": "new"}')
    assert five[1] is None and '"jobwire-reply-to": "amq.gen-5"' in five[2]
