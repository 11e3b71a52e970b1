"""Flow controls held across instances: two pools (each with its own store connection pool,
as two daemons have) on one database; proved by counting rows and by the job_runs
intervals [started_at, finished_at] of every attempt."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest
import structlog
from aiohttp.test_utils import TestServer

from jobwire.config import Config, HttpConfig
from jobwire.handlers import JobContext
from jobwire.intake.writer import BatchWriter
from jobwire.metrics import Metrics
from jobwire.models import JobSpec
from jobwire.routing import Routed
from jobwire.store.base import ClaimFlow, ClaimRequest, QueueFlow
from jobwire.store.postgres import PostgresStore
from jobwire.store.queries import queries
from jobwire.web.server import HttpApi
from jobwire.worker import WorkerPool
from tests.support.daemon import jobwire
from tests.support.pools import fast_config, make_pool
from tests.support.rows import fetch, job_count, scalar
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(120)
TOKEN = "flow-admin-token"


async def connect(url: str) -> PostgresStore:
    """One instance's store."""
    return await PostgresStore.connect(url, "jobwire", min_size=1, max_size=4)


async def sleeper(payload: Any, ctx: JobContext) -> dict[str, Any]:
    """Runs long enough for overlaps to show."""
    await asyncio.sleep(0.03)
    return {"i": payload["i"]}


@pytest.fixture
async def two_stores(database_url: str) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    """Two instances' stores on the same database."""
    a, b = await connect(database_url), await connect(database_url)
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


async def run_pools(
    stores: tuple[PostgresStore, PostgresStore], config: Config, handlers: dict[str, Any]
) -> list[WorkerPool]:
    """Start one pool per store, as two daemons would."""
    pools = [make_pool(s, handlers, config, worker_id=f"inst-{i}") for i, s in enumerate(stores)]
    for pool in pools:
        await pool.start()
    return pools


async def stop_all(pools: list[WorkerPool]) -> None:
    """Stop the pools."""
    await asyncio.gather(*(p.stop() for p in pools))


async def insert_keyed(url: str, queue: str, n: int, keys: int, handler: str = "sleep") -> None:
    """n jobs by plain SQL, payload {"i": 1..n}, key k<i mod keys>, in id order."""
    await scalar(
        url,
        "INSERT INTO jobwire.jobs (handler, queue, payload, concurrency_key) "
        "SELECT $1, $2, jsonb_build_object('i', g), 'k' || (g % $4) "
        "FROM generate_series(1, $3) g ORDER BY g",
        handler,
        queue,
        n,
        keys,
    )


async def all_succeeded(url: str, n: int) -> bool:
    """Whether n jobs have succeeded."""
    return await job_count(url, "status = 'succeeded'") >= n


async def overlapping_same_key(url: str) -> int:
    """Pairs of attempts of jobs with one key whose [started_at, finished_at] overlap."""
    return int(
        await scalar(
            url,
            "SELECT count(*) FROM jobwire.job_runs a JOIN jobwire.jobs ja ON ja.id = a.job_id "
            "JOIN jobwire.job_runs b ON b.id < a.id JOIN jobwire.jobs jb ON jb.id = b.job_id "
            "WHERE ja.concurrency_key = jb.concurrency_key "
            "AND a.started_at < b.finished_at AND b.started_at < a.finished_at",
        )
    )


async def overlapping_other_keys(url: str) -> int:
    """Pairs of attempts of jobs with different keys that overlap (parallelism happened)."""
    return int(
        await scalar(
            url,
            "SELECT count(*) FROM jobwire.job_runs a JOIN jobwire.jobs ja ON ja.id = a.job_id "
            "JOIN jobwire.job_runs b ON b.id < a.id JOIN jobwire.jobs jb ON jb.id = b.job_id "
            "WHERE ja.concurrency_key <> jb.concurrency_key "
            "AND a.started_at < b.finished_at AND b.started_at < a.finished_at",
        )
    )


