"""The ``db_maintenance`` built-in through the real worker pool on a real PostgreSQL."""

from __future__ import annotations

import inspect
from typing import Any

import asyncpg
import pytest

from jobwire.builtins.service import BuiltinHandlers
from jobwire.builtins.settings import BuiltinsConfig
from jobwire.config import Config
from jobwire.models import Job, JobSpec, JobStatus
from jobwire.store.memory import MemoryStore
from jobwire.store.postgres import PostgresStore
from tests.support.inprocess import running_daemon
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(120)


async def finished(store: PostgresStore, job_id: int | None) -> Job:
    assert job_id is not None

    async def done() -> Job | None:
        job = await store.get(job_id)
        final = (JobStatus.SUCCEEDED, JobStatus.FAILED)
        return job if job is not None and job.status in final else None

    return await wait_for(done, timeout=60, what=f"job {job_id} finished")


async def vacuumed(database_url: str, table: str) -> Any:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchrow(
            "SELECT last_vacuum, last_analyze FROM pg_stat_user_tables "
            "WHERE schemaname = 'jobwire' AND relname = $1",
            table,
        )
    finally:
        await conn.close()


async def test_vacuum_and_analyze_own_tables(database_url: str, pg_store: PostgresStore) -> None:
    config = Config.model_validate(
        {
            "database": {"url": database_url},
            "workers": {"poll_interval": "100ms", "shutdown_timeout": "2s"},
            "handlers": {"vacuum": "builtin:db_maintenance"},
        }
    )
    before = await vacuumed(database_url, "job_runs")
    assert before["last_vacuum"] is None
    async with running_daemon(config):
        whole, some, wrong, analyze_only = await pg_store.enqueue_many(
            [
                JobSpec(handler="vacuum"),
                JobSpec(handler="vacuum", payload={"tables": ["jobs"], "vacuum": False}),
                JobSpec(handler="vacuum", payload={"tables": ["jobs", "pg_class"]}),
                JobSpec(handler="vacuum", payload={"vacuum": "yes"}),
            ]
        )
        job = await finished(pg_store, whole)
        partial = await finished(pg_store, some)
        refused = await finished(pg_store, wrong)
        bad = await finished(pg_store, analyze_only)

    assert job.status == JobStatus.SUCCEEDED, job.last_error
    assert {"jobs", "job_runs", "schedules", "workers"} <= set(job.result["tables"])
    assert job.result["vacuum"] is True and job.result["analyze"] is True

    # The statistics views show it done (they are updated as each statement ends).
    async def recorded() -> Any:
        row = await vacuumed(database_url, "job_runs")
        return row if row["last_vacuum"] is not None and row["last_analyze"] is not None else None

    await wait_for(recorded, what="job_runs vacuum and analyze recorded")

    assert partial.status == JobStatus.SUCCEEDED and partial.result["tables"] == ["jobs"]
    # Only jobwire's own tables: another name fails the job and touches none.
    assert refused.status == JobStatus.FAILED and refused.attempts == 1
    assert "not jobwire tables: pg_class" in (refused.last_error or "")
    assert bad.status == JobStatus.FAILED and "true or false" in (bad.last_error or "")


def test_bound_builtins_run_on_the_loop() -> None:
    # A coroutine function is awaited on the loop; anything else would take a handler thread.
    builtins = BuiltinHandlers(BuiltinsConfig(), MemoryStore(), {"db_maintenance"})
    assert inspect.iscoroutinefunction(builtins.handler("db_maintenance"))
    with pytest.raises(ValueError, match="not configured"):
        builtins.handler("email")
