"""Edges found by a review of the whole change, each held by a test: what a handler returns or
raises can never stop the pool; what the database refuses is bad data, not an outage; a form,
a CLI argument or a DB-API call with a hostile value is refused cleanly."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from jobwire import JobContext, Retry
from jobwire.api_models import BadInput
from jobwire.models import JobSpec, JobStatus
from jobwire.pg_sync import enqueue as enqueue_dbapi
from jobwire.store.base import InvalidJobData
from jobwire.store.memory import MemoryStore
from jobwire.store.postgres import PostgresStore
from tests.support.daemon import jobwire
from tests.support.dashboard import dashboard_api
from tests.support.pools import make_pool
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(60)


async def test_results_and_errors_the_store_cannot_hold_never_stop_the_pool(
    pg_store: PostgresStore,
) -> None:
    async def nan_result(payload: Any, ctx: JobContext) -> Any:
        return {"x": math.nan}

    async def nul_result(payload: Any, ctx: JobContext) -> Any:
        return {"x": "a\x00b", "y": "\ud800"}

    async def nul_error(payload: Any, ctx: JobContext) -> Any:
        raise RuntimeError("broke on \x00 and \ud800")

    async def far_retry(payload: Any, ctx: JobContext) -> Any:
        raise Retry("later", after=1e30)

    handlers = {
        "nan_result": nan_result,
        "nul_result": nul_result,
        "nul_error": nul_error,
        "far_retry": far_retry,
    }
    bad = await pg_store.enqueue_many([JobSpec(name, max_attempts=1) for name in handlers])
    retried = await pg_store.enqueue_many([JobSpec("far_retry", max_attempts=2)])
    good = await pg_store.enqueue_many([JobSpec("echo", {"n": n}) for n in range(20)])
    pool = make_pool(pg_store, handlers)
    await pool.start()
    try:

        async def settled() -> bool:
            jobs = [await pg_store.get(i) for i in [*bad, *good, *retried] if i is not None]
            return all(
                j is not None and j.status in ("succeeded", "failed", "retrying") for j in jobs
            )

        await wait_for(settled, what="every job settled", timeout=20)
    finally:
        await pool.stop()
    for job_id in bad:
        assert job_id is not None
        job = await pg_store.get(job_id)
        assert job is not None and job.status == JobStatus.FAILED and job.last_error
    for job_id in good:
        assert job_id is not None
        job = await pg_store.get(job_id)
        assert job is not None and job.status == JobStatus.SUCCEEDED
    (far,) = retried
    assert far is not None
    job = await pg_store.get(far)
    assert job is not None and job.status == JobStatus.RETRYING  # far off, not an overflow


async def test_a_value_the_driver_cannot_encode_is_bad_data_not_an_outage(
    pg_store: PostgresStore,
) -> None:
    with pytest.raises(InvalidJobData):
        await pg_store.get(2**70)


async def test_a_malformed_sign_in_form_is_a_400_not_a_crash() -> None:
    api = dashboard_api(MemoryStore())
    async with TestClient(TestServer(api.app())) as client:
        for body, content_type in [
            (b"token=\xff\xfe", "application/x-www-form-urlencoded"),
            (b"token=x", "application/x-www-form-urlencoded; charset=bogus"),
            (b"--x\r\n\r\nvalue\r\n--x--\r\n", "multipart/form-data"),
        ]:
            async with client.post(
                "/ui/login", data=body, headers={"Content-Type": content_type}
            ) as response:
                assert response.status in (400, 403), response.status
        too_big = b"token=" + b"a" * 100_000
        async with client.post(
            "/ui/login",
            data=too_big,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ) as response:
            assert response.status == 413


@pytest.mark.parametrize(
    "args",
    [
        ["jobs", "list", "--before", "1000000d"],
        ["jobs", "list", "--after", "99999999999999d"],
        ["enqueue", "noop", "--payload", "@/nonexistent/payload.json"],
        ["enqueue", "noop", "--payload", "[" * 30_000 + "]" * 30_000],
        ["enqueue", "noop", "--payload", '{"a": NaN}'],
        ["enqueue", "noop", "--payload", '{"a": "\\u0000"}'],
    ],
    ids=["before-overflow", "after-overflow", "missing-file", "deep", "nan", "nul"],
)
def test_cli_refuses_hostile_arguments_with_exit_2_and_no_traceback(
    args: list[str], database_url: str, tmp_path: Path
) -> None:
    out = jobwire(*args, "--database-url", database_url, check=False)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr


def test_dbapi_helper_refuses_bad_values_before_any_sql(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        for fields in ({"max_attempts": 0}, {"priority": 2**40}, {"payload": {"a": "\x00"}}):
            with pytest.raises(BadInput):
                enqueue_dbapi(conn, "noop", **{"payload": {}, **fields})  # type: ignore[arg-type]
        # The caller's transaction is still usable: nothing was sent that could abort it.
        job_id = enqueue_dbapi(conn, "noop", {"ok": True})
        conn.commit()
    assert job_id > 0


def test_a_schema_name_with_capitals_is_refused_in_the_config(tmp_path: Path) -> None:
    config = tmp_path / "jobwire.yaml"
    config.write_text("database: {url: 'postgresql://x@127.0.0.1/db', schema: MySchema}\n")
    out = jobwire("check-config", "-c", str(config), check=False)
    assert out.returncode == 2 and "database.schema" in out.stderr