async def test_key_limit_one_no_two_jobs_of_a_key_overlap(
    database_url: str, two_stores: tuple[PostgresStore, PostgresStore]
) -> None:
    # Three slots each for six keys: neither instance can run every key alone, so both
    # claim keyed jobs side by side and the key limit is held across instances.
    config = fast_config(queues={"keyed": {"key_concurrency": 1}}, workers={"concurrency": 3})
    await insert_keyed(database_url, "keyed", 120, keys=6)
    pools = await run_pools(two_stores, config, {"sleep": sleeper})
    try:
        await wait_for(lambda: all_succeeded(database_url, 120), timeout=90, what="all ran")
    finally:
        await stop_all(pools)
    # Nothing lost, nothing run twice: one attempt per job.
    assert await scalar(database_url, "SELECT count(*) FROM jobwire.job_runs") == 120
    assert await scalar(database_url, "SELECT count(DISTINCT job_id) FROM jobwire.job_runs") == 120
    assert await overlapping_same_key(database_url) == 0
    # Both instances ran keyed jobs, side by side for different keys.
    workers = await fetch(database_url, "SELECT DISTINCT worker_id FROM jobwire.job_runs")
    assert len(workers) == 2
    assert await overlapping_other_keys(database_url) > 0


async def racing_claims(stores: tuple[PostgresStore, ...], rounds: int) -> int:
    """Many flow claims at once from every store, none completing; jobs claimed."""
    flow = ClaimFlow({"keyed": QueueFlow(key_limit=1)})

    async def claimer(store: PostgresStore, n: int) -> int:
        got = 0
        for _ in range(rounds):
            request = ClaimRequest({"keyed": 4}, 4, f"racer-{n}", 60.0, flow)
            got += len(await store.claim(request))
        return got

    counts = await asyncio.gather(*(claimer(s, n) for n, s in enumerate(stores * 4)))
    return sum(counts)


async def test_racing_flow_claims_of_two_instances_never_exceed_a_key_limit(
    database_url: str, two_stores: tuple[PostgresStore, PostgresStore]
) -> None:
    await insert_keyed(database_url, "keyed", 400, keys=20)
    claimed = await racing_claims(two_stores, rounds=10)
    # A claim that finds the flow lock taken skips its flow part: top up one at a time.
    flow = ClaimFlow({"keyed": QueueFlow(key_limit=1)})
    for store in two_stores * 3:
        claimed += len(await store.claim(ClaimRequest({"keyed": 8}, 8, "top-up", 60.0, flow)))
    # Nothing completes, so each of the 20 keys has exactly one job running, however the
    # eight claimers on two instances raced.
    assert claimed == 20
    per_key = await fetch(
        database_url,
        "SELECT concurrency_key, count(*) AS n FROM jobwire.jobs WHERE status = 'running' "
        "GROUP BY concurrency_key",
    )
    assert len(per_key) == 20 and {r["n"] for r in per_key} == {1}


async def test_key_limit_two_allows_two_of_a_key_at_most(
    database_url: str, two_stores: tuple[PostgresStore, PostgresStore]
) -> None:
    config = fast_config(queues={"keyed": {"key_concurrency": 2}})
    await insert_keyed(database_url, "keyed", 60, keys=2)
    pools = await run_pools(two_stores, config, {"sleep": sleeper})
    try:
        await wait_for(lambda: all_succeeded(database_url, 60), timeout=90, what="all ran")
    finally:
        await stop_all(pools)
    # At any attempt's start, at most one other attempt of its key was running.
    worst = await scalar(
        database_url,
        "SELECT max(n) FROM (SELECT a.id, count(b.id) AS n FROM jobwire.job_runs a "
        "JOIN jobwire.jobs ja ON ja.id = a.job_id "
        "JOIN jobwire.job_runs b ON b.id <> a.id JOIN jobwire.jobs jb ON jb.id = b.job_id "
        "WHERE ja.concurrency_key = jb.concurrency_key "
        "AND b.started_at <= a.started_at AND a.started_at < b.finished_at GROUP BY a.id) o",
    )
    assert worst == 1  # two at once happened, never three


