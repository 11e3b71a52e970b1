"""Applications enqueue inside their own transaction: the SQL function, Client(conn=), the
psycopg helper (and the Django recipe on it), NOTIFY at commit, SyncClient across a fork, the
unmigrated-database error and the caller's trace context."""

from __future__ import annotations

import asyncio
import os
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import asyncpg
import psycopg
import pytest
from opentelemetry.sdk.trace import TracerProvider

from jobwire import pg_sync
from jobwire.client import Client, SchemaNotMigrated, SyncClient
from jobwire.models import JobSpec, JobStatus
from jobwire.store.postgres import PostgresStore
from tests.conftest import ADMIN_URL, db_url
from tests.support.pools import make_pool
from tests.support.rows import fetch
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """An application's own asyncpg connection (its search_path is not jobwire's)."""
    c = await asyncpg.connect(database_url)
    yield c
    await c.close()


@pytest.fixture
def bare_url() -> Iterator[str]:
    """A database nobody ran `jobwire migrate` on."""
    name = f"jwbare_{uuid.uuid4().hex[:10]}"

    async def admin(sql: str) -> None:
        c = await asyncpg.connect(ADMIN_URL)
        try:
            await c.execute(sql)
        finally:
            await c.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    yield db_url(name)
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def job_row(url: str, job_id: int) -> asyncpg.Record:
    (row,) = await fetch(url, "SELECT * FROM jobwire.jobs WHERE id = $1", job_id)
    return row


async def job_count(url: str) -> int:
    (row,) = await fetch(url, "SELECT count(*) AS n FROM jobwire.jobs")
    return int(row["n"])


async def run_all(store: PostgresStore, ids: list[int]) -> None:
    """Start a worker pool and wait until every job in ``ids`` succeeded."""
    pool = make_pool(store)
    await pool.start()
    try:

        async def done() -> bool:
            jobs = [await store.get(i) for i in ids]
            return all(j is not None and j.status == JobStatus.SUCCEEDED for j in jobs)

        await wait_for(done, what="the committed jobs ran")
    finally:
        await pool.stop()


# The SQL function.


async def test_sql_function_with_two_arguments_applies_the_defaults(
    database_url: str, conn: asyncpg.Connection
) -> None:
    job_id = await conn.fetchval(
        """SELECT jobwire.enqueue('email', '{"to": "a@example.org"}'::jsonb)"""
    )
    row = await job_row(database_url, job_id)
    assert row["handler"] == "email" and row["payload"] == '{"to": "a@example.org"}'
    assert (row["queue"], row["priority"], row["status"]) == ("default", 0, "pending")
    assert (row["max_attempts"], row["headers"], row["source"]) == (5, "{}", "sql")
    assert row["dedup_key"] is None
    assert abs((row["run_at"] - row["created_at"]).total_seconds()) < 1


async def test_sql_function_named_arguments(database_url: str, conn: asyncpg.Connection) -> None:
    at = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    later = await conn.fetchval(
        """SELECT jobwire.enqueue('report', NULL, queue => 'slow', priority => 7,
                                  run_at => $1, delay => '10 minutes', max_attempts => 2,
                                  headers => '{"x-tenant": "t1"}')""",
        at,
    )
    row = await job_row(database_url, later)
    assert (row["queue"], row["priority"], row["max_attempts"]) == ("slow", 7, 2)
    assert row["run_at"] == at + timedelta(minutes=10)
    assert row["payload"] is None and row["headers"] == '{"x-tenant": "t1"}'
    delayed = await conn.fetchval("SELECT jobwire.enqueue('report', '{}', delay => '1 hour')")
    row = await job_row(database_url, delayed)
    assert timedelta(minutes=59) < row["run_at"] - row["created_at"] <= timedelta(hours=1)


async def test_sql_function_dedup_key_returns_the_existing_id(
    database_url: str, conn: asyncpg.Connection
) -> None:
    sql = "SELECT jobwire.enqueue('email', $1::jsonb, dedup_key => 'welcome-42')"
    first = await conn.fetchval(sql, '{"n": 1}')
    second = await conn.fetchval(sql, '{"n": 2}')
    assert first == second
    assert await job_count(database_url) == 1
    assert (await job_row(database_url, first))["payload"] == '{"n": 1}'


async def test_published_default_reaches_every_way_in(
    database_url: str, conn: asyncpg.Connection, pg_store: PostgresStore
) -> None:
    # The daemon publishes its retry.max_attempts at start-up; nobody else keeps a 5.
    await pg_store.publish_default_max_attempts(3)
    by_function = await conn.fetchval("SELECT jobwire.enqueue('email', '{}')")
    by_insert = await conn.fetchval(
        "INSERT INTO jobwire.jobs (handler, payload) VALUES ('email', '{}') RETURNING id"
    )
    client = Client(schema="jobwire")
    (by_conn_batch,) = await client.enqueue_many([JobSpec("email")], conn=conn)
    async with Client(database_url) as pooled:
        by_pool = await pooled.enqueue("email", {})
    rows = [await job_row(database_url, i) for i in (by_function, by_insert, by_pool)]
    assert by_conn_batch is not None
    rows.append(await job_row(database_url, by_conn_batch))
    assert [r["max_attempts"] for r in rows] == [3, 3, 3, 3]


