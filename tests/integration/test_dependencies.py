"""Job dependencies (``after=``): a job waits until every job it names has succeeded, and
fails without running when one of them failed or was cancelled; the failure cascades."""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import aiohttp
import asyncpg
import psycopg
import pytest

from jobwire import pg_sync
from jobwire.api_models import BadInput
from jobwire.client import Client
from jobwire.config import Config
from jobwire.handlers import JobContext
from jobwire.models import JobSpec
from jobwire.store.base import ClaimRequest, InvalidJobData
from jobwire.store.memory import MemoryStore
from jobwire.store.postgres import PostgresStore
from jobwire.worker import WorkerPool
from tests.support.daemon import REPO
from tests.support.inprocess import running_daemon
from tests.support.pools import make_pool
from tests.support.rows import fetch
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(90)
FINISHED = ("succeeded", "failed", "cancelled")


async def step(payload: Any, ctx: JobContext) -> dict[str, Any]:
    # Long enough that a dependent started too early would overlap its dependency.
    await asyncio.sleep(0.1)
    return {"n": payload}


async def boom(payload: Any, ctx: JobContext) -> None:
    raise RuntimeError("this branch fails")


HANDLERS = {"step": step, "boom": boom}


@pytest.fixture
async def pool(pg_store: PostgresStore) -> AsyncIterator[WorkerPool]:
    """A running worker pool on the test's database."""
    p = make_pool(pg_store, HANDLERS)
    await p.start()
    yield p
    await p.stop()


async def jobs_by_id(url: str) -> dict[int, asyncpg.Record]:
    rows = await fetch(url, "SELECT * FROM jobwire.jobs ORDER BY id")
    return {r["id"]: r for r in rows}


async def runs_of(url: str, job_id: int) -> list[asyncpg.Record]:
    return await fetch(
        url, "SELECT * FROM jobwire.job_runs WHERE job_id = $1 ORDER BY attempt", job_id
    )


async def wait_finished(url: str, ids: list[int]) -> dict[int, asyncpg.Record]:
    """Wait until every job of ``ids`` is finished; their rows."""

    async def done() -> bool:
        rows = await jobs_by_id(url)
        return all(rows[i]["status"] in FINISHED for i in ids)

    await wait_for(done, what=f"jobs {ids} finished")
    return await jobs_by_id(url)


async def test_a_chain_of_three_runs_in_order(database_url: str, pool: WorkerPool) -> None:
    async with Client(database_url) as client:
        a = await client.enqueue("step", 1)
        b = await client.enqueue("step", 2, after=[a])
        c = await client.enqueue("step", 3, after=[b])
    rows = await wait_finished(database_url, [a, b, c])
    assert [rows[i]["status"] for i in (a, b, c)] == ["succeeded"] * 3
    runs = [await runs_of(database_url, i) for i in (a, b, c)]
    # Each ran once, and started only after the one before had finished.
    assert [len(r) for r in runs] == [1, 1, 1]
    assert runs[1][0]["started_at"] >= runs[0][0]["finished_at"]
    assert runs[2][0]["started_at"] >= runs[1][0]["finished_at"]
    assert rows[c]["after_ids"] == [b]
    assert rows[a]["has_dependents"] and rows[b]["has_dependents"]
    assert not rows[c]["has_dependents"]