async def test_ordered_keys_run_in_enqueue_order_and_a_retry_blocks_its_key(
    database_url: str, two_stores: tuple[PostgresStore, PostgresStore]
) -> None:
    config = fast_config(queues={"ordered": {"key_concurrency": 1, "ordered": True}})
    failed_once: set[int] = set()

    async def flaky(payload: Any, ctx: JobContext) -> None:
        await asyncio.sleep(0.01)
        if payload["i"] in (7, 12) and payload["i"] not in failed_once:
            failed_once.add(payload["i"])
            raise RuntimeError("first attempt fails")

    await insert_keyed(database_url, "ordered", 60, keys=4, handler="flaky")
    pools = await run_pools(two_stores, config, {"flaky": flaky})
    try:
        await wait_for(lambda: all_succeeded(database_url, 60), timeout=90, what="all ran")
    finally:
        await stop_all(pools)
    assert await scalar(database_url, "SELECT count(*) FROM jobwire.job_runs") == 62
    # Per key, in id order: each job's first attempt starts after the previous job's last
    # attempt finished (so the retried jobs 7 and 12 held back the rest of their keys).
    rows = await fetch(
        database_url,
        "SELECT j.id, j.concurrency_key AS key, min(r.started_at) AS first, "
        "max(r.finished_at) AS last FROM jobwire.jobs j JOIN jobwire.job_runs r "
        "ON r.job_id = j.id GROUP BY j.id ORDER BY j.concurrency_key, j.id",
    )
    out_of_order = [
        (prev["id"], row["id"])
        for prev, row in itertools.pairwise(rows)
        if prev["key"] == row["key"] and row["first"] < prev["last"]
    ]
    assert out_of_order == []
    assert await overlapping_same_key(database_url) == 0


async def test_queue_rate_holds_across_instances_and_bounds_bursts(
    database_url: str, two_stores: tuple[PostgresStore, PostgresStore]
) -> None:
    rate, burst, n = 20.0, 4, 200
    config = fast_config(queues={"slow": {"rate": "20/s", "burst": burst}})

    async def quick(payload: Any, ctx: JobContext) -> None:
        return None

    await scalar(
        database_url,
        "INSERT INTO jobwire.jobs (handler, queue, payload) "
        "SELECT 'quick', 'slow', jsonb_build_object('i', g) FROM generate_series(1, $1) g",
        n,
    )
    pools = await run_pools(two_stores, config, {"quick": quick})
    try:
        await wait_for(lambda: all_succeeded(database_url, n), timeout=60, what="all ran")
    finally:
        await stop_all(pools)
    starts = [
        r["t"]
        for r in await fetch(
            database_url,
            "SELECT extract(epoch FROM started_at)::float8 AS t FROM jobwire.job_runs ORDER BY 1",
        )
    ]
    assert len(starts) == n
    assert {r["w"] for r in await fetch(database_url, "SELECT worker_id w FROM jobwire.job_runs")}
    # (n - burst) tokens had to flow in at the rate: at least 9 s from first to last start.
    assert starts[-1] - starts[0] >= (n - burst) / rate - 0.05
    assert starts[-1] - starts[0] >= 9.0
    # In every window between two starts, no more starts than the burst plus what flowed in
    # (one token of slack: a bucket is read a moment before the rows it allows start).
    worst = max(
        (j - i + 1) - (burst + rate * (starts[j] - starts[i]))
        for i in range(n)
        for j in range(i, min(n, i + 60))
    )
    assert worst <= 1.0, f"a window started {worst:.2f} more jobs than the rate allows"


