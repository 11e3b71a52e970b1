"""Per-handler defaults (handler_defaults:) through the real worker pool: the job's own
options win over its handler's, which win over the queue's and the global retry:."""

from __future__ import annotations

import pytest

from jobwire.config import Config
from jobwire.models import Job, JobSpec, JobStatus
from jobwire.store.base import JobStore
from jobwire.store.postgres import PostgresStore
from tests.support.inprocess import running_daemon
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(120)


async def test_handler_defaults_precedence(database_url: str, pg_store: PostgresStore) -> None:
    config = Config.model_validate(
        {
            "database": {"url": database_url},
            "workers": {"poll_interval": "100ms", "shutdown_timeout": "2s"},
            "queues": {"default": {"timeout": "10s"}},
            "retry": {"max_attempts": 4, "base": "10ms", "max": "50ms", "jitter": False},
            "handler_defaults": {
                "fail": {"retry": {"max_attempts": 2}},
                "sleep": {"timeout": "200ms", "retry": {"max_attempts": 1}},
            },
        }
    )
    async with running_daemon(config) as daemon:
        assert daemon.pool is not None
        store: JobStore = daemon.pool.store  # inserts with the daemon's retry.max_attempts
        ids = await store.enqueue_many(
            [
                JobSpec(handler="fail"),  # the handler's 2 attempts, not the global 4
                JobSpec(handler="fail", max_attempts=3),  # the job's own 3
                JobSpec(handler="sleep", payload={"seconds": 2}),  # the handler's 200ms
                # The job's own timeout beats the handler's 200ms.
                JobSpec(handler="sleep", payload={"seconds": 0.5}, timeout=5),
                JobSpec(handler="noop"),  # no handler defaults: untouched
            ]
        )

        async def finished() -> list[Job]:
            jobs = [await pg_store.get(i) for i in ids if i is not None]
            final = (JobStatus.SUCCEEDED, JobStatus.FAILED)
            done = [j for j in jobs if j is not None and j.status in final]
            return done if len(done) == len(ids) else []

        by_handler_fail, own_attempts, timed_out, own_timeout, plain = await wait_for(
            finished, timeout=60, what="jobs finished"
        )

    assert by_handler_fail.status == JobStatus.FAILED
    assert len(await pg_store.runs(by_handler_fail.id)) == 2
    assert "(attempt 2 of 2)" in (by_handler_fail.last_error or "")
    assert own_attempts.status == JobStatus.FAILED
    assert len(await pg_store.runs(own_attempts.id)) == 3

    assert timed_out.status == JobStatus.FAILED
    assert "timed out after 0.2s (handler 'sleep' timeout)" in (timed_out.last_error or "")
    assert len(await pg_store.runs(timed_out.id)) == 1
    assert own_timeout.status == JobStatus.SUCCEEDED, own_timeout.last_error
    assert plain.status == JobStatus.SUCCEEDED