async def test_fan_in_of_ten_with_a_failing_branch(
    database_url: str, pg_store: PostgresStore
) -> None:
    async with Client(database_url) as client:
        # Enqueued before any worker runs: the fan-in certainly waits.
        ok = [await client.enqueue("step", n) for n in range(9)]
        bad = await client.enqueue("boom", max_attempts=1)
        fan_in = await client.enqueue("step", "all", after=[*ok, bad])
        cascade = await client.enqueue("step", "next", after=[fan_in])
    waiting = await jobs_by_id(database_url)
    assert waiting[fan_in]["status"] == "pending"
    assert waiting[fan_in]["run_at"] == waiting[cascade]["run_at"]  # both 'infinity'
    pool = make_pool(pg_store, HANDLERS)
    await pool.start()
    try:
        rows = await wait_finished(database_url, [*ok, bad, fan_in, cascade])
    finally:
        await pool.stop()
    assert [rows[i]["status"] for i in ok] == ["succeeded"] * 9
    assert rows[bad]["status"] == "failed"
    assert (rows[fan_in]["status"], rows[fan_in]["last_error"]) == (
        "failed",
        f"dependency {bad} failed",
    )
    assert (rows[cascade]["status"], rows[cascade]["last_error"]) == (
        "failed",
        f"dependency {fan_in} failed",
    )
    # Neither dependent ever ran; every other job ran exactly once.
    assert await runs_of(database_url, fan_in) == []
    assert await runs_of(database_url, cascade) == []
    assert [len(await runs_of(database_url, i)) for i in [*ok, bad]] == [1] * 10
    assert len(rows) == 12


async def test_after_finished_jobs_and_unknown_ids(database_url: str, pool: WorkerPool) -> None:
    async with Client(database_url) as client:
        first = await client.enqueue("step", 1)
        await wait_finished(database_url, [first])
        # A dependency already succeeded: the job is ready at once.
        ready = await client.enqueue("step", 2, after=[first])
        rows = await wait_finished(database_url, [ready])
        assert rows[ready]["status"] == "succeeded"
        # A dependency already cancelled: failed at once, never run.
        cancelled = await client.enqueue("step", 3, delay="1h")
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(
                "UPDATE jobwire.jobs SET status = 'cancelled', finished_at = now() WHERE id = $1",
                cancelled,
            )
        finally:
            await conn.close()
        doomed = await client.enqueue("step", 4, after=[cancelled])
        row = (await jobs_by_id(database_url))[doomed]
        assert (row["status"], row["last_error"]) == ("failed", f"dependency {cancelled} cancelled")
        before = len(await jobs_by_id(database_url))
        with pytest.raises(InvalidJobData, match="job 999999 does not exist"):
            await client.enqueue("step", 5, after=[first, 999999])
        with pytest.raises(BadInput, match="after"):
            await client.enqueue("step", after=[0])
        with pytest.raises(BadInput, match="after"):
            await client.enqueue("step", after=list(range(1, 1002)))
        assert len(await jobs_by_id(database_url)) == before
    assert await runs_of(database_url, doomed) == []


async def test_sql_function_and_connections_take_after(database_url: str, pool: WorkerPool) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            a = await conn.fetchval("SELECT jobwire.enqueue('step', '1')")
            b = await conn.fetchval(
                "SELECT jobwire.enqueue('step', '2', after => ARRAY[$1::bigint])", a
            )
            c = await Client(schema="jobwire").enqueue("step", 3, after=[b], conn=conn)
        with pytest.raises(asyncpg.InvalidParameterValueError, match="does not exist"):
            await conn.fetchval(
                "SELECT jobwire.enqueue('step', '9', after => ARRAY[424242]::bigint[])"
            )
        # The two-argument call still works, and an empty list means no dependency.
        plain = await conn.fetchval("SELECT jobwire.enqueue('step', '4', after => '{}')")
    finally:
        await conn.close()
    with psycopg.connect(database_url) as pconn, pconn.transaction():
        d = pg_sync.enqueue(pconn, "step", 5, after=[c])
    rows = await wait_finished(database_url, [a, b, c, d, plain])
    assert [rows[i]["status"] for i in (a, b, c, d, plain)] == ["succeeded"] * 5
    assert rows[plain]["after_ids"] is None
    order = [(await runs_of(database_url, i))[0] for i in (a, b, c, d)]
    for earlier, later in itertools.pairwise(order):
        assert later["started_at"] >= earlier["finished_at"]


