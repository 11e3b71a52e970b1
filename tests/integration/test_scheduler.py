"""Schedules on a real PostgreSQL: one leader, one job per tick, take-over when it dies."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from jobwire.config import Config
from jobwire.maintenance import Maintenance
from jobwire.scheduler import Scheduler
from jobwire.store.postgres import PostgresStore
from tests.support.daemon import jobwire, write_config
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]


def config_with(**schedule: Any) -> Config:
    return Config.model_validate(
        {"schedules": [{"name": "tick", "every": "1s", "handler": "noop", **schedule}]}
    )


async def tick_times(url: str) -> list[datetime]:
    conn = await asyncpg.connect(url)
    try:
        keys = [
            r["dedup_key"]
            for r in await conn.fetch(
                "SELECT dedup_key FROM jobwire.jobs WHERE source = 'schedule:tick' ORDER BY 1"
            )
        ]
    finally:
        await conn.close()
    return [datetime.fromisoformat(k.removeprefix("schedule:tick:")) for k in keys]


def assert_consecutive_seconds(times: list[datetime]) -> None:
    gaps = [(a, b) for a, b in itertools.pairwise(times) if (b - a).total_seconds() != 1.0]
    assert gaps == [], f"ticks missing or doubled between {gaps}"


async def test_two_instances_fire_one_job_per_tick_and_the_other_takes_over(
    database_url: str,
) -> None:
    config = config_with(catch_up="all")
    stores = [await PostgresStore.connect(database_url, min_size=1, max_size=3) for _ in range(2)]
    schedulers = [Scheduler(s, config, lambda: None, retry_every=0.2) for s in stores]
    for scheduler in schedulers:
        await scheduler.sync()
    tasks = [asyncio.create_task(s.run()) for s in schedulers]
    try:

        async def enough() -> bool:
            return len(await tick_times(database_url)) >= 5

        await wait_for(enough, timeout=20, what="five ticks")
        leaders = [s for s in schedulers if s.leading]
        assert len(leaders) == 1  # one leader, chosen by the advisory lock
        # The leader dies without any goodbye: its task stops and its lock connection drops.
        index = schedulers.index(leaders[0])
        tasks[index].cancel()
        await asyncio.gather(tasks[index], return_exceptions=True)
        died_at = len(await tick_times(database_url))
        other = schedulers[1 - index]

        async def taken_over() -> bool:
            return other.leading

        await wait_for(taken_over, timeout=5, what="the other instance leading")

        async def more() -> bool:
            return len(await tick_times(database_url)) >= died_at + 4

        await wait_for(more, timeout=20, what="ticks after the take-over")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for store in stores:
            await store.close()
    times = await tick_times(database_url)
    assert_consecutive_seconds(times)  # catch_up: all, so not one tick lost or doubled
    assert len(times) == len(set(times))


async def test_catch_up_latest_makes_one_job_for_missed_ticks(database_url: str) -> None:
    store = await PostgresStore.connect(database_url, min_size=1, max_size=2)
    try:
        scheduler = Scheduler(store, config_with(), lambda: None)
        await scheduler.sync()
        # Every instance was down for a while: next_run_at lies 30 ticks in the past.
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(
                "UPDATE jobwire.schedules"
                " SET next_run_at = date_trunc('second', now()) - interval '30s'"
            )
        finally:
            await conn.close()
        made = await scheduler.fire_due()
        # latest: the 30 missed ticks make no job of their own; only the tick (or two) due
        # within the last interval runs.
        assert 1 <= made <= 2
        assert len(await tick_times(database_url)) == made
        assert await scheduler.fire_due() == 0  # and it moved on past now
    finally:
        await store.close()


@pytest.mark.parametrize(("catch_up", "most"), [("latest", 2), ("none", 1)])
async def test_hours_of_missed_ticks_make_one_job_at_most(
    database_url: str, catch_up: str, most: int
) -> None:
    store = await PostgresStore.connect(database_url, min_size=1, max_size=2)
    try:
        scheduler = Scheduler(store, config_with(catch_up=catch_up), lambda: None)
        await scheduler.sync()
        # Down for three hours: 10,800 missed ticks, more than due() walks in one go (1,000).
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(
                "UPDATE jobwire.schedules"
                " SET next_run_at = date_trunc('second', now()) - interval '3 hours'"
            )
        finally:
            await conn.close()
        made = await scheduler.fire_due() + await scheduler.fire_due()
        # Before: "latest" made one job per 1,000 missed ticks over as many passes, each
        # for an hours-old tick. Now the latest tick (or one still on time) alone runs.
        assert made <= most
        times = await tick_times(database_url)
        assert len(times) == made
        assert all((datetime.now(UTC) - t).total_seconds() < 10 for t in times), times
    finally:
        await store.close()


async def test_end_at_moved_before_the_stored_next_tick_stops_the_schedule(
    database_url: str,
) -> None:
    store = await PostgresStore.connect(database_url, min_size=1, max_size=2)
    try:
        await Scheduler(store, config_with(every="1h"), lambda: None).sync()
        # Stop it before its next tick: the sync keeps next_run_at (end_at is not timing).
        end = datetime.now(UTC) + timedelta(minutes=1)
        scheduler = Scheduler(store, config_with(every="1h", end_at=end.isoformat()), lambda: None)
        await scheduler.sync()
        # An hour on: the stored tick is due, and lies past end_at.
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(
                "UPDATE jobwire.schedules SET next_run_at = now() - interval '1s',"
                " end_at = now() - interval '59 minutes'"
            )
        finally:
            await conn.close()
        assert await scheduler.fire_due() == 0
        assert await tick_times(database_url) == []
        row = await store.get_schedule("tick")
        assert row is not None and row.next_run_at is None
    finally:
        await store.close()


async def test_max_runs_and_end_at_stop_a_schedule(database_url: str) -> None:
    store = await PostgresStore.connect(database_url, min_size=1, max_size=2)
    try:
        scheduler = Scheduler(
            store, config_with(max_runs=3, catch_up="all"), lambda: None, retry_every=0.1
        )
        await scheduler.sync()
        task = asyncio.create_task(scheduler.run())

        async def stopped() -> bool:
            rows = await store.list_schedules()
            return not rows[0].enabled

        await wait_for(stopped, timeout=15, what="schedule disabled after max_runs")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert len(await tick_times(database_url)) == 3
        assert (await store.list_schedules())[0].run_count == 3
    finally:
        await store.close()


def test_schedules_cli_list_run_pause_resume(database_url: str, tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "jobwire.yaml",
        {
            "database": {"url": database_url},
            "schedules": [
                {
                    "name": "nightly",
                    "cron": "0 2 * * *",
                    "handler": "echo",
                    "payload": {"report": "daily"},
                }
            ],
            "logging": {"format": "json"},
        },
    )

    async def sync() -> None:
        store = await PostgresStore.connect(database_url, min_size=1, max_size=1)
        try:
            from jobwire.config import load_config

            cfg, _ = load_config(str(config))
            await Scheduler(store, cfg, lambda: None).sync()
        finally:
            await store.close()

    asyncio.run(sync())  # what `jobwire run` does at start-up
    listing = jobwire("schedules", "list", "-c", str(config)).stdout
    assert "nightly" in listing and "0 2 * * *" in listing and "enabled" in listing
    job_id = jobwire("schedules", "run", "nightly", "-c", str(config)).stdout.strip()
    assert job_id.isdigit()
    assert "paused" in jobwire("schedules", "pause", "nightly", "-c", str(config)).stdout
    assert "paused" in jobwire("schedules", "list", "-c", str(config)).stdout
    assert "resumed" in jobwire("schedules", "resume", "nightly", "-c", str(config)).stdout
    missing = jobwire("schedules", "run", "nope", "-c", str(config), check=False)
    assert missing.returncode == 1 and "no schedule named 'nope'" in missing.stderr


async def test_the_daemon_runs_its_schedules(database_url: str) -> None:
    from tests.support.inprocess import running_daemon

    config = Config.model_validate(
        {
            "database": {"url": database_url},
            "workers": {"poll_interval": "200ms"},
            "schedules": [{"name": "tick", "every": "1s", "handler": "echo", "payload": {"hi": 1}}],
        }
    )
    async with running_daemon(config, wait_sources=False):

        async def three_done() -> bool:
            conn = await asyncpg.connect(database_url)
            try:
                return (
                    await conn.fetchval(
                        "SELECT count(*) FROM jobwire.jobs"
                        " WHERE source = 'schedule:tick' AND status = 'succeeded'"
                    )
                    >= 3
                )
            finally:
                await conn.close()

        await wait_for(three_done, timeout=15, what="three scheduled jobs run")
    assert_consecutive_seconds(await tick_times(database_url))


async def test_retention_purges_old_finished_jobs_and_their_runs(database_url: str) -> None:
    from jobwire.models import JobSpec

    store = await PostgresStore.connect(database_url, min_size=1, max_size=2)
    try:
        ids = await store.enqueue_many([JobSpec("noop") for _ in range(25)])
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(
                "UPDATE jobwire.jobs SET status = 'succeeded', finished_at = now() - interval"
                " '40 days' WHERE id <= $1",
                ids[19],
            )
            await conn.execute(
                "INSERT INTO jobwire.job_runs (job_id, attempt, worker_id, status, started_at)"
                " SELECT id, 1, 'w', 'succeeded', now() FROM jobwire.jobs"
            )
            await conn.execute(  # finished, but recently: kept
                "UPDATE jobwire.jobs SET status = 'failed', finished_at = now() WHERE id = $1",
                ids[20],
            )
            config = Config.model_validate({"retention": {"finished": "30d", "batch": 7}})
            purged = await Maintenance(store, config.retention).purge()
            left = await conn.fetchval("SELECT count(*) FROM jobwire.jobs")
            runs = await conn.fetchval("SELECT count(*) FROM jobwire.job_runs")
        finally:
            await conn.close()
    finally:
        await store.close()
    assert purged == 20  # in batches of 7: 7 + 7 + 6
    assert (left, runs) == (5, 5)


async def test_one_maintenance_leader_purges_and_another_takes_over(database_url: str) -> None:
    from jobwire.config import RetentionConfig
    from jobwire.models import JobSpec

    retention = RetentionConfig.model_validate({"finished": "30d", "every": "100ms"})
    stores = [await PostgresStore.connect(database_url, min_size=1, max_size=2) for _ in range(2)]
    services = [
        Maintenance(s, retention, retry_every=0.2, check_every=0.05, first_purge_after=0)
        for s in stores
    ]
    conn = await asyncpg.connect(database_url)

    async def finish_long_ago(job_id: int | None) -> None:
        await conn.execute(
            "UPDATE jobwire.jobs SET status = 'succeeded', finished_at = now() - interval"
            " '40 days' WHERE id = $1",
            job_id,
        )

    async def left(expected: int) -> bool:
        return bool(await conn.fetchval("SELECT count(*) FROM jobwire.jobs") == expected)

    try:
        ids = await stores[0].enqueue_many([JobSpec("noop") for _ in range(2)])
        for service in services:
            await service.start()
        await wait_for(lambda: any(m.leading for m in services), timeout=10, what="a leader")
        assert sum(m.leading for m in services) == 1  # one leader, by the advisory lock
        await finish_long_ago(ids[0])
        await wait_for(lambda: left(1), timeout=10, what="the old job purged")
        leader = next(m for m in services if m.leading)
        other = services[1 - services.index(leader)]
        await leader.stop()  # its lock's connection closes with it
        await wait_for(lambda: other.leading, timeout=10, what="the other instance leading")
        await finish_long_ago(ids[1])
        await wait_for(lambda: left(0), timeout=10, what="purged by the new leader")
    finally:
        for service in services:
            await service.stop()
        await conn.close()
        for store in stores:
            await store.close()


async def test_a_follower_opens_no_connection_while_another_leads(
    pg_store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store reads pg_locks through its pool first: no new backend per attempt."""
    import jobwire.store.pg_schedules as pg_schedules

    key = "jobwire-test-follower:jobwire"
    held = await pg_store.try_leadership(key)
    assert held is not None
    opened = 0
    real_connect = pg_schedules.asyncpg.connect

    async def counting_connect(*args: Any, **kwargs: Any) -> Any:
        nonlocal opened
        opened += 1
        return await real_connect(*args, **kwargs)

    monkeypatch.setattr(pg_schedules.asyncpg, "connect", counting_connect)
    try:
        for _ in range(10):
            assert await pg_store.try_leadership(key) is None
        assert opened == 0
    finally:
        await held.release()
    # Free again: the next attempt takes it (on a dedicated connection).
    lock = await pg_store.try_leadership(key)
    assert lock is not None and opened == 1
    await lock.release()


