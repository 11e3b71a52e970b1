"""Drill: a daemon frozen (SIGSTOP) past its lease while a second instance takes the job
back and runs it. Thawed, the first must stop its copy at once and write nothing: the job
succeeds exactly once, by the second instance.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import Daemon, jobwire, write_config
from tests.support.rows import fetch
from tests.support.waiting import wait_sync

pytestmark = [pytest.mark.drill, pytest.mark.timeout(120)]

LEASE = 3.0
INTERVAL = min(LEASE / 3, 10.0)  # the pool's renewal interval
JOB_SECONDS = 12.0  # far longer than the lease and the freeze: both copies would overlap


class Frozen:
    """Daemons this test may have stopped with SIGSTOP; every one is thawed, then ended."""

    def __init__(self) -> None:
        self.daemons: list[Daemon] = []

    def start(self, config: Path, log_path: Path) -> Daemon:
        daemon = Daemon(config, log_path)
        self.daemons.append(daemon)
        return daemon

    def close(self) -> None:
        for daemon in self.daemons:
            if daemon.proc.poll() is None:
                # A stopped process ignores SIGTERM until continued; SIGKILL needs no thaw,
                # but a thawed one leaves no doubt either way.
                os.kill(daemon.proc.pid, signal.SIGCONT)
            daemon.stop_quietly()


@pytest.fixture
def daemons() -> Iterator[Frozen]:
    frozen = Frozen()
    try:
        yield frozen
    finally:
        frozen.close()


def job_row(url: str, job_id: int) -> dict[str, Any]:
    rows = asyncio.run(
        fetch(url, "SELECT status, worker_id, attempts FROM jobwire.jobs WHERE id = $1", job_id)
    )
    return dict(rows[0])


def runs(url: str, job_id: int) -> list[tuple[int, str, str]]:
    rows = asyncio.run(
        fetch(
            url,
            "SELECT attempt, status, worker_id FROM jobwire.job_runs WHERE job_id = $1 "
            "ORDER BY attempt, id",
            job_id,
        )
    )
    return [(r["attempt"], r["status"], r["worker_id"]) for r in rows]


def worker_of(daemon: Daemon) -> str:
    daemon.wait_ready()
    (ready,) = [e for e in daemon.events() if e.get("event") == "daemon_ready"]
    return str(ready["worker"])


def test_a_daemon_thawed_after_its_lease_was_taken_back_stops_its_copy(
    database_url: str, tmp_path: Path, daemons: Frozen
) -> None:
    config = write_config(
        tmp_path / "jobwire.yaml",
        {
            "database": {"url": database_url},
            "logging": {"format": "json"},
            "workers": {"lease": f"{LEASE}s", "poll_interval": "200ms"},
        },
    )
    first = daemons.start(config, tmp_path / "first.log")
    first_id = worker_of(first)
    out = jobwire(
        "enqueue", "sleep", "--payload", f'{{"seconds": {JOB_SECONDS}}}', "-c", str(config)
    )
    job_id = int(out.stdout.strip().split()[-1])
    wait_sync(
        lambda: job_row(database_url, job_id)["worker_id"] == first_id,
        timeout=20,
        what="the job running in the first daemon",
    )

    os.kill(first.proc.pid, signal.SIGSTOP)
    second = daemons.start(config, tmp_path / "second.log")
    second_id = worker_of(second)

    def taken_over() -> bool:
        row = job_row(database_url, job_id)
        return row["status"] == "running" and row["worker_id"] == second_id

    # The second's lease loop recovers the expired lease; its claim loop then runs the job.
    wait_sync(taken_over, timeout=LEASE + 20, what="the job recovered and run by the second")
    assert runs(database_url, job_id) == [(1, "lost", first_id)]

    os.kill(first.proc.pid, signal.SIGCONT)
    thawed = time.monotonic()
    first.wait_event("job_lease_lost", timeout=INTERVAL + 3, job_id=job_id)
    stopped_after = time.monotonic() - thawed
    (lost,) = [e for e in first.events() if e.get("event") == "job_lease_lost"]
    assert lost["handler"] == "sleep" and lost["reason"] in ("not_renewed_in_time", "not_held")

    wait_sync(
        lambda: job_row(database_url, job_id)["status"] == "succeeded",
        timeout=JOB_SECONDS + 20,
        what="the job finished by the second daemon",
    )
    assert first.terminate() == 0
    assert second.terminate() == 0
    row = job_row(database_url, job_id)
    assert (row["status"], row["attempts"], row["worker_id"]) == ("succeeded", 2, None)
    # Exactly one completion, the second's; the first wrote nothing after its lost attempt.
    assert runs(database_url, job_id) == [(1, "lost", first_id), (2, "succeeded", second_id)]
    (first_stopped,) = [e for e in first.events() if e.get("event") == "pool_stopped"]
    assert first_stopped["succeeded"] == 0
    print(f"lease-loss: the thawed daemon stopped its copy {stopped_after:.2f}s after SIGCONT")
