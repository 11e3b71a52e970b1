"""``jobwire run`` with its log on a pipe whose reader stops reading or goes away (a stuck
log shipper, journald restarted): jobs still run, /healthz answers, SIGTERM stops it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from tests.support.daemon import REPO, jobwire, write_config
from tests.support.processes import free_port
from tests.support.waiting import wait_sync

pytestmark = pytest.mark.timeout(120)


def job_statuses(database_url: str) -> list[str]:
    """Every job's status, by id."""

    async def read() -> list[str]:
        conn = await asyncpg.connect(database_url)
        try:
            rows = await conn.fetch("SELECT status FROM jobwire.jobs ORDER BY id")
            return [r["status"] for r in rows]
        finally:
            await conn.close()

    return asyncio.run(read())


def healthz(port: int) -> int:
    """The status of GET /healthz (a timeout raises)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=3) as resp:
        return int(resp.status)


@pytest.fixture
def daemon_on_pipe(
    tmp_path: Path, database_url: str
) -> Iterator[tuple[subprocess.Popen[bytes], int, int, Path]]:
    """A daemon whose stdout and stderr are the write end of a pipe; yields it, the read
    end (already past daemon_ready), its HTTP port and its config."""
    port = free_port()
    config = write_config(
        tmp_path / "jobwire.yaml",
        {
            "database": {"url": database_url},
            "logging": {"format": "json"},
            "http": {"listen": f"127.0.0.1:{port}"},
        },
    )
    r, w = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobwire", "run", "-c", str(config)],
        cwd=REPO,
        stdout=w,
        stderr=w,
        stdin=subprocess.DEVNULL,
    )
    os.close(w)
    os.set_blocking(r, False)
    seen = bytearray()

    def ready() -> bool:
        assert proc.poll() is None, seen.decode(errors="replace")
        try:
            seen.extend(os.read(r, 1 << 16))
        except BlockingIOError:
            pass
        return b'"daemon_ready"' in seen

    try:
        wait_sync(ready, timeout=60, what="daemon_ready")
        yield proc, r, port, config
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        try:
            os.close(r)
        except OSError:
            pass


def test_a_gone_log_reader_stops_neither_jobs_nor_sigterm(
    daemon_on_pipe: tuple[subprocess.Popen[bytes], int, int, Path], database_url: str
) -> None:
    proc, r, port, config = daemon_on_pipe
    os.close(r)  # every log write now fails with EPIPE
    for _ in range(3):
        jobwire("enqueue", "fail", "--max-attempts", "1", "-c", str(config))  # logs job_failed
    jobwire("enqueue", "echo", "-c", str(config))
    wait_sync(
        lambda: job_statuses(database_url) == ["failed"] * 3 + ["succeeded"],
        what="the jobs run",
    )
    assert healthz(port) == 200
    proc.send_signal(signal.SIGTERM)  # logs stop_requested first
    assert proc.wait(30) == 0


def test_a_stuck_log_reader_blocks_no_job_nor_healthz(
    daemon_on_pipe: tuple[subprocess.Popen[bytes], int, int, Path], database_url: str
) -> None:
    proc, _, port, config = daemon_on_pipe
    # Fill the pipe's buffer and read no more: the daemon's next log line finds no room.
    w = os.open(f"/proc/{proc.pid}/fd/2", os.O_WRONLY | os.O_NONBLOCK)
    try:
        while True:
            os.write(w, b"\n" * 65536)
    except BlockingIOError:
        pass
    finally:
        os.close(w)
    for _ in range(3):
        jobwire("enqueue", "fail", "--max-attempts", "1", "-c", str(config))
    wait_sync(lambda: job_statuses(database_url) == ["failed"] * 3, what="the jobs run")
    assert healthz(port) == 200
    jobwire("enqueue", "echo", "-c", str(config))
    wait_sync(lambda: job_statuses(database_url)[-1] == "succeeded", what="a job after them")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0  # the lines still queued wait briefly at exit, not forever