async def test_sql_function_rolled_back_is_no_job_committed_runs(
    database_url: str, conn: asyncpg.Connection, pg_store: PostgresStore
) -> None:
    with pytest.raises(RuntimeError):
        async with conn.transaction():
            await conn.fetchval("SELECT jobwire.enqueue('echo', '{\"n\": 0}')")
            raise RuntimeError("the application's own write failed")
    assert await job_count(database_url) == 0
    async with conn.transaction():
        job_id = await conn.fetchval("SELECT jobwire.enqueue('echo', '{\"n\": 1}')")
        assert await job_count(database_url) == 0  # not visible before commit
    await run_all(pg_store, [job_id])


async def test_notify_arrives_only_at_commit(database_url: str, conn: asyncpg.Connection) -> None:
    listener = await asyncpg.connect(database_url)
    heard: list[str] = []
    await listener.add_listener("jobwire_jobwire", lambda *args: heard.append(args[3]))
    try:
        async with conn.transaction():
            await conn.fetchval("SELECT jobwire.enqueue('echo', '{}')")
            await asyncio.sleep(0.3)
            assert heard == []
        await wait_for(lambda: heard, what="the NOTIFY after commit")
        assert heard == ["jobs"]
    finally:
        await listener.close()


# Client(conn=) on the application's asyncpg connection.


async def test_client_on_callers_connection_follows_its_transaction(
    database_url: str, conn: asyncpg.Connection, pg_store: PostgresStore
) -> None:
    client = Client(schema="jobwire")  # no url: it only ever uses the caller's connection
    with pytest.raises(RuntimeError):
        async with conn.transaction():
            await client.enqueue("echo", {"n": 0}, conn=conn)
            await client.enqueue_many([JobSpec("echo", {"n": 0})], conn=conn)
            raise RuntimeError("rolled back")
    assert await job_count(database_url) == 0
    # As the FastAPI recipe does: a connection from the application's pool, its transaction.
    async with asyncpg.create_pool(database_url, min_size=1, max_size=2) as app_pool:
        async with app_pool.acquire() as pooled, pooled.transaction():
            one = await client.enqueue(
                "echo", {"n": 1}, priority=3, delay=0, headers={"x-a": "1"}, conn=pooled
            )
            again = await client.enqueue("echo", {"n": 9}, dedup_key="k1", conn=pooled)
            same = await client.enqueue("echo", {"n": 9}, dedup_key="k1", conn=pooled)
            batch = await client.enqueue_many(
                [
                    JobSpec("echo", {"n": 2}, dedup_key="k2"),
                    JobSpec("echo", {"n": 3}, dedup_key="k1"),
                ],
                conn=pooled,
            )
            assert await job_count(database_url) == 0
    assert again == same and batch[1] is None and batch[0] is not None
    row = await job_row(database_url, one)
    assert (row["priority"], row["source"], row["max_attempts"]) == (3, "api", 5)
    assert row["headers"] == '{"x-a": "1"}'
    assert (await job_row(database_url, batch[0]))["source"] == "api"
    await run_all(pg_store, [one, again, batch[0]])


# The psycopg helper, and the Django recipe on it.


async def test_psycopg_helper_follows_the_transaction(
    database_url: str, pg_store: PostgresStore
) -> None:
    with psycopg.connect(database_url) as pconn:
        with pytest.raises(RuntimeError), pconn.transaction():
            pg_sync.enqueue(pconn, "echo", {"n": 0})
            raise RuntimeError("rolled back")
        with pconn.transaction():
            job_id = pg_sync.enqueue(pconn, "echo", {"n": 1}, queue="default", delay="0s")
            with pconn.cursor() as cur:  # a cursor works as well as a connection
                dup = pg_sync.enqueue(cur, "echo", {"n": 2}, dedup_key="d")
                assert pg_sync.enqueue(cur, "echo", {"n": 3}, dedup_key="d") == dup
            assert await job_count(database_url) == 0
    assert await job_count(database_url) == 2
    row = await job_row(database_url, job_id)
    assert (row["source"], row["max_attempts"]) == ("api", 5)
    await run_all(pg_store, [job_id, dup])