async def test_handler_rate_holds_in_every_queue(
    database_url: str, two_stores: tuple[PostgresStore, PostgresStore]
) -> None:
    config = fast_config(handler_limits={"capped": {"rate": "10/s", "burst": 2}})

    async def capped(payload: Any, ctx: JobContext) -> None:
        return None

    await scalar(
        database_url,
        "INSERT INTO jobwire.jobs (handler, queue, payload) "
        "SELECT CASE WHEN g % 2 = 0 THEN 'capped' ELSE 'noop' END, 'default', "
        "jsonb_build_object('i', g) FROM generate_series(1, 60) g",
    )
    pools = await run_pools(two_stores, config, {"capped": capped, "noop": capped})
    try:
        await wait_for(lambda: all_succeeded(database_url, 60), timeout=60, what="all ran")
    finally:
        await stop_all(pools)
    spans = await fetch(
        database_url,
        "SELECT j.handler, extract(epoch FROM max(r.started_at) - min(r.started_at))::float8 AS s "
        "FROM jobwire.job_runs r JOIN jobwire.jobs j ON j.id = r.job_id GROUP BY j.handler",
    )
    by_handler = {r["handler"]: r["s"] for r in spans}
    assert by_handler["capped"] >= (30 - 2) / 10 - 0.05  # 30 jobs at 10/s, burst 2
    assert by_handler["noop"] < by_handler["capped"]  # the unlimited handler was not held


async def test_paused_queue_starts_nothing_until_resumed_while_intake_stores(
    database_url: str, two_stores: tuple[PostgresStore, PostgresStore]
) -> None:
    config = fast_config(queues={"default": {}, "held": {}})
    a, _ = two_stores
    pools = await run_pools(two_stores, config, {"sleep": sleeper})
    try:
        await a.set_queue_paused("held", True, "test")
        # Every instance has read it within one poll interval (100 ms); two to be sure.
        await asyncio.sleep(0.25)
        writer = BatchWriter(a, pools[0], structlog.get_logger("test"))
        specs = [JobSpec("sleep", {"i": i}, queue="held") for i in range(20)]
        specs += [JobSpec("sleep", {"i": 100 + i}, queue="default") for i in range(5)]
        ids = await writer.write([Routed(s) for s in specs], [b""] * len(specs))
        assert None not in ids  # stored while paused
        await wait_for(lambda: all_succeeded(database_url, 5), what="the other queue ran")
        # Several poll intervals later, the paused queue has started nothing anywhere.
        await asyncio.sleep(0.5)
        assert await job_count(database_url, "queue = 'held' AND status = 'pending'") == 20
        assert (
            await scalar(
                database_url,
                "SELECT count(*) FROM jobwire.job_runs r JOIN jobwire.jobs j ON j.id = r.job_id "
                "WHERE j.queue = 'held'",
            )
            == 0
        )
        assert await a.set_queue_paused("held", False, "test")
        await wait_for(lambda: all_succeeded(database_url, 25), what="the resumed queue ran")
    finally:
        await stop_all(pools)
    assert await scalar(database_url, "SELECT count(*) FROM jobwire.job_runs") == 25


async def test_keyed_specs_from_the_intake_never_start_directly(
    database_url: str, two_stores: tuple[PostgresStore, PostgresStore]
) -> None:
    config = fast_config(queues={"default": {"key_concurrency": 1}})
    a, _ = two_stores
    pools = await run_pools(two_stores, config, {"sleep": sleeper})
    try:
        writer = BatchWriter(a, pools[0], structlog.get_logger("test"))
        specs = [JobSpec("sleep", {"i": i}, concurrency_key="one") for i in range(10)]
        specs += [JobSpec("sleep", {"i": 100 + i}) for i in range(4)]
        await writer.write([Routed(s) for s in specs], [b""] * len(specs))
        await wait_for(lambda: all_succeeded(database_url, 14), timeout=30, what="all ran")
    finally:
        await stop_all(pools)
    assert pools[0].counters.direct <= 4  # only the unkeyed ones may have been handed over
    assert await overlapping_same_key(database_url) == 0


# -- operators: CLI and API -----------------------------------------------------------------


def cli(database_url: str, *args: str) -> Any:
    """Run a `jobwire queues` command with -o json; its answer."""
    out = jobwire("queues", *args, "--database-url", database_url, "-o", "json")
    return json.loads(out.stdout)


