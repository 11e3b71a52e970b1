"""A job's runs leave with it (migration 0018: a trigger on jobs, not a foreign key), by
every way a job is deleted, with no orphan left and no other job's runs taken, against the
real PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg

from jobwire.models import JobSpec, JobStatus, Outcome
from jobwire.store.base import ClaimRequest
from jobwire.store.migrate import known_migrations, migrate, migration_script
from jobwire.store.postgres import PostgresStore, server_settings
from tests.support.waiting import wait_for


async def finished_jobs(store: PostgresStore, n: int) -> list[int]:
    """``n`` jobs run once each (a job_runs row apiece), through the real claim and
    completion statements."""
    ids = await store.enqueue_many([JobSpec("noop") for _ in range(n)])
    jobs = await store.claim(ClaimRequest({"default": n}, n, "w", lease=30))
    assert len(jobs) == n
    outcomes = [Outcome(job.id, 1, JobStatus.SUCCEEDED, 0.0) for job in jobs]
    assert await store.complete_many("w", outcomes) == n
    return ids


async def runs_of(conn: asyncpg.Connection, ids: list[int]) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM job_runs WHERE job_id = ANY($1)", ids))


async def connect(url: str) -> asyncpg.Connection:
    return await asyncpg.connect(url, server_settings=server_settings("jobwire"))


async def test_purge_and_delete_take_their_jobs_runs_and_no_others(
    pg_store: PostgresStore, database_url: str
) -> None:
    ids = await finished_jobs(pg_store, 300)
    old, kept = ids[:250], ids[250:]
    conn = await connect(database_url)
    try:
        await conn.execute(
            "UPDATE jobs SET finished_at = now() - interval '3 days' WHERE id = ANY($1)", old
        )
        assert await runs_of(conn, ids) == 300
        # Two purge batches, then the admin delete of one of the kept jobs.
        assert await pg_store.purge_finished(86400.0, 200) == 200
        assert await pg_store.purge_finished(86400.0, 200) == 50
        assert await pg_store.delete_ids([kept[0]]) == [kept[0]]
        assert await runs_of(conn, old) == 0
        assert await runs_of(conn, [kept[0]]) == 0
        assert await runs_of(conn, kept[1:]) == 49
        orphans = await conn.fetchval(
            "SELECT count(*) FROM job_runs r WHERE NOT EXISTS"
            " (SELECT 1 FROM jobs j WHERE j.id = r.job_id)"
        )
        assert orphans == 0
    finally:
        await conn.close()


async def test_a_job_deleted_while_its_outcome_is_written_leaves_no_run(
    pg_store: PostgresStore, database_url: str
) -> None:
    """The completion holds the job's row; the DELETE waits for it, then takes the run the
    completion wrote (the foreign key's cascade did the same)."""
    (job_id,) = await pg_store.enqueue_many([JobSpec("noop")])
    (job,) = await pg_store.claim(ClaimRequest({"default": 1}, 1, "w", lease=30))
    writer, deleter, watcher = [await connect(database_url) for _ in range(3)]
    try:
        tx = writer.transaction()
        await tx.start()
        await writer.execute(
            "WITH done AS (UPDATE jobs SET status = 'succeeded', finished_at = now(),"
            " worker_id = NULL WHERE id = $1 RETURNING id, started_at)"
            " INSERT INTO job_runs (job_id, attempt, worker_id, status, started_at)"
            " SELECT id, 1, 'w', 'succeeded', started_at FROM done",
            job.id,
        )
        delete = asyncio.create_task(deleter.execute("DELETE FROM jobs WHERE id = $1", job_id))
        pid = deleter.get_server_pid()

        async def waiting() -> bool:
            return bool(
                await watcher.fetchval(
                    "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid
                )
            )

        await wait_for(waiting, timeout=10, what="the DELETE waiting on the completion")
        await tx.commit()
        assert await asyncio.wait_for(delete, 10) == "DELETE 1"
        assert await runs_of(watcher, [job_id]) == 0
    finally:
        for conn in (writer, deleter, watcher):
            await conn.close()


async def test_truncate_takes_the_runs_alone_or_named_with_them(
    pg_store: PostgresStore, database_url: str
) -> None:
    conn = await connect(database_url)
    try:
        for statement in ("TRUNCATE jobs", "TRUNCATE jobs, job_runs", "TRUNCATE job_runs, jobs"):
            await finished_jobs(pg_store, 3)
            await conn.execute(statement)
            assert await conn.fetchval("SELECT count(*) FROM job_runs") == 0, statement
        # A rolled-back TRUNCATE gives both tables back.
        ids = await finished_jobs(pg_store, 3)
        tx = conn.transaction()
        await tx.start()
        await conn.execute("TRUNCATE jobs")
        await tx.rollback()
        assert await runs_of(conn, ids) == 3
    finally:
        await conn.close()


async def test_a_role_that_may_delete_jobs_needs_no_rights_on_job_runs(
    pg_store: PostgresStore, database_url: str
) -> None:
    """The cascade ran with the owner's rights; the trigger does too."""
    role = f"jw_deleter_{uuid.uuid4().hex[:8]}"
    ids = await finished_jobs(pg_store, 2)
    admin = await connect(database_url)
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN")
        await admin.execute(f"GRANT USAGE ON SCHEMA jobwire TO {role}")
        await admin.execute(f"GRANT SELECT, DELETE ON jobwire.jobs TO {role}")
        url = database_url.replace("postgres@", f"{role}@", 1)
        deleter = await connect(url)
        try:
            assert await deleter.execute("DELETE FROM jobs WHERE id = $1", ids[0]) == "DELETE 1"
        finally:
            await deleter.close()
        assert await runs_of(admin, ids) == 1
    finally:
        await admin.execute(f"DROP OWNED BY {role}")
        await admin.execute(f"DROP ROLE {role}")
        await admin.close()


async def test_the_migration_drops_the_key_whatever_its_name(database_url: str) -> None:
    """A schema restored with the key under another name is migrated the same."""
    conn = await asyncpg.connect(database_url)
    try:
        before = [m for m in known_migrations() if m.version < 18]
        await conn.execute(migration_script("jw_renamed", before))
        await conn.execute(
            "ALTER TABLE jw_renamed.job_runs RENAME CONSTRAINT job_runs_job_id_fkey TO runs_job"
        )
    finally:
        await conn.close()
    await migrate(database_url, "jw_renamed")
    conn = await asyncpg.connect(database_url)
    try:
        keys = await conn.fetchval(
            "SELECT count(*) FROM pg_constraint"
            " WHERE conrelid = 'jw_renamed.job_runs'::regclass AND contype = 'f'"
        )
        assert keys == 0
    finally:
        await conn.close()