def test_django_recipe(database_url: str) -> None:
    django = pytest.importorskip("django")
    from django.conf import settings
    from django.db import connection, transaction

    url = urlsplit(database_url)
    if not settings.configured:
        settings.configure(
            DATABASES={
                "default": {
                    "ENGINE": "django.db.backends.postgresql",
                    "NAME": url.path.lstrip("/"),
                    "USER": url.username or "",
                    "PASSWORD": url.password or "",
                    "HOST": url.hostname or "",
                    "PORT": str(url.port or 5432),
                }
            },
            USE_TZ=True,
        )
        django.setup()
    try:
        with connection.cursor() as cur:
            cur.execute("CREATE TABLE orders (id serial PRIMARY KEY, total int)")
        with pytest.raises(RuntimeError), transaction.atomic():
            with connection.cursor() as cur:
                cur.execute("INSERT INTO orders (total) VALUES (10)")
            pg_sync.enqueue(connection.connection, "echo", {"order": 1})
            raise RuntimeError("rolled back")
        with transaction.atomic():
            with connection.cursor() as cur:
                cur.execute("INSERT INTO orders (total) VALUES (20)")
            job_id = pg_sync.enqueue(connection.connection, "echo", {"order": 2})
        with connection.cursor() as cur:
            cur.execute("SELECT count(*) FROM orders")
            assert cur.fetchone() == (1,)
            cur.execute("SELECT payload->>'order' FROM jobwire.jobs")
            assert cur.fetchall() == [("2",)]
        assert job_id > 0
    finally:
        connection.close()


# SyncClient: across a fork, with timeouts, against an unmigrated database.


def test_sync_client_made_before_fork_works_in_the_child(database_url: str) -> None:
    client = SyncClient(database_url, connect_timeout=5, command_timeout=5)
    try:
        before = client.enqueue("echo", {"who": "parent"})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads running
            pid = os.fork()
        if pid == 0:  # the child: report by exit status only, never return into pytest
            code = 1
            try:
                code = 0 if client.enqueue("echo", {"who": "child"}) > before else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        # The parent's own loop and connections were left alone by the child.
        after = client.enqueue("echo", {"who": "parent again"})
        job = client.get(after)
        assert job is not None and job.payload == {"who": "parent again"}
    finally:
        client.close()
    rows = asyncio.run(fetch(database_url, "SELECT payload->>'who' AS who FROM jobwire.jobs"))
    assert sorted(r["who"] for r in rows) == ["child", "parent", "parent again"]


def test_sync_client_times_out_on_a_silent_server() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    async def scenario() -> float:
        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = SyncClient(f"postgresql://u@127.0.0.1:{port}/db", connect_timeout=0.5)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            with pytest.raises(Exception, match=r"(?i)timeout|timed out"):
                await asyncio.to_thread(client.enqueue, "echo")
        finally:
            server.close()
        return loop.time() - started

    assert asyncio.run(scenario()) < 5


async def test_unmigrated_database_says_run_jobwire_migrate(bare_url: str) -> None:
    with pytest.raises(SchemaNotMigrated, match="run `jobwire migrate`"):
        await Client(bare_url).enqueue("echo")
    with pytest.raises(SchemaNotMigrated, match="run `jobwire migrate`"):
        await Client(bare_url, default_max_attempts=3).enqueue("echo")
    c = await asyncpg.connect(bare_url)
    try:
        with pytest.raises(SchemaNotMigrated, match="run `jobwire migrate`"):
            await Client().enqueue("echo", conn=c)
        with pytest.raises(SchemaNotMigrated, match="run `jobwire migrate`"):
            await Client().enqueue_many([JobSpec("echo")], conn=c)
    finally:
        await c.close()
    with psycopg.connect(bare_url) as pconn:
        with pytest.raises(SchemaNotMigrated, match="run `jobwire migrate`"):
            pg_sync.enqueue(pconn, "echo")
    sync = SyncClient(bare_url)
    try:
        with pytest.raises(SchemaNotMigrated, match="run `jobwire migrate`"):
            await asyncio.to_thread(sync.enqueue, "echo")
    finally:
        await asyncio.to_thread(sync.close)


# The caller's trace context.


async def test_traceparent_of_the_active_span_goes_into_the_job(
    database_url: str, conn: asyncpg.Connection
) -> None:
    tracer = TracerProvider().get_tracer("app")
    client = Client(database_url)
    try:
        untraced = await client.enqueue("echo", conn=conn)
        with tracer.start_as_current_span("request") as span:
            trace_id = format(span.get_span_context().trace_id, "032x")
            ids = [
                await client.enqueue("echo", headers={"x-a": "1"}, conn=conn),
                await client.enqueue("echo"),
                *(await client.enqueue_many([JobSpec("echo")], conn=conn)),
                *(await client.enqueue_many([JobSpec("echo")])),
            ]
            with psycopg.connect(database_url, autocommit=True) as pconn:
                ids.append(pg_sync.enqueue(pconn, "echo"))
            sync = SyncClient(database_url)
            try:
                ids.append(await asyncio.to_thread(sync.enqueue, "echo"))
            finally:
                await asyncio.to_thread(sync.close)
    finally:
        await client.close()
    assert "traceparent" not in (
        await conn.fetchval("SELECT headers FROM jobwire.jobs WHERE id = $1", untraced)
    )
    for job_id in ids:
        assert job_id is not None
        headers = (await job_row(database_url, job_id))["headers"]
        assert f'"traceparent": "00-{trace_id}-' in headers, headers
    assert '"x-a": "1"' in (await job_row(database_url, ids[0]))["headers"]