async def test_a_handler_enqueues_children_that_wait(
    database_url: str, pg_store: PostgresStore
) -> None:
    """ctx.enqueue(after=...): a child waiting for its parent, one for a sibling that fails."""
    async with Client(database_url) as client:
        sibling = await client.enqueue("boom", max_attempts=1, delay="1h")

        async def parent(payload: Any, ctx: JobContext) -> None:
            await ctx.enqueue("step", "after-parent", after=[ctx.job_id])
            await ctx.enqueue("step", "after-sibling", after=[ctx.job_id, sibling])
            with pytest.raises(ValueError, match="positive job ids"):
                await ctx.enqueue("step", after=[0])

        pool = make_pool(pg_store, {**HANDLERS, "parent": parent})
        await pool.start()
        try:
            top = await client.enqueue("parent")
            await wait_finished(database_url, [top])

            async def two_children() -> bool:
                rows = await jobs_by_id(database_url)
                return sum(1 for r in rows.values() if r["parent_id"] == top) == 2

            await wait_for(two_children, what="the two children written")
            rows = await jobs_by_id(database_url)
            first, second = sorted(i for i, r in rows.items() if r["parent_id"] == top)
            assert rows[second]["after_ids"] == [top, sibling]
            await wait_finished(database_url, [first])
            # The sibling has not run yet: the second child waits for it.
            assert (await jobs_by_id(database_url))[second]["status"] == "pending"
            conn = await asyncpg.connect(database_url)
            try:
                await conn.execute("UPDATE jobwire.jobs SET run_at = now() WHERE id = $1", sibling)
            finally:
                await conn.close()
            rows = await wait_finished(database_url, [sibling, second])
        finally:
            await pool.stop()
    assert rows[first]["status"] == "succeeded"
    assert (rows[second]["status"], rows[second]["last_error"]) == (
        "failed",
        f"dependency {sibling} failed",
    )
    assert await runs_of(database_url, second) == []
    assert len(rows) == 4


async def test_http_enqueue_takes_after(database_url: str) -> None:
    token = "s3cret-token-for-dependencies-1"
    config = Config.model_validate(
        {
            "database": {"url": database_url},
            "workers": {"poll_interval": "200ms"},
            "http": {"listen": "127.0.0.1:0", "admin_token": token},
        }
    )
    headers = {"Authorization": f"Bearer {token}"}
    async with running_daemon(config) as daemon, aiohttp.ClientSession() as session:
        assert daemon.http is not None
        url = f"http://127.0.0.1:{daemon.http.port}/api/v1/jobs"

        async def post(body: dict[str, Any]) -> tuple[int, Any]:
            async with session.post(url, json=body, headers=headers) as response:
                return response.status, await response.json()

        status, first = await post({"handler": "echo", "payload": 1})
        assert status == 201
        status, second = await post({"handler": "echo", "payload": 2, "after": [first["id"]]})
        assert status == 201
        rows = await wait_finished(database_url, [first["id"], second["id"]])
        assert rows[second["id"]]["status"] == "succeeded"
        assert rows[second["id"]]["after_ids"] == [first["id"]]
        status, error = await post({"handler": "echo", "after": [777777]})
        assert status == 400 and "job 777777 does not exist" in error["error"]
        status, error = await post({"handler": "echo", "after": ["x"]})
        assert (status, error["field"]) == (400, "after")
    assert len(await jobs_by_id(database_url)) == 2


async def test_a_dependency_finishing_during_the_insert_never_strands_it(
    database_url: str,
) -> None:
    """The insert trigger and the finish trigger race; the row locks order them, so the
    waiting job always ends ready (never left at run_at infinity behind a succeeded one)."""
    finisher = await asyncpg.connect(database_url)
    inserter = await asyncpg.connect(database_url)
    try:
        pairs = []
        for n in range(60):
            dep = await inserter.fetchval("SELECT jobwire.enqueue('step', $1::text::jsonb)", str(n))
            await finisher.execute(
                "UPDATE jobwire.jobs SET status = 'running', attempts = 1 WHERE id = $1", dep
            )
            _, waiting = await asyncio.gather(
                finisher.execute(
                    "UPDATE jobwire.jobs SET status = 'succeeded', finished_at = now() "
                    "WHERE id = $1",
                    dep,
                ),
                inserter.fetchval(
                    "SELECT jobwire.enqueue('step', '0', after => ARRAY[$1::bigint])", dep
                ),
            )
            pairs.append(waiting)
        stranded = await inserter.fetchval(
            "SELECT count(*) FROM jobwire.jobs WHERE id = ANY($1::bigint[]) "
            "AND run_at = 'infinity'",
            pairs,
        )
        assert stranded == 0
        assert len(pairs) == 60
    finally:
        await finisher.close()
        await inserter.close()