async def test_a_follower_logs_a_store_outage_once_not_every_attempt() -> None:
    from structlog.testing import capture_logs

    from jobwire.leadership import Leader
    from jobwire.store.base import LeaderLock, StoreUnavailable

    async def unavailable(_key: str, *, idle_timeout: float | None = None) -> LeaderLock | None:
        raise StoreUnavailable("down")

    async def duty() -> None:
        return None

    leader = Leader("t", unavailable, "k", duty, retry_every=0.02, check_every=0.02)
    with capture_logs() as logs:
        task = asyncio.create_task(leader.run())
        await wait_for(lambda: leader.attempts >= 4, timeout=10, what="four attempts")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert [e["event"] for e in logs] == ["t_store_unavailable"]


async def test_a_schedule_that_cannot_be_computed_leaves_the_others_firing(
    database_url: str,
) -> None:
    # end_at 'infinity' (how PostgreSQL keeps 9999-12-31T23:59:59.999999Z, which earlier
    # versions accepted) reads back with no zone: comparing it raised, the leader's task
    # ended with nothing logged, and no schedule fired again.
    from structlog.testing import capture_logs

    config = Config.model_validate(
        {
            "schedules": [
                {"name": "tick", "every": "1s", "handler": "noop"},
                {"name": "broken", "every": "1s", "handler": "noop"},
            ]
        }
    )
    store = await PostgresStore.connect(database_url, min_size=1, max_size=2)
    conn = await asyncpg.connect(database_url)
    try:
        scheduler = Scheduler(store, config, lambda: None, retry_every=0.1)
        await scheduler.sync()
        await conn.execute("UPDATE jobwire.schedules SET end_at = 'infinity' WHERE name = 'broken'")
        with capture_logs() as logs:
            task = asyncio.create_task(scheduler.run())
            await wait_for(
                lambda: len_at_least(tick_times(database_url), 3), timeout=15, what="3 ticks"
            )
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        broken = [e for e in logs if e["event"] == "schedule_broken"]
        assert [e["schedule"] for e in broken] == ["broken"]  # once, not every second
        assert "TypeError" in broken[0]["error"]
        made = await conn.fetchval(
            "SELECT count(*) FROM jobwire.jobs WHERE source = 'schedule:broken'"
        )
        assert made == 0
    finally:
        await conn.close()
        await store.close()


async def len_at_least(times: Any, n: int) -> bool:
    return len(await times) >= n


async def test_a_leader_whose_duty_raises_logs_it_and_keeps_leading(database_url: str) -> None:
    from structlog.testing import capture_logs

    from jobwire.leadership import Leader

    calls = 0

    async def duty() -> None:
        nonlocal calls
        calls += 1
        if calls <= 3:
            raise RuntimeError(f"boom {calls}")

    store = await PostgresStore.connect(database_url, min_size=1, max_size=2)
    try:
        leader = Leader(
            "t", store.try_leadership, "jw-test-duty", duty, retry_every=0.05, check_every=0.02
        )
        with capture_logs() as logs:
            task = asyncio.create_task(leader.run())
            await wait_for(lambda: calls >= 6, timeout=10, what="the duty called again")
            assert not task.done() and leader.leading
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        failed = [e for e in logs if e["event"] == "t_duty_failed"]
        assert len(failed) == 1  # once for the run of three failures
    finally:
        await store.close()
