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

import pytest

from tests.support.daemon import Daemon, write_config
from tests.support.rows import fetch
from tests.support.waiting import wait_sync

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


def test_a_frozen_leader_is_replaced_and_fires_no_tick_twice_when_thawed(
    database_url: str, tmp_path: Path, started: list[Daemon]
) -> None:
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
    leader = next(d for d in started if d.has_event("scheduler_leading"))
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
