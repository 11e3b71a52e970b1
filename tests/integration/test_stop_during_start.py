"""A stop requested while ``jobwire run`` is still starting ends the start at once: exit 0,
no READY=1, nothing left running, whether it waits for the database or for another
instance's migration lock, with one process or a supervisor's several."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.support.daemon import Daemon, write_config
from tests.support.notify import NotifyListener
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(120)

# A requested stop during start-up must not wait for the start; this is generous for a
# loaded machine and far below the drill's 24 s retries and endless lock wait.
PROMPT = 10.0


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _config(tmp_path: Path, database_url: str, **workers: Any) -> Path:
    data: dict[str, Any] = {"database": {"url": database_url}, "logging": {"format": "json"}}
    if workers:
        data["workers"] = workers
    return write_config(tmp_path / "jobwire.yaml", data)


@pytest.fixture
async def migration_lock(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """Another instance migrating: the schema's migration lock held on a connection."""
    conn = await asyncpg.connect(database_url)
    await conn.execute("SELECT pg_advisory_lock(hashtext('jobwire-migrate:jobwire'))")
    yield conn
    await conn.close()


async def _stops_promptly(daemon: Daemon) -> int:
    """SIGTERM; the exit code, which must come within PROMPT seconds."""
    started = time.monotonic()
    daemon.proc.terminate()
    await wait_for(lambda: daemon.proc.poll() is not None, timeout=PROMPT, what="the exit")
    assert time.monotonic() - started < PROMPT
    return daemon.wait()


async def test_a_stop_while_waiting_for_the_database_exits_0(tmp_path: Path) -> None:
    """The database refuses connections: SIGTERM ends the retries, exit 0, never ready."""
    url = f"postgresql://postgres@127.0.0.1:{_closed_port()}/jobwire"
    daemon = Daemon(_config(tmp_path, url), tmp_path / "daemon.log")
    try:
        await wait_for(lambda: daemon.has_event("database_waiting"), what="database_waiting")
        assert await _stops_promptly(daemon) == 0, daemon.log()
    finally:
        daemon.stop_quietly()
    events = [e.get("event") for e in daemon.events()]
    assert "stop_requested" in events and "daemon_start_abandoned" in events, events
    assert "daemon_ready" not in events


@pytest.mark.parametrize("processes", [1, 2])
async def test_a_stop_while_another_instance_migrates_exits_0(
    database_url: str, migration_lock: asyncpg.Connection, tmp_path: Path, processes: int
) -> None:
    """The migration lock is held elsewhere: SIGTERM ends the wait for it, exit 0, no
    READY=1 and no start timeout pushed ahead after the stop; the holder keeps its lock."""
    with NotifyListener(tmp_path / "notify.sock") as systemd:
        daemon = Daemon(
            _config(tmp_path, database_url, processes=processes),
            tmp_path / "daemon.log",
            env={"NOTIFY_SOCKET": systemd.address},
        )
        try:
            systemd.until("EXTEND_TIMEOUT_USEC=")
            assert await _stops_promptly(daemon) == 0, daemon.log()
        finally:
            daemon.stop_quietly()
        received = list(systemd.received)
    assert not any("READY=1" in m for m in received), received
    if processes > 1:
        stopping = next(i for i, m in enumerate(received) if "STOPPING=1" in m)
        assert not any("EXTEND_TIMEOUT_USEC" in m for m in received[stopping:]), received
    assert not any(e.get("event") == "daemon_ready" for e in daemon.events())
    # Still ours: the stopped daemon neither took nor released the other's lock.
    locks = await migration_lock.fetchval(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND pid = pg_backend_pid()"
    )
    assert locks == 1
    waiting = await migration_lock.fetchval(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
    )
    assert waiting == 0  # no session of the stopped daemon still waits for it
