"""Schedules at run time on a real PostgreSQL: jobs linked by schedule_id; schedules added,
changed and removed from the CLI, the admin API and the dashboard; kept across restarts and
config changes; max_runs and end_at; refusals, roles, CSRF and audit rows."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from jobwire.config import Config, HttpConfig
from jobwire.schedule_admin import (
    ScheduleRefused,
    Who,
    add_schedule,
    check_schedule,
    cron_problem,
    remove_schedule,
    run_now,
    update_schedule,
)
from jobwire.scheduler import Scheduler
from jobwire.store.postgres import PostgresStore
from tests.support.daemon import jobwire, write_config
from tests.support.dashboard import ADMIN, READER, dashboard_api, sign_in
from tests.support.inprocess import running_daemon
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.timeout(120)]
Client = TestClient[Any, Any]
TESTER = Who("tester", "admin")
ALLOWED = frozenset({"noop", "echo"})


def config_of(*schedules: dict[str, Any], **extra: Any) -> Config:
    return Config.model_validate({"schedules": list(schedules), **extra})


async def fetch(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def jobs_of(url: str, name: str) -> list[asyncpg.Record]:
    """The jobs a schedule made (by source), with their schedule_id."""
    return await fetch(
        url,
        "SELECT id, schedule_id, status, created_at FROM jobwire.jobs WHERE source = $1"
        " ORDER BY id",
        f"schedule:{name}",
    )


async def run_scheduler(store: PostgresStore, config: Config) -> asyncio.Task[None]:
    scheduler = Scheduler(store, config, lambda: None, retry_every=0.1, check_every=0.1)
    await scheduler.sync()
    return asyncio.create_task(scheduler.run())


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


# -- the link from job to schedule --------------------------------------------------------


async def test_every_job_a_schedule_makes_carries_its_schedule_id(
    database_url: str, pg_store: PostgresStore
) -> None:
    config = config_of({"name": "tick", "every": "1s", "handler": "noop", "catch_up": "all"})
    task = await run_scheduler(pg_store, config)
    try:

        async def three() -> bool:
            return len(await jobs_of(database_url, "tick")) >= 3

        await wait_for(three, timeout=20, what="three ticks")
    finally:
        await stop(task)
    row = await pg_store.get_schedule("tick")
    assert row is not None and row.origin == "config"
    job_id = await run_now(pg_store, "tick", TESTER)  # "run now" is linked the same way
    jobs = await jobs_of(database_url, "tick")
    assert job_id in [j["id"] for j in jobs]
    assert {j["schedule_id"] for j in jobs} == {row.id}
    assert len(jobs) == row.run_count + 1  # the ticks counted, and the one run now not
    job = await pg_store.get(job_id)
    assert job is not None and job.schedule_id == row.id
    last = await pg_store.last_schedule_jobs()
    assert last[row.id] == (job_id, "pending")


# -- config sync and run-time schedules ----------------------------------------------------


async def test_config_sync_leaves_run_time_schedules_alone(pg_store: PostgresStore) -> None:
    first = config_of({"name": "cfg", "cron": "0 2 * * *", "handler": "noop"})
    await Scheduler(pg_store, first, lambda: None).sync()
    added = await add_schedule(
        pg_store, {"name": "rt", "every": "5m", "handler": "echo"}, ALLOWED, TESTER
    )
    assert added.origin == "api" and added.enabled and added.next_run_at is not None
    # The config changes: cfg is gone, cfg2 is new; the run-time schedule is not the file's.
    second = config_of({"name": "cfg2", "every": "1h", "handler": "noop"})
    await Scheduler(pg_store, second, lambda: None).sync()
    rows = {r.name: r for r in await pg_store.list_schedules()}
    assert rows["rt"].enabled and rows["rt"].origin == "api"
    assert rows["rt"].next_run_at == added.next_run_at
    assert not rows["cfg"].enabled and rows["cfg2"].enabled
    # A config name is refused at run time, and a config schedule cannot be edited there.
    for action in (
        add_schedule(pg_store, {"name": "cfg2", "every": "1s", "handler": "noop"}, None, TESTER),
        update_schedule(pg_store, "cfg2", {"every": "2h"}, None, TESTER),
        remove_schedule(pg_store, "cfg2", TESTER),
    ):
        with pytest.raises(ScheduleRefused) as refused:
            await action
        assert refused.value.status == 409
        assert "defined in the config file" in refused.value.message
    with pytest.raises(ScheduleRefused) as taken:
        await add_schedule(pg_store, {"name": "rt", "every": "1s", "handler": "noop"}, None, TESTER)
    assert taken.value.status == 409 and "exists already" in taken.value.message
    # The file may later name a run-time schedule: then the file owns it.
    third = config_of({"name": "rt", "every": "5m", "handler": "noop"})
    await Scheduler(pg_store, third, lambda: None).sync()
    rt = await pg_store.get_schedule("rt")
    assert rt is not None and rt.origin == "config" and rt.handler == "noop"


async def test_an_update_keeps_the_next_tick_unless_the_timing_changes(
    pg_store: PostgresStore,
) -> None:
    row = await add_schedule(
        pg_store, {"name": "rt", "cron": "0 3 * * *", "handler": "echo"}, ALLOWED, TESTER
    )
    same = await update_schedule(pg_store, "rt", {"payload": {"a": 1}}, ALLOWED, TESTER)
    assert same.next_run_at == row.next_run_at and same.payload == {"a": 1}
    moved = await update_schedule(pg_store, "rt", {"every": "10s"}, ALLOWED, TESTER)
    assert moved.cron is None and moved.interval_s == 10.0
    assert moved.next_run_at is not None and moved.next_run_at != row.next_run_at
    cleared = await update_schedule(pg_store, "rt", {"max_runs": 5}, ALLOWED, TESTER)
    assert cleared.max_runs == 5
    cleared = await update_schedule(pg_store, "rt", {"max_runs": None}, ALLOWED, TESTER)
    assert cleared.max_runs is None
    with pytest.raises(ScheduleRefused) as bad:
        await update_schedule(pg_store, "rt", {"handler": "rm-rf"}, ALLOWED, TESTER)
    assert bad.value.status == 400 and bad.value.field == "handler"
    removed = await remove_schedule(pg_store, "rt", TESTER)
    assert removed.name == "rt" and await pg_store.get_schedule("rt") is None
    with pytest.raises(ScheduleRefused) as gone:
        await remove_schedule(pg_store, "rt", TESTER)
    assert gone.value.status == 404


def test_a_bad_cron_names_its_field() -> None:
    assert cron_problem("*/5 * * * *") is None
    assert "minute field '61'" in (cron_problem("61 * * * *") or "")
    assert "hour field '25'" in (cron_problem("0 25 * * *") or "")
    assert "day of week field 'funday'" in (cron_problem("0 0 * * funday") or "")
    assert "needs five" in (cron_problem("0 0 *") or "")
    assert "needs five" in (cron_problem("* * * * * *") or "")


@pytest.mark.parametrize(
    ("fields", "field", "ever"),
    [
        ({"cron": "0 0 31 2 *"}, "cron", False),  # no such day: refused even disabled
        ({"cron": "0 0 29 2 *", "start_at": "9998-12-31T00:00:00Z"}, "cron", True),
        ({"every": "1h", "end_at": "2020-01-01T00:00:00Z"}, "end_at", True),
    ],
)
def test_a_schedule_that_would_never_fire_is_refused_with_its_field(
    fields: dict[str, Any], field: str, ever: bool
) -> None:
    # These answered 500 (croniter's error, an overflow) from the API and a traceback
    # from the CLI.
    with pytest.raises(ScheduleRefused) as refused:
        check_schedule({"name": "never", "handler": "noop", **fields}, None)
    assert (refused.value.status, refused.value.field) == (400, field)
    assert "never fire" in refused.value.message
    if ever:  # a rule that has ended may be kept, disabled
        check_schedule({"name": "never", "handler": "noop", "enabled": False, **fields}, None)


# -- max_runs and end_at -------------------------------------------------------------------


async def test_max_runs_and_end_at_stop_a_run_time_schedule(
    database_url: str, pg_store: PostgresStore
) -> None:
    await add_schedule(
        pg_store,
        {"name": "few", "every": 1, "handler": "noop", "max_runs": 2, "catch_up": "all"},
        ALLOWED,
        TESTER,
    )
    end_at = datetime.now(UTC) + timedelta(seconds=2.5)
    await add_schedule(
        pg_store,
        {"name": "ending", "every": "1s", "handler": "noop", "end_at": end_at.isoformat()},
        ALLOWED,
        TESTER,
    )
    task = await run_scheduler(pg_store, config_of())
    try:

        async def both_stopped() -> bool:
            few = await pg_store.get_schedule("few")
            ending = await pg_store.get_schedule("ending")
            assert few is not None and ending is not None
            return not few.enabled and ending.next_run_at is None

        await wait_for(both_stopped, timeout=20, what="max_runs and end_at reached")
        await asyncio.sleep(1.5)  # long enough for a tick that should not come
    finally:
        await stop(task)
    few = await jobs_of(database_url, "few")
    assert len(few) == 2 and all(j["schedule_id"] is not None for j in few)
    ending = await jobs_of(database_url, "ending")
    assert 1 <= len(ending) <= 3
    assert all(j["created_at"] <= end_at + timedelta(seconds=1) for j in ending)


# -- the daemon: API-added schedules fire, survive restarts and config changes ------------


async def test_an_api_schedule_fires_and_survives_restart_and_config_change(
    database_url: str,
) -> None:
    token = "admin-token-for-schedule-tests"

    def config(name: str) -> Config:
        return Config.model_validate(
            {
                "database": {"url": database_url},
                "workers": {"poll_interval": "200ms"},
                "http": {"listen": "127.0.0.1:0", "admin_token": token},
                "schedules": [{"name": name, "every": "1h", "handler": "noop"}],
            }
        )

    headers = {"Authorization": f"Bearer {token}"}

    async def succeeded() -> int:
        rows = await fetch(
            database_url,
            "SELECT count(*) AS n FROM jobwire.jobs j JOIN jobwire.schedules s"
            " ON s.id = j.schedule_id WHERE s.name = 'rt' AND j.status = 'succeeded'",
        )
        return int(rows[0]["n"])

    async with running_daemon(config("cfg-a"), wait_sources=False) as daemon:
        assert daemon.http is not None
        base = f"http://127.0.0.1:{daemon.http.port}/api/v1/schedules"
        body = {"name": "rt", "every": "1s", "handler": "echo", "payload": {"n": 1}}
        async with aiohttp.ClientSession(headers=headers) as session:
            async with session.post(base, json=body) as response:
                assert response.status == 201, await response.text()
                assert (await response.json())["origin"] == "api"

        async def two() -> bool:
            return await succeeded() >= 2

        await wait_for(two, timeout=30, what="the API schedule's jobs")
    before = await succeeded()
    # Restarted with another config file: cfg-a is no longer listed, rt is not the file's.
    async with running_daemon(config("cfg-b"), wait_sources=False):

        async def more() -> bool:
            return await succeeded() >= before + 2

        await wait_for(more, timeout=30, what="rt firing after the restart")
    rows = {
        r["name"]: r
        for r in await fetch(database_url, "SELECT name, enabled, origin FROM jobwire.schedules")
    }
    assert rows["rt"]["enabled"] and rows["rt"]["origin"] == "api"
    assert not rows["cfg-a"]["enabled"] and rows["cfg-b"]["enabled"]


# -- the CLI ------------------------------------------------------------------------------


def test_schedules_cli_add_update_remove_run_and_refusals(
    database_url: str, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path / "jobwire.yaml",
        {
            "database": {"url": database_url},
            "handlers": {},
            "schedules": [{"name": "nightly", "cron": "0 2 * * *", "handler": "echo"}],
            "logging": {"format": "json"},
        },
    )
    c = ("-c", str(config))

    async def sync() -> None:
        store = await PostgresStore.connect(database_url, min_size=1, max_size=1)
        try:
            cfg = Config.model_validate(
                {"schedules": [{"name": "nightly", "cron": "0 2 * * *", "handler": "echo"}]}
            )
            await Scheduler(store, cfg, lambda: None).sync()
        finally:
            await store.close()

    asyncio.run(sync())  # what `jobwire run` does at start-up
    bad = jobwire(
        "schedules", "add", "x", "--cron", "61 * * * *", "--handler", "echo", *c, check=False
    )
    assert bad.returncode == 2 and "minute field '61'" in bad.stderr
    bad = jobwire("schedules", "add", "x", "--every", "5m", "--handler", "nope", *c, check=False)
    assert bad.returncode == 2 and "handler" in bad.stderr
    bad = jobwire(
        "schedules",
        "add",
        "x",
        "--every",
        "5m",
        "--handler",
        "echo",
        "--timezone",
        "Mars/Olympus",
        *c,
        check=False,
    )
    assert bad.returncode == 2 and "timezone" in bad.stderr
    taken = jobwire(
        "schedules", "add", "nightly", "--every", "5m", "--handler", "echo", *c, check=False
    )
    assert taken.returncode == 2 and "defined in the config file" in taken.stderr
    added = jobwire(
        "schedules",
        "add",
        "report",
        "--cron",
        "30 4 * * 1",
        "--handler",
        "echo",
        "--payload",
        '{"kind": "weekly"}',
        "--timezone",
        "Europe/Paris",
        "--max-runs",
        "10",
        "--start",
        "2030-01-01T00:00:00+00:00",
        "-o",
        "json",
        *c,
    )
    row = json.loads(added.stdout)
    assert row["origin"] == "api" and row["timezone"] == "Europe/Paris"
    assert row["max_runs"] == 10 and row["next_run_at"].startswith("2030-01-07")
    updated = jobwire(
        "schedules", "update", "report", "--max-runs", "none", "--queue", "long", "-o", "json", *c
    )
    assert json.loads(updated.stdout)["max_runs"] is None
    shown = json.loads(jobwire("schedules", "show", "report", "-o", "json", *c).stdout)
    assert shown["queue"] == "long" and shown["payload"] == {"kind": "weekly"}
    edit = jobwire("schedules", "update", "nightly", "--every", "1h", *c, check=False)
    assert edit.returncode == 2 and "defined in the config file" in edit.stderr
    listing = jobwire("schedules", "list", *c).stdout
    assert "report" in listing and "api" in listing and "config" in listing
    assert "paused" in jobwire("schedules", "pause", "report", *c).stdout
    assert "resumed" in jobwire("schedules", "resume", "report", *c).stdout
    job_id = jobwire("schedules", "run", "report", *c).stdout.strip()
    job = json.loads(jobwire("jobs", "show", job_id, *c).stdout)
    assert job["schedule"] == "report" and job["schedule_id"] == row["id"]
    assert job["payload"] == {"kind": "weekly"} and job["queue"] == "long"
    assert "removed" in jobwire("schedules", "remove", "report", *c).stdout
    gone = jobwire("schedules", "remove", "report", *c, check=False)
    assert gone.returncode == 1 and "no schedule named 'report'" in gone.stderr
    kept = jobwire("jobs", "show", job_id, *c)  # its job stays
    assert json.loads(kept.stdout)["schedule_id"] == row["id"]
    audit = asyncio.run(fetch(database_url, "SELECT actor, action FROM jobwire.audit ORDER BY id"))
    actions = [r["action"] for r in audit if r["actor"].startswith("cli:")]
    assert actions == [
        "schedule_add",
        "schedule_update",
        "schedule_pause",
        "schedule_resume",
        "schedule_run",
        "schedule_remove",
    ]


# -- the admin API ------------------------------------------------------------------------


API_READER = "read-token-for-the-schedules-api"


@pytest.fixture
async def api(pg_store: PostgresStore) -> AsyncIterator[Client]:
    config = HttpConfig.model_validate(
        {
            "listen": "127.0.0.1:0",
            "admin_token": ADMIN,
            "read_token": API_READER,
            "dashboard": {"enabled": True, "read_token": READER},
        }
    )
    async with TestClient(TestServer(dashboard_api(pg_store, config).app())) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_the_api_adds_changes_runs_and_removes_schedules(
    api: Client, pg_store: PostgresStore
) -> None:
    await Scheduler(
        pg_store, config_of({"name": "cfg", "every": "1h", "handler": "noop"}), lambda: None
    ).sync()
    body = {"name": "rt", "every": "30s", "handler": "noop", "max_runs": 3}
    # Writes need the admin token: none is 401, the read token 403; nothing is written.
    async with api.post("/api/v1/schedules", json=body) as r:
        assert r.status == 401
    async with api.post("/api/v1/schedules", json=body, headers=bearer(API_READER)) as r:
        assert r.status == 403
    for path in ("/api/v1/schedules/cfg/pause", "/api/v1/schedules/cfg/run"):
        async with api.post(path, headers=bearer(API_READER)) as r:
            assert r.status == 403
    assert await pg_store.get_schedule("rt") is None
    admin = bearer(ADMIN)
    async with api.post("/api/v1/schedules", json=body, headers=admin) as r:
        assert r.status == 201, await r.text()
        assert (await r.json())["origin"] == "api"
    async with api.post("/api/v1/schedules", json=body, headers=admin) as r:
        assert r.status == 409
    refused = [
        ({**body, "name": "cfg"}, 409, "name"),
        ({**body, "name": "x", "every": None, "cron": "0 24 * * *"}, 400, "cron"),
        ({**body, "name": "x", "handler": "os.system"}, 400, "handler"),
        ({**body, "name": "x", "timezone": "Nowhere/City"}, 400, "timezone"),
        ({**body, "name": "x", "priority": "high"}, 400, "priority"),
        ({**body, "name": "x", "surprise": 1}, 400, "surprise"),
        ({**body, "name": "bad name"}, 400, "name"),
    ]
    for given, status, field in refused:
        async with api.post("/api/v1/schedules", json=given, headers=admin) as r:
            answer = await r.json()
            assert (r.status, answer.get("field")) == (status, field), answer
    async with api.put("/api/v1/schedules/rt", json={"queue": "long"}, headers=admin) as r:
        assert r.status == 200 and (await r.json())["queue"] == "long"
    async with api.put("/api/v1/schedules/cfg", json={"queue": "long"}, headers=admin) as r:
        assert r.status == 409 and "defined in the config file" in (await r.json())["error"]
    async with api.delete("/api/v1/schedules/cfg", headers=admin) as r:
        assert r.status == 409
    async with api.post("/api/v1/schedules/cfg/pause", headers=admin) as r:
        assert r.status == 200 and (await r.json())["enabled"] is False
    async with api.post("/api/v1/schedules/cfg/resume", headers=admin) as r:
        assert r.status == 200 and (await r.json())["enabled"] is True
    async with api.post("/api/v1/schedules/rt/run", headers=admin) as r:
        assert r.status == 201
        job_id = (await r.json())["id"]
    rt = await pg_store.get_schedule("rt")
    job = await pg_store.get(job_id)
    assert rt is not None and job is not None and job.schedule_id == rt.id
    assert job.queue == "long"
    async with api.get("/api/v1/schedules/rt", headers=admin) as r:
        assert r.status == 200 and (await r.json())["run_count"] == 0  # run now is no tick
    async with api.delete("/api/v1/schedules/rt", headers=admin) as r:
        assert r.status == 200
    async with api.get("/api/v1/schedules/rt", headers=admin) as r:
        assert r.status == 404
    audit = [(a.actor, a.action, a.target) for a in reversed(await pg_store.list_audit())]
    assert audit == [
        ("api", "schedule_add", "schedule rt"),
        ("api", "schedule_update", "schedule rt"),
        ("api", "schedule_pause", "schedule cfg"),
        ("api", "schedule_resume", "schedule cfg"),
        ("api", "schedule_run", "schedule rt"),
        ("api", "schedule_remove", "schedule rt"),
    ]


# -- the dashboard ------------------------------------------------------------------------


async def test_the_dashboard_schedules_page_and_its_actions(
    api: Client, pg_store: PostgresStore
) -> None:
    await Scheduler(
        pg_store, config_of({"name": "cfg", "cron": "*/5 * * * *", "handler": "noop"}), lambda: None
    ).sync()
    await add_schedule(
        pg_store, {"name": "rt", "every": "90s", "handler": "noop", "max_runs": 4}, None, TESTER
    )
    async with api.post("/ui/schedules/rt/pause", data={"csrf": "x"}) as r:
        assert r.status == 403  # no session: refused
    async with TestClient(TestServer(dashboard_api(pg_store).app())) as reader:
        csrf = await sign_in(reader, READER)
        async with reader.get("/ui/schedules") as r:
            page = await r.text()
            assert r.status == 200
        async with reader.post("/ui/schedules/rt/pause", data={"csrf": csrf}) as r:
            assert r.status == 403 and "read-only" in await r.text()
    assert "cfg" in page and "*/5 * * * *" in page and "every 2m" in page
    assert "0 / 4" in page and "Pause" not in page and "Run now" not in page
    rt = await pg_store.get_schedule("rt")
    assert rt is not None and rt.enabled
    csrf = await sign_in(api, ADMIN)
    async with api.get("/ui/schedules") as r:
        page = await r.text()
    assert "Pause" in page and "Run now" in page and 'href="/ui/schedules"' in page
    async with api.post("/ui/schedules/rt/pause", data={"csrf": "wrong"}) as r:
        assert r.status == 403 and "CSRF" in await r.text()
    post: dict[str, Any] = {"data": {"csrf": csrf}, "allow_redirects": False}
    async with api.post("/ui/schedules/rt/pause", **post) as r:
        assert r.status == 303 and r.headers["Location"] == "/ui/schedules"
    rt = await pg_store.get_schedule("rt")
    assert rt is not None and not rt.enabled
    async with api.post("/ui/schedules/rt/resume", **post) as r:
        assert r.status == 303
    async with api.post("/ui/schedules/rt/run", **post) as r:
        assert r.status == 303
        location = r.headers["Location"]
    job = await pg_store.get(int(location.rsplit("/", 1)[1]))
    assert job is not None and job.schedule_id == rt.id
    async with api.get(location) as r:
        assert "schedule" in (text := await r.text()) and f"rt (id {rt.id})" in text
    async with api.get("/ui/schedules") as r:
        page = await r.text()
    assert f'href="/ui/jobs/{job.id}"' in page  # the last job, linked, with its status
    async with api.post("/ui/schedules/nope/run", **post) as r:
        assert r.status == 404
    actions = [(a.action, a.target) for a in reversed(await pg_store.list_audit())]
    assert [a for a in actions if a[0].startswith("schedule_") and a[1] == "schedule rt"] == [
        ("schedule_add", "schedule rt"),
        ("schedule_pause", "schedule rt"),
        ("schedule_resume", "schedule rt"),
        ("schedule_run", "schedule rt"),
    ]


# -- the memory store does the same -------------------------------------------------------


async def test_the_memory_store_keeps_run_time_schedules_as_postgres_does() -> None:
    from jobwire.store.memory import MemoryStore

    store = MemoryStore()
    await Scheduler(
        store, config_of({"name": "cfg", "every": "1h", "handler": "noop"}), lambda: None
    ).sync()
    row = await add_schedule(store, {"name": "rt", "every": "1h", "handler": "noop"}, None, TESTER)
    assert row.origin == "api"
    await Scheduler(
        store, config_of({"name": "other", "every": "1h", "handler": "noop"}), lambda: None
    ).sync()
    rows = {r.name: r for r in await store.list_schedules()}
    assert rows["rt"].enabled and not rows["cfg"].enabled
    with pytest.raises(ScheduleRefused) as refused:
        await remove_schedule(store, "other", TESTER)
    assert refused.value.status == 409
    same = await update_schedule(store, "rt", {"queue": "long"}, None, TESTER)
    assert same.queue == "long" and same.next_run_at == row.next_run_at
    job_id = await run_now(store, "rt", TESTER)
    job = await store.get(job_id)
    assert job is not None and job.schedule_id == row.id and job.queue == "long"
    assert (await store.last_schedule_jobs())[row.id] == (job_id, "pending")
    await remove_schedule(store, "rt", TESTER)
    assert await store.get_schedule("rt") is None
    assert [a.action for a in reversed(await store.list_audit())] == [
        "schedule_add",
        "schedule_update",
        "schedule_run",
        "schedule_remove",
    ]