async def test_the_memory_store_refuses_after() -> None:
    store = MemoryStore()
    with pytest.raises(InvalidJobData, match="PostgreSQL"):
        await store.enqueue_many([JobSpec("echo", after=[1])])
    assert await store.enqueue_many([JobSpec("echo")]) == [1]


async def test_a_child_after_an_unknown_job_fails_its_parent_and_stops_nothing(
    database_url: str, pg_store: PostgresStore
) -> None:
    """ctx.enqueue(after=[an id that does not exist]) is refused only when the attempt's
    effects are written: that outcome is stored as a failure (no child) and the jobs behind
    it complete as usual."""

    async def bad_parent(payload: Any, ctx: JobContext) -> None:
        await ctx.enqueue("step", "orphan", after=[987654321])

    pool = make_pool(pg_store, {**HANDLERS, "bad_parent": bad_parent})
    await pool.start()
    try:
        async with Client(database_url) as client:
            bad = await client.enqueue("bad_parent", max_attempts=1)
            good = [await client.enqueue("step", n) for n in range(5)]
        rows = await wait_finished(database_url, [bad, *good])
    finally:
        await pool.stop()
    assert rows[bad]["status"] == "failed"
    assert all(rows[i]["status"] == "succeeded" for i in good)
    assert not [r for r in rows.values() if r["parent_id"] == bad]


async def chain(url: str, head: int, length: int) -> list[int]:
    """``length`` jobs each after the one before, the first after ``head``; their ids."""
    conn = await asyncpg.connect(url)
    try:
        return list(
            await conn.fetchval(
                "WITH RECURSIVE c(n, id) AS ("
                " SELECT 0, $1::bigint"
                " UNION ALL SELECT n + 1, jobwire.enqueue('step', '0', after => ARRAY[id])"
                " FROM c WHERE n < $2)"
                " SELECT array_agg(id ORDER BY n) FROM c WHERE n > 0",
                head,
                length,
            )
        )
    finally:
        await conn.close()


async def test_a_long_chain_fails_behind_a_head_that_fails_or_is_cancelled(
    database_url: str, pg_store: PostgresStore
) -> None:
    """The failure cascade goes down a chain of thousands: each link fired the next one's
    trigger inside its own, and past a few hundred links the server's stack ran out. The
    worker's write of the head's failure was then refused (so was its bare failure, then
    the lease rescue's): the head stayed running and every link waited forever."""
    async with Client(database_url) as client:
        head = await client.enqueue("boom", max_attempts=1, delay="1h")
        links = await chain(database_url, head, 2000)
        cancelled = await client.enqueue("step", "held", delay="1h")
        held = await chain(database_url, cancelled, 2000)
        # An operator's cancel of a waiting head: one statement fails the 2,000 behind it.
        assert await client.cancel(cancelled) == "cancelled"
    rows = await jobs_by_id(database_url)
    assert sum(rows[i]["status"] == "failed" for i in held) == 2000
    assert rows[held[-1]]["last_error"] == f"dependency {held[-2]} failed"
    assert rows[held[0]]["last_error"] == f"dependency {cancelled} cancelled"
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("UPDATE jobwire.jobs SET run_at = now() WHERE id = $1", head)
    finally:
        await conn.close()
    pool = make_pool(pg_store, HANDLERS)
    await pool.start()
    try:
        rows = await wait_finished(database_url, [head, *links])
    finally:
        await pool.stop()
    assert rows[head]["status"] == "failed"
    assert sum(rows[i]["status"] == "failed" for i in links) == 2000
    assert rows[links[0]]["last_error"] == f"dependency {head} failed"
    assert rows[links[-1]]["last_error"] == f"dependency {links[-2]} failed"
    ran = await fetch(database_url, "SELECT count(*) AS n FROM jobwire.job_runs")
    assert ran[0]["n"] == 1  # the head alone


