"""Drill: the scheduler's leader frozen (SIGSTOP), not dead. Another daemon must take over
and fire the ticks meanwhile; thawed, the first must fire none of them again."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import asyncpg
import pytest

from tests.support.daemon import Daemon, write_config
from tests.support.rows import fetch
from tests.support.waiting import wait_for, wait_sync

pytestmark = [pytest.mark.drill, pytest.mark.timeout(150)]


@pytest.fixture
def started() -> Iterator[list[Daemon]]:
    daemons: list[Daemon] = []
    try:
        yield daemons
    finally:
        for daemon in daemons:
            if daemon.proc.poll() is None:
                os.kill(daemon.proc.pid, signal.SIGCONT)  # a stopped process ignores SIGTERM
            daemon.stop_quietly()


def tick_keys(url: str) -> list[str]:
    rows = asyncio.run(
        fetch(url, "SELECT dedup_key FROM jobwire.jobs WHERE source = 'schedule:tick'")
    )
    return [r["dedup_key"] for r in rows]


def two_daemons_and_their_leader(
    database_url: str, tmp_path: Path, started: list[Daemon]
) -> Daemon:
    """Two daemons on one database with an every-1s schedule; the one that leads."""
    config = write_config(
        tmp_path / "jobwire.yaml",
        {
            "database": {"url": database_url},
            "logging": {"format": "json"},
            "schedules": [{"name": "tick", "every": "1s", "handler": "noop", "catch_up": "all"}],
        },
    )
    for i in range(2):
        started.append(Daemon(config, tmp_path / f"d{i}.log"))
    for daemon in started:
        daemon.wait_ready()
    wait_sync(
        lambda: any(d.has_event("scheduler_leading") for d in started), timeout=30, what="a leader"
    )
    return next(d for d in started if d.has_event("scheduler_leading"))


def test_a_frozen_leader_is_replaced_and_fires_no_tick_twice_when_thawed(
    database_url: str, tmp_path: Path, started: list[Daemon]
) -> None:
    leader = two_daemons_and_their_leader(database_url, tmp_path, started)
    follower = next(d for d in started if d is not leader)

    os.kill(leader.proc.pid, signal.SIGSTOP)
    # The frozen leader's connection, and so its lock, used to outlive any wait: the lock
    # now goes after leadership.LOCK_IDLE_TIMEOUT (10 s) without a ping.
    follower.wait_event("scheduler_leading", timeout=40)
    during = len(tick_keys(database_url))
    wait_sync(
        lambda: len(tick_keys(database_url)) >= during + 3,
        timeout=30,
        what="the new leader's ticks",
    )

    os.kill(leader.proc.pid, signal.SIGCONT)
    leader.wait_event("scheduler_lock_lost", timeout=30)
    after = len(tick_keys(database_url))
    wait_sync(
        lambda: len(tick_keys(database_url)) >= after + 3, timeout=30, what="ticks after the thaw"
    )

    keys = tick_keys(database_url)
    assert len(keys) == len(set(keys))  # the unique index; but never silently dropped either
    times = sorted(datetime.fromisoformat(k.removeprefix("schedule:tick:")) for k in keys)
    gaps = [(a, b) for a, b in itertools.pairwise(times) if (b - a).total_seconds() != 1.0]
    assert gaps == [], f"ticks missing or doubled between {gaps}"


def backends(url: str, where: str) -> int:
    rows = asyncio.run(
        fetch(
            url,
            "SELECT count(*) AS n FROM pg_stat_activity"
            f" WHERE datname = current_database() AND {where}",
        )
    )
    return int(rows[0]["n"])


def test_a_leader_frozen_inside_a_fire_does_not_stall_the_new_leader(
    database_url: str, tmp_path: Path, started: list[Daemon]
) -> None:
    leader = two_daemons_and_their_leader(database_url, tmp_path, started)
    follower = next(d for d in started if d is not leader)

    async def freeze_inside_a_fire() -> None:
        # Hold the schedule's row, so that the leader's fire waits inside its transaction
        # (its tick's job inserted, the row not yet moved on); freeze it there; let go.
        conn = await asyncpg.connect(database_url)
        try:
            async with conn.transaction():
                await conn.execute("SELECT 1 FROM jobwire.schedules WHERE name = 'tick' FOR UPDATE")
                waiting = (
                    "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND query LIKE '%UPDATE schedules SET last_run_at%'"
                )
                # Asked on a connection of its own: pg_stat_activity stays as it was for the
                # rest of the transaction that first reads it.
                await wait_for(
                    lambda: fetch(database_url, waiting),
                    timeout=20,
                    what="the leader's fire waiting",
                )
                os.kill(leader.proc.pid, signal.SIGSTOP)
        finally:
            await conn.close()

    asyncio.run(freeze_inside_a_fire())
    wait_sync(
        lambda: backends(database_url, "state = 'idle in transaction'") == 1,
        timeout=10,
        what="the frozen leader's open transaction",
    )
    follower.wait_event("scheduler_leading", timeout=40)
    during = len(tick_keys(database_url))
    # Before the fix the new leader waited on the frozen transaction's dedup key until the
    # thaw: not one tick fired.
    wait_sync(
        lambda: len(tick_keys(database_url)) >= during + 3,
        timeout=40,
        what="the new leader's ticks",
    )
    os.kill(leader.proc.pid, signal.SIGCONT)
    leader.wait_event("scheduler_lock_lost", timeout=30)
    after = len(tick_keys(database_url))
    wait_sync(
        lambda: len(tick_keys(database_url)) >= after + 2, timeout=30, what="ticks after the thaw"
    )
    keys = tick_keys(database_url)
    times = sorted(datetime.fromisoformat(k.removeprefix("schedule:tick:")) for k in keys)
    gaps = [(a, b) for a, b in itertools.pairwise(times) if (b - a).total_seconds() != 1.0]
    assert gaps == [], f"ticks missing or doubled between {gaps}"
    assert not any(e.get("level") == "error" for e in leader.events()), leader.log()