async def test_cli_pause_resume_list_and_audit(database_url: str) -> None:
    paused = await asyncio.to_thread(cli, database_url, "pause", "mail")
    assert paused == {"queue": "mail", "paused": True, "changed": True}
    again = await asyncio.to_thread(cli, database_url, "pause", "mail")
    assert again["changed"] is False
    listed = await asyncio.to_thread(cli, database_url, "list")
    mail = next(q for q in listed["queues"] if q["queue"] == "mail")
    assert mail["paused"] is True and mail["changed_by"].startswith("cli:")
    stats = json.loads(
        (
            await asyncio.to_thread(jobwire, "stats", "--database-url", database_url, "-o", "json")
        ).stdout
    )
    assert stats["paused"] == ["mail"]
    resumed = await asyncio.to_thread(cli, database_url, "resume", "mail")
    assert resumed == {"queue": "mail", "paused": False, "changed": True}
    audit = await fetch(database_url, "SELECT action, target, actor FROM jobwire.audit ORDER BY id")
    assert [(r["action"], r["target"]) for r in audit] == [
        ("pause_queue", "mail"),
        ("pause_queue", "mail"),
        ("resume_queue", "mail"),
    ]
    bad = await asyncio.to_thread(
        jobwire, "queues", "pause", " ", "--database-url", database_url, check=False
    )
    assert bad.returncode == 2 and "empty" in bad.stderr


@pytest.fixture
async def api(pg_store: PostgresStore) -> AsyncIterator[str]:
    """An HttpApi with an admin token over the test's database."""
    http = HttpApi(
        HttpConfig(listen="127.0.0.1:0", admin_token=TOKEN),
        pg_store,
        Metrics(pg_store, lambda: {}, lambda: {}),
        lambda: {},
        lambda: None,
        allowed_handlers=frozenset({"noop"}),
    )
    server = TestServer(http.app())
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


async def test_api_pause_resume_with_audit_and_auth(database_url: str, api: str) -> None:
    admin = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{api}/api/v1/queues/mail/pause") as answer:
            assert answer.status == 401  # no token: refused, and nothing changed
        async with http.post(
            f"{api}/api/v1/queues/mail/pause", headers={"Authorization": "Bearer wrong"}
        ) as answer:
            assert answer.status == 401
        assert await scalar(database_url, "SELECT count(*) FROM jobwire.queue_state") == 0
        async with http.post(f"{api}/api/v1/queues/mail/pause", headers=admin) as answer:
            assert answer.status == 200
            assert await answer.json() == {"queue": "mail", "paused": True, "changed": True}
        async with http.get(f"{api}/api/v1/queues", headers=admin) as answer:
            listed = (await answer.json())["queues"]
            assert [(q["queue"], q["paused"]) for q in listed] == [("mail", True)]
        async with http.post(f"{api}/api/v1/queues/mail/resume", headers=admin) as answer:
            assert (await answer.json())["changed"] is True
        async with http.post(f"{api}/api/v1/queues/%00/pause", headers=admin) as answer:
            assert answer.status == 400
    audit = await fetch(database_url, "SELECT action, target, actor FROM jobwire.audit ORDER BY id")
    assert [(r["action"], r["target"]) for r in audit] == [
        ("pause_queue", "mail"),
        ("resume_queue", "mail"),
    ]
    assert audit[0]["actor"].startswith("api:")


async def test_pause_is_seen_by_a_running_pool_at_once_through_notify(
    database_url: str, two_stores: tuple[PostgresStore, PostgresStore]
) -> None:
    config = fast_config(
        workers={"poll_interval": "30s", "listen": True}, queues={"default": {}, "held": {}}
    )
    a, b = two_stores
    pools = await run_pools((a, b), config, {"sleep": sleeper})
    try:
        # Let the LISTEN connections come up, then pause from "another instance".
        await asyncio.sleep(0.5)
        started = time.monotonic()
        await a.set_queue_paused("held", True, "test")
        await wait_for(
            lambda: all("held" in p.state.flow.paused for p in pools),
            timeout=5,
            what="both pools saw the pause",
        )
        assert time.monotonic() - started < 5  # far sooner than the 30 s poll
    finally:
        await stop_all(pools)