async def test_a_retried_waiter_waits_for_its_dependencies_again(
    database_url: str, pg_store: PostgresStore
) -> None:
    """A waiter that was cancelled, or failed by its dependency, and is then retried must
    not run before what it waits for: it waits again (or fails again if a dependency is
    still failed). Retrying both in one call brings the chain back in order."""
    async with Client(database_url) as client:
        dep = await client.enqueue("step", "dep", delay="1h")
        waiter = await client.enqueue("step", "waiter", after=[dep])
        assert await client.cancel(waiter) == "cancelled"
        bad = await client.enqueue("boom", max_attempts=1)
        behind = await client.enqueue("step", "behind", after=[bad])
        second = await client.enqueue("step", "second", after=[behind])
    assert await pg_store.retry_ids([waiter]) == [waiter]
    # The dependency has not run: the retried waiter waits for it, not ready now.
    assert (await jobs_by_id(database_url))[waiter]["run_at"].year == 9999
    pool = make_pool(pg_store, HANDLERS)
    await pool.start()
    try:
        rows = await wait_finished(database_url, [bad, behind, second])
        assert [rows[i]["status"] for i in (bad, behind, second)] == ["failed"] * 3
        # Retrying the waiter alone while its dependency is still failed: it fails again.
        await pg_store.retry_ids([behind])
        rows = await wait_finished(database_url, [behind])
        assert (rows[behind]["status"], rows[behind]["last_error"]) == (
            "failed",
            f"dependency {bad} failed",
        )
        assert await runs_of(database_url, behind) == []
        # All three in one call: each waits for the one before (the boom fails again, with
        # a fresh allowance of attempts, and the other two fail behind it without running).
        assert sorted(await pg_store.retry(status="failed")) == [bad, behind, second]
        rows = await wait_finished(database_url, [bad, behind, second])
        assert [rows[i]["status"] for i in (bad, behind, second)] == ["failed"] * 3
        assert len(await runs_of(database_url, bad)) > 1
        assert await runs_of(database_url, behind) == []
        assert await runs_of(database_url, second) == []
        # The dependency now runs; the waiter follows it.
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute("UPDATE jobwire.jobs SET run_at = now() WHERE id = $1", dep)
        finally:
            await conn.close()
        rows = await wait_finished(database_url, [dep, waiter])
    finally:
        await pool.stop()
    assert (rows[dep]["status"], rows[waiter]["status"]) == ("succeeded", "succeeded")
    dep_run, waiter_run = [await runs_of(database_url, i) for i in (dep, waiter)]
    assert waiter_run[0]["started_at"] >= dep_run[0]["finished_at"]


async def test_a_bulk_retry_of_a_long_chain_brings_it_all_back(database_url: str) -> None:
    """``jobs retry`` acts 500 ids a statement. Newest first, a waiter in an earlier batch
    than its dependency was retried while that was still failed, and failed again for good;
    oldest first, each batch's dependencies are already back, and the chain waits whole."""
    async with Client(database_url) as client:
        head = await client.enqueue("step", "head", delay="1h")
        links = await chain(database_url, head, 600)
        assert await client.cancel(head) == "cancelled"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *(
            "-m",
            "jobwire",
            "jobs",
            "retry",
            "--queue",
            "default",
            "--include-poison",  # a job failed by its dependency never ran
            "--yes",
            "--database-url",
            database_url,
        ),
        cwd=REPO,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ},
    )
    _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    rows = await jobs_by_id(database_url)
    assert rows[head]["status"] == "pending"
    assert (
        sum(rows[i]["status"] == "pending" and rows[i]["run_at"].year == 9999 for i in links) == 600
    )


