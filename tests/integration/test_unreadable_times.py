"""Times PostgreSQL holds and Python's datetime cannot: an application's SQL may give a job
``run_at => '-infinity'``, or (a plain INSERT) a BC ``run_at`` or ``created_at``. Before, one
such job in a claimed batch failed the decoding of the whole claim: every job of the batch
stayed running, its handler never called, until the leases ran out (for ``created_at``,
which lease recovery does not rewrite, again at every claim), and the lateness metric's
query failed on '-infinity'."""

from __future__ import annotations

import asyncpg
import pytest

from jobwire.config import Config
from jobwire.models import JobSpec
from jobwire.store.postgres import PostgresStore
from tests.support.inprocess import running_daemon
from tests.support.rows import fetch, job_count, stored_among_good
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(90)
GOOD = 10

HOSTILE = {
    "run_at -infinity": "SELECT jobwire.enqueue('noop', '{}'::jsonb, run_at => '-infinity')",
    "run_at BC": (
        "INSERT INTO jobwire.jobs (handler, payload, run_at) "
        "VALUES ('noop', '{}', '4000-01-01 BC') RETURNING id"
    ),
    "a keyed job at -infinity": (
        "SELECT jobwire.enqueue('noop', '{}'::jsonb, run_at => '-infinity', concurrency_key => 'k')"
    ),
    "created_at BC": (
        "INSERT INTO jobwire.jobs (handler, payload, created_at) "
        "VALUES ('noop', '{}', '4000-01-01 BC') RETURNING id"
    ),
    "created_at past year 9999": (
        "INSERT INTO jobwire.jobs (handler, payload, created_at) "
        "VALUES ('noop', '{}', '20000-01-01') RETURNING id"
    ),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
async def test_a_time_python_cannot_hold_runs_its_job_and_stalls_no_other(
    database_url: str, kind: str
) -> None:
    await stored_among_good(database_url, HOSTILE[kind], GOOD)
    config = Config.model_validate(
        {
            "database": {"url": database_url},
            # A lease far longer than the wait: nothing may finish by lease recovery.
            "workers": {"poll_interval": "200ms", "lease": "5m"},
            "queues": {"default": {"key_concurrency": 1}},
        }
    )
    async with running_daemon(config):

        async def all_succeeded() -> bool:
            return await job_count(database_url, "status = 'succeeded'") == GOOD + 1

        await wait_for(all_succeeded, timeout=20, what="every job succeeded")
        rows = await fetch(database_url, "SELECT attempts FROM jobwire.jobs")
        assert {r["attempts"] for r in rows} == {1}  # each ran once, none by recovery


async def test_the_lateness_of_a_job_at_minus_infinity_reads(pg_store: PostgresStore) -> None:
    await pg_store.enqueue_many([JobSpec("noop", {})])
    async with pg_store._pool.acquire() as conn:
        await conn.execute("SELECT jobwire.enqueue('noop', '{}'::jsonb, run_at => '-infinity')")
    ages = await pg_store.oldest_ready(["default"])
    # It reads (no "timestamp out of range"), and from its insert: it is claimed first, but
    # it has not waited since the beginning of time.
    assert 0 <= ages["default"] < 60


# The SQL function refuses a run_at Python cannot read back (migration 0019).
OUT_OF_YEARS = {
    "year 20000": "run_at => '20000-01-01'",
    "a delay of ten thousand years": "delay => '10000 years'",
    "BC": "run_at => '4000-01-01 BC'",
}


@pytest.mark.parametrize("kind", sorted(OUT_OF_YEARS))
async def test_sql_function_refuses_a_run_at_no_reader_can_decode(
    database_url: str, pg_store: PostgresStore, kind: str
) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        with pytest.raises(asyncpg.InvalidParameterValueError, match="years 1 to 9999"):
            await conn.fetchval(
                f"SELECT jobwire.enqueue('noop', '{{}}'::jsonb, {OUT_OF_YEARS[kind]})"
            )
        # Never, at once, and far but readable still go in, and every one reads back.
        ids = [
            await conn.fetchval(f"SELECT jobwire.enqueue('noop', '{{}}'::jsonb, run_at => '{at}')")
            for at in ("infinity", "-infinity", "9000-01-01")
        ]
    finally:
        await conn.close()
    assert [(await pg_store.get(i)) is not None for i in ids] == [True] * 3
    assert await job_count(database_url) == 3