# The flow claim's cost and its fairness when keys are blocked (review findings).

KEY1 = ClaimFlow({"keyed": QueueFlow(key_limit=1)})


async def test_a_claim_takes_up_to_each_keys_room_past_a_run_of_one_key(
    pg_store: PostgresStore,
) -> None:
    # Ten jobs of key a, then one each of ten other keys: a claim of ten with key limit 1
    # used to look at the first ten (all a's) and start one job.
    await pg_store.enqueue_many([JobSpec("noop", queue="keyed", concurrency_key="a")] * 10)
    await pg_store.enqueue_many(
        [JobSpec("noop", queue="keyed", concurrency_key=f"k{i}") for i in range(10)]
    )
    jobs = await pg_store.claim(ClaimRequest({"keyed": 10}, 10, "w", 60.0, KEY1))
    keys = sorted(j.concurrency_key or "" for j in jobs)
    assert len(jobs) == 10 and len(set(keys)) == 10 and "a" in keys


async def rows_one_claim_reads(url: str) -> int:
    """Rows of jobs one flow claim of 32 (key limit 1) reads, by the server's own count of
    this transaction (pg_stat_xact_user_tables), the claim rolled back."""
    conn = await asyncpg.connect(url, server_settings={"search_path": "jobwire"})
    try:
        tx = conn.transaction()
        await tx.start()
        await conn.fetch(
            queries()["claim_flow_jobs"],
            *(["keyed"], [32], 32, "probe", 60.0, [1], [False], [False], [], [], [], []),
        )
        read = await conn.fetchval(
            "SELECT coalesce(idx_tup_fetch, 0) + coalesce(seq_tup_read, 0)"
            " FROM pg_stat_xact_user_tables WHERE schemaname = 'jobwire' AND relname = 'jobs'"
        )
        await tx.rollback()
        return int(read)
    finally:
        await conn.close()