async def test_a_waiter_keeps_its_delay(database_url: str, pg_store: PostgresStore) -> None:
    """A delay counts from the enqueue, with ``after`` as without: a waiter whose dependency
    succeeds before its time is due at its time, not at once; one whose time has passed is
    due at once. An operator's retry means "run now", whatever delay the job first had."""
    async with Client(database_url) as client:
        dep = await client.enqueue("step", "dep", delay="1h")
        short = await client.enqueue("step", "short", after=[dep], delay=0.5)
        long = await client.enqueue("step", "long", after=[dep], delay=5)
        retried = await client.enqueue("step", "retried", after=[dep], delay="1h")
        assert await client.cancel(retried) == "cancelled"
    assert await pg_store.retry_ids([retried]) == [retried]
    rows = await jobs_by_id(database_url)
    assert all(rows[i]["run_at"].year == 9999 for i in (short, long, retried))
    asked = rows[long]["created_at"] + timedelta(seconds=5)

    conn = await asyncpg.connect(database_url)
    try:
        # Let the short delay run out while the dependency still runs, then finish it.
        await wait_for(
            lambda: conn.fetchval(
                "SELECT now() > created_at + interval '0.5 s' FROM jobwire.jobs WHERE id = $1",
                short,
            ),
            what="the short waiter's delay ran out",
        )
        await conn.execute(
            "UPDATE jobwire.jobs SET status = 'succeeded', finished_at = now() WHERE id = $1",
            dep,
        )
    finally:
        await conn.close()
    rows = await jobs_by_id(database_url)
    done = rows[dep]["finished_at"]
    # Due at once: the short waiter (its time has passed) and the retried one.
    assert rows[short]["run_at"] == rows[retried]["run_at"] == done
    # Due at the time it asked for, about four seconds after its dependency finished.
    assert abs(rows[long]["run_at"] - asked) < timedelta(seconds=1)
    assert rows[long]["run_at"] - done > timedelta(seconds=2)
    assert [rows[i]["after_run_at"] for i in (short, long, retried)] == [None] * 3

    request = ClaimRequest({"default": 10}, 10, "w-test", 30)
    assert sorted(j.id for j in await pg_store.claim(request)) == sorted([short, retried])
    # Claims before its time find nothing; the first one after it takes it.
    (job,) = await wait_for(lambda: pg_store.claim(request), what="the long waiter claimed")
    assert job.id == long
    assert job.started_at is not None and job.started_at >= rows[long]["run_at"]


async def test_two_dependencies_finishing_at_once_wake_their_waiter(
    pg_store: PostgresStore, database_url: str
) -> None:
    """Fan-in: two dependencies of one job finish in two transactions at the same moment.
    Each finish trigger saw the other dependency still running, and the job waited forever."""
    first, second = await pg_store.enqueue_many([JobSpec("noop"), JobSpec("noop")])
    assert first is not None and second is not None
    (waiter,) = await pg_store.enqueue_many([JobSpec("noop", after=[first, second])])
    assert waiter is not None
    finish = "UPDATE jobwire.jobs SET status = 'succeeded', finished_at = now() WHERE id = $1"
    a, b = await asyncpg.connect(database_url), await asyncpg.connect(database_url)
    try:
        ta, tb = a.transaction(), b.transaction()
        await ta.start()
        await tb.start()
        await a.execute(finish, first)
        # The second has run before the first commits: done (the race, as before), or
        # waiting on a lock for the first to commit (the fix).
        second_pid = b.get_server_pid()
        second_done = asyncio.create_task(b.execute(finish, second))

        async def second_ran_or_waits() -> bool:
            waiting = await a.fetchval(
                "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1",
                second_pid,
            )
            return second_done.done() or bool(waiting)

        await wait_for(second_ran_or_waits, what="the second finish to run or wait")
        await ta.commit()
        async with asyncio.timeout(10):
            await second_done
        await tb.commit()
    finally:
        await a.close()
        await b.close()
    rows = await fetch(
        database_url, "SELECT run_at <= now() AS due FROM jobwire.jobs WHERE id = $1", waiter
    )
    assert rows[0]["due"], "the waiter was left waiting with both dependencies succeeded"
