"""The HTTP server of a running daemon: health, readiness, metrics, the admin API, sd_notify."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from jobwire.app import Daemon
from jobwire.config import Config
from tests.support.daemon import Daemon as DaemonProcess
from tests.support.daemon import write_config
from tests.support.inprocess import running_daemon
from tests.support.processes import free_port
from tests.support.proxy import TcpProxy
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(120)
TOKEN = "s3cret-token-for-tests-0123"


def http_config(database_url: str, **extra: Any) -> Config:
    return Config.model_validate(
        {
            "database": {"url": database_url},
            "workers": {"poll_interval": "200ms"},
            "http": {"listen": "127.0.0.1:0", "admin_token": TOKEN},
            **extra,
        }
    )


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def base(daemon: Daemon) -> str:
    assert daemon.http is not None and daemon.http.port
    return f"http://127.0.0.1:{daemon.http.port}"


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url) as response:
        if response.content_type == "application/json":
            return response.status, await response.json()
        return response.status, await response.text()


async def post(
    session: aiohttp.ClientSession, url: str, body: Any = None, token: str | None = TOKEN
) -> tuple[int, Any]:
    headers = auth(token) if token is not None else {}
    async with session.post(url, json=body, headers=headers) as response:
        return response.status, await response.json()


async def test_health_ready_and_the_admin_api_round_trip(
    database_url: str, session: aiohttp.ClientSession
) -> None:
    async with running_daemon(http_config(database_url)) as daemon:
        url = base(daemon)
        assert await get(session, f"{url}/healthz") == (200, {"status": "ok"})
        status, ready = await get(session, f"{url}/readyz")
        assert (status, ready["ready"], ready["store"]) == (200, True, "up")

        # Mutations: refused without a token or with a wrong one; errors are JSON.
        assert (await post(session, f"{url}/api/v1/jobs", {"handler": "echo"}, None))[0] == 401
        status, body = await post(session, f"{url}/api/v1/jobs", {"handler": "echo"}, "x" * 27)
        assert (status, body) == (401, {"error": "missing or wrong bearer token"})
        status, body = await post(session, f"{url}/api/v1/jobs", {"nope": 1})
        assert status == 400 and "handler" in body["error"]
        status, body = await post(session, f"{url}/api/v1/jobs", {"handler": "x", "dedup_key": 5})
        assert (status, body) == (400, {"error": "dedup_key must be a string"})
        status, body = await post(
            session, f"{url}/api/v1/jobs", {"handler": "echo", "payload": {"bad": "nul \u0000"}}
        )
        assert status == 400 and body["error"].startswith("the database refused the job")

        ids = []
        for i in range(5):
            status, body = await post(
                session, f"{url}/api/v1/jobs", {"handler": "echo", "payload": {"i": i}}
            )
            assert status == 201
            ids.append(body["id"])
        status, body = await post(
            session, f"{url}/api/v1/jobs", {"handler": "fail", "max_attempts": 1}
        )
        failing = body["id"]

        async def finished() -> bool:
            _, page = await get(session, f"{url}/api/v1/jobs?status=succeeded")
            return len(page["jobs"]) == 5

        await wait_for(finished, what="five echo jobs succeeded")
        status, job = await get(session, f"{url}/api/v1/jobs/{ids[0]}")
        assert (status, job["status"], job["result"], len(job["runs"])) == (
            200,
            "succeeded",
            {"i": 0},
            1,
        )
        assert (await get(session, f"{url}/api/v1/jobs/999999"))[0] == 404
        assert (await get(session, f"{url}/api/v1/jobs/abc"))[0] == 400

        # Keyset paging: two pages of 3 and 3, newest first, no overlap.
        _, first = await get(session, f"{url}/api/v1/jobs?limit=3")
        _, second = await get(
            session, f"{url}/api/v1/jobs?limit=3&before_id={first['next_before_id']}"
        )
        listed = [j["id"] for j in first["jobs"] + second["jobs"]]
        assert listed == sorted([*ids, failing], reverse=True)

        await wait_for(
            lambda: _status(session, url, failing, "failed"), what="the failing job failed"
        )
        assert (await post(session, f"{url}/api/v1/jobs/{ids[0]}/retry"))[0] == 409
        status, body = await post(session, f"{url}/api/v1/jobs/{failing}/retry")
        assert (status, body["status"]) == (200, "pending")
        status, body = await post(
            session, f"{url}/api/v1/jobs", {"handler": "sleep", "payload": {"seconds": 60}}
        )
        sleeper = body["id"]
        await wait_for(lambda: _status(session, url, sleeper, "running"), what="sleeper runs")
        status, body = await post(session, f"{url}/api/v1/jobs/{sleeper}/cancel")
        assert status == 200
        await wait_for(lambda: _status(session, url, sleeper, "cancelled"), what="cancelled")

        assert (await get(session, f"{url}/api/v1/schedules"))[0] == 200
        assert await get(session, f"{url}/api/v1/sources") == (200, {"sources": {}})


async def _status(session: aiohttp.ClientSession, url: str, job_id: int, status: str) -> bool:
    _, job = await get(session, f"{url}/api/v1/jobs/{job_id}")
    return bool(job["status"] == status)


async def test_mutations_are_refused_when_no_token_is_configured(
    database_url: str, session: aiohttp.ClientSession
) -> None:
    config = Config.model_validate(
        {"database": {"url": database_url}, "http": {"listen": "127.0.0.1:0"}}
    )
    async with running_daemon(config) as daemon:
        status, body = await post(session, f"{base(daemon)}/api/v1/jobs", {"handler": "echo"})
        assert status == 403 and "admin_token" in body["error"]
        assert (await get(session, f"{base(daemon)}/api/v1/jobs"))[0] == 200  # reads are open


async def test_metrics_are_present_and_move(
    database_url: str, session: aiohttp.ClientSession
) -> None:
    async with running_daemon(http_config(database_url)) as daemon:
        url = base(daemon)
        _, before = await get(session, f"{url}/metrics")
        for name in (
            "jobwire_store_up 1.0",
            "jobwire_ready_backlog",
            "jobwire_attempts_total",
            "jobwire_running_jobs",
            "jobwire_db_pool_connections",
            "jobwire_db_pool_in_use",
        ):
            assert name in before, name
        for _ in range(3):
            await post(session, f"{url}/api/v1/jobs", {"handler": "noop"})
        await wait_for(
            lambda: _metric(session, url, 'jobwire_attempts_total{outcome="succeeded"}', 3.0),
            what="three attempts counted",
        )
        # A job in a queue no instance serves waits, and is shown waiting. The database
        # figures are refreshed at most once a second: wait for them to move.
        await post(session, f"{url}/api/v1/jobs", {"handler": "noop", "queue": "elsewhere"})
        await wait_for(
            lambda: _metric(session, url, 'jobwire_jobs{queue="elsewhere",status="pending"}', 1.0),
            timeout=10,
            what="the waiting job counted",
        )
        _, after = await get(session, f"{url}/metrics")
        # Live jobs only, a series per status for the served queue even when empty.
        assert 'jobwire_jobs{queue="default",status="pending"} 0.0' in after
        assert 'jobwire_jobs{queue="default",status="running"} 0.0' in after
        job_lines = [ln for ln in after.splitlines() if ln.startswith("jobwire_jobs{")]
        assert job_lines and not [ln for ln in job_lines if 'status="succeeded"' in ln]
        assert 'jobwire_handler_duration_seconds_count{handler="noop",outcome="succeeded"} 3.0' in (
            after
        )


async def _metric(session: aiohttp.ClientSession, url: str, line: str, value: float) -> bool:
    _, text = await get(session, f"{url}/metrics")
    return f"{line} {value}" in text


async def test_readyz_is_503_when_the_store_is_down_or_a_required_source_is(
    database_url: str, session: aiohttp.ClientSession
) -> None:
    proxy = await TcpProxy("127.0.0.1", 5432).start()
    proxied = database_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    dead_port = free_port()  # nothing listens here: the source stays down
    config = Config.model_validate(
        {
            "database": {"url": proxied, "command_timeout": "2s"},
            "http": {"listen": "127.0.0.1:0"},
            "sources": [
                {
                    "name": "orders",
                    "type": "amqp",
                    "url": f"amqp://guest:guest@127.0.0.1:{dead_port}/",
                    "queue": "q",
                    "required": True,
                    "route": {"handler": "noop"},
                }
            ],
        }
    )
    try:
        async with running_daemon(config, wait_sources=False) as daemon:
            url = base(daemon)
            status, ready = await get(session, f"{url}/readyz")
            assert status == 503
            assert ready["sources"]["orders"]["required"] is True
            assert any(p.startswith("source orders:") for p in ready["problems"])
            _, metrics = await get(session, f"{url}/metrics")
            assert (
                'jobwire_intake_messages_total{outcome="received",source="orders"} 0.0' in metrics
            )
            assert 'jobwire_source_state{source="orders",state="up"} 0.0' in metrics
            proxy.cut()
            try:
                status, ready = await get(session, f"{url}/readyz")
                assert (status, ready["store"]) == (503, "down")
                assert (await get(session, f"{url}/healthz"))[0] == 200  # alive all the same
            finally:
                proxy.restore()
            await wait_for(
                lambda: _store_up(session, url), timeout=30, what="readyz sees the store again"
            )
    finally:
        await proxy.close()


async def _store_up(session: aiohttp.ClientSession, url: str) -> bool:
    _, ready = await get(session, f"{url}/readyz")
    return bool(ready["store"] == "up")


def test_a_taken_port_is_a_clear_startup_error(database_url: str, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(
            tmp_path / "jobwire.yaml",
            {"database": {"url": database_url}, "http": {"listen": f"127.0.0.1:{port}"}},
        )
        daemon = DaemonProcess(config, tmp_path / "daemon.log")
        try:
            assert daemon.wait(60) != 0
        finally:
            daemon.stop_quietly()
    assert f"http.listen 127.0.0.1:{port}" in daemon.log()


def test_sd_notify_ready_watchdog_and_stopping(database_url: str, tmp_path: Path) -> None:
    """A fake NOTIFY_SOCKET: what systemd would receive from a Type=notify service."""
    address = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(address)
    listener.settimeout(0.2)
    config = write_config(tmp_path / "jobwire.yaml", {"database": {"url": database_url}})
    daemon = DaemonProcess(
        config,
        tmp_path / "daemon.log",
        env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "400000"},
    )
    received: list[str] = []

    def collect_until(wanted: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not any(wanted in m for m in received):
            if time.monotonic() > deadline:
                raise AssertionError(f"no {wanted!r} in {received}")
            try:
                received.append(listener.recv(4096).decode())
            except TimeoutError:
                continue

    try:
        collect_until("READY=1")
        collect_until("WATCHDOG=1")
        assert daemon.terminate() == 0
        collect_until("STOPPING=1")
    finally:
        daemon.stop_quietly()
        listener.close()
    ready_at = next(i for i, m in enumerate(received) if "READY=1" in m)
    stopping_at = next(i for i, m in enumerate(received) if "STOPPING=1" in m)
    assert ready_at < stopping_at