async def test_a_hot_key_at_its_limit_does_not_slow_or_starve_the_other_keys(
    pg_store: PostgresStore, database_url: str
) -> None:
    hot = 20_000
    for _ in range(hot // 5000):
        await pg_store.enqueue_many([JobSpec("noop", queue="keyed", concurrency_key="hot")] * 5000)
    (holder,) = await pg_store.claim(ClaimRequest({"keyed": 1}, 1, "holder", 600.0, KEY1))
    assert holder.concurrency_key == "hot"
    others = 300
    await pg_store.enqueue_many(
        [JobSpec("noop", queue="keyed", concurrency_key=f"k{i}") for i in range(others)]
    )
    # A job due tomorrow of a new key is neither claimed nor counted as ready.
    await pg_store.enqueue_many(
        [JobSpec("noop", queue="later", concurrency_key="x", delay=86_400.0)]
    )
    # Each claim used to read the whole hot backlog (with a count per row); it now steps
    # past the hot key by one index descent.
    assert await rows_one_claim_reads(database_url) < 2_000
    claimed: list[int] = []
    t0 = time.perf_counter()
    while len(claimed) < others:
        async with asyncio.timeout(5):
            jobs = await pg_store.claim(ClaimRequest({"keyed": 32}, 32, "w", 60.0, KEY1))
        assert jobs, f"the claim came back empty with {others - len(claimed)} other keys waiting"
        assert all(j.concurrency_key != "hot" for j in jobs)
        claimed += [j.id for j in jobs]
    elapsed = time.perf_counter() - t0
    assert len(set(claimed)) == others
    assert elapsed < 10, f"{others} jobs past a hot key took {elapsed:.1f} s"
    assert (
        await scalar(database_url, "SELECT count(*) FROM jobwire.jobs WHERE status = 'running'")
        == others + 1
    )
    state = await pg_store.flow_state(["keyed", "later"])
    assert state.keyed == frozenset({"keyed"})


async def test_a_stalled_flow_lock_holder_stops_neither_fast_nor_later_claims(
    pg_store: PostgresStore, database_url: str
) -> None:
    await pg_store.enqueue_many([JobSpec("noop", queue="plain") for _ in range(3)])
    await pg_store.enqueue_many(
        [JobSpec("noop", queue="keyed", concurrency_key=f"k{i}") for i in range(3)]
    )
    retries: list[float] = []
    flow = ClaimFlow({"keyed": QueueFlow(key_limit=1)}, on_throttle=retries.append)
    stalled = await asyncpg.connect(database_url)
    try:
        tx = stalled.transaction()
        await tx.start()
        # Another instance, stalled inside its flow claim.
        await stalled.execute(
            "SELECT pg_advisory_xact_lock(hashtext('jobwire.flow_claim:' || 'jobwire'))"
        )
        request = ClaimRequest({"plain": 8, "keyed": 8}, 16, "w", 60.0, flow)
        async with asyncio.timeout(5):  # waited for the lock forever before
            jobs = await pg_store.claim(request)
        assert sorted(j.queue for j in jobs) == ["plain"] * 3
        assert retries, "a skipped flow part must ask to be tried again soon"
        await tx.rollback()
    finally:
        await stalled.close()
    async with asyncio.timeout(5):
        jobs = await pg_store.claim(request)
    assert sorted(j.queue for j in jobs) == ["keyed"] * 3


async def flow_state_reads(url: str, handlers: list[str], full: bool) -> tuple[set[str], int]:
    """flow_state's kinds for queue q and the rows of jobs it read (this transaction's own
    count, pg_stat_xact_user_tables)."""
    conn = await asyncpg.connect(url, server_settings={"search_path": "jobwire"})
    try:
        async with conn.transaction():
            rows = await conn.fetch(queries()["flow_state"], ["q"], handlers, full)
            read = await conn.fetchval(
                "SELECT coalesce(idx_tup_fetch, 0) + coalesce(seq_tup_read, 0)"
                " FROM pg_stat_xact_user_tables WHERE schemaname = 'jobwire' AND relname = 'jobs'"
            )
        return {r["kind"] for r in rows}, int(read)
    finally:
        await conn.close()


async def test_the_poll_look_for_rate_limited_jobs_is_bounded_between_full_looks(
    pg_store: PostgresStore, database_url: str
) -> None:
    await pg_store.enqueue_many([JobSpec("noop", queue="q") for _ in range(3000)])
    # No job of the rate-limited handler: a look used to read all 3,000 every poll.
    kinds, read = await flow_state_reads(database_url, ["capped"], full=False)
    assert kinds == set() and read <= 300
    kinds, read = await flow_state_reads(database_url, ["capped"], full=True)
    assert kinds == set() and read >= 3000
    # One behind them: the full look (every few polls) finds it, the bounded one may not.
    await pg_store.enqueue_many([JobSpec("capped", queue="q")])
    assert (await flow_state_reads(database_url, ["capped"], full=True))[0] == {"limited"}
    assert (await flow_state_reads(database_url, ["capped"], full=False))[0] == set()


async def test_controls_keep_what_a_full_look_found_until_the_next_full_look() -> None:
    from jobwire.store.base import FlowState
    from jobwire.worker.controls import FULL_LOOK_EVERY, FlowControls

    looks: list[bool] = []

    class Store:
        async def flow_state(self, queues: Any, limited: Any = (), full: bool = True) -> FlowState:
            looks.append(full)
            # The bounded look never sees the queue's limited jobs.
            return FlowState(limited=frozenset({"q"}) if full else frozenset())

    config = Config.model_validate(
        {"workers": {"poll_interval": "1ms"}, "handler_limits": {"capped": {"rate": "1/s"}}}
    )
    controls = FlowControls(config, ["q"], asyncio.Event())
    for _ in range(FULL_LOOK_EVERY * 2):
        controls._next_read = 0.0
        await controls.refresh(Store())  # type: ignore[arg-type]
        assert controls.state.limited == frozenset({"q"})
    assert looks.count(True) == 2 and looks[0] is True
