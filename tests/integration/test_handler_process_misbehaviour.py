"""Handlers that break the daemon's process, not only their attempt: a drill found each of
these left a daemon that would not stop (SIGTERM ignored, or an exit held by a thread)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.support.daemon import Daemon, jobwire, write_config
from tests.support.rows import job_count
from tests.support.waiting import wait_sync

pytestmark = pytest.mark.timeout(120)
HANDLERS = "tests.integration.misbehaving_handlers"


def _daemon(tmp_path: Path, database_url: str, handler: str) -> tuple[Daemon, Path]:
    config = write_config(
        tmp_path / "jobwire.yaml",
        {
            "database": {"url": database_url},
            "logging": {"format": "json"},
            "workers": {"shutdown_timeout": "2s"},
            "handlers": {handler: f"{HANDLERS}:{handler}"},
        },
    )
    daemon = Daemon(config, tmp_path / "daemon.log")
    daemon.wait_ready()
    jobwire("enqueue", handler, "-c", str(config))
    return daemon, config


def test_stop_signal_handlers_a_handler_replaced_are_put_back(
    tmp_path: Path, database_url: str
) -> None:
    daemon, _ = _daemon(tmp_path, database_url, "ignores_sigterm")
    try:
        daemon.wait_event("signal_handler_replaced", timeout=15, signal="SIGTERM")
        daemon.wait_event("signal_handler_replaced", timeout=15, signal="SIGINT")
        # SIGTERM drains and stops again, as before the handler ran.
        assert daemon.terminate(timeout=20) == 0
        assert daemon.has_event("daemon_stopped")
    finally:
        daemon.stop_quietly()
    (replaced, *_) = [e for e in daemon.events() if e["event"] == "signal_handler_replaced"]
    assert replaced["handlers"] == ["ignores_sigterm"]


def test_a_thread_a_handler_left_does_not_hold_the_exit(tmp_path: Path, database_url: str) -> None:
    daemon, _ = _daemon(tmp_path, database_url, "leaves_a_thread")
    try:
        wait_sync(
            lambda: asyncio.run(job_count(database_url, "status = 'succeeded'")) == 1,
            timeout=15,
            what="the job run",
        )
        assert daemon.terminate(timeout=20) == 0
    finally:
        daemon.stop_quietly()
    (left,) = [e for e in daemon.events() if e["event"] == "threads_left_running"]
    assert left["threads"] == ["never-ends"]


def test_a_handler_stopping_the_loop_ends_the_daemon_with_a_reason(
    tmp_path: Path, database_url: str
) -> None:
    daemon, _ = _daemon(tmp_path, database_url, "stops_the_loop")
    try:
        assert daemon.wait(timeout=20) == 1  # for the supervisor to start it again
    finally:
        daemon.stop_quietly()
    (stopped,) = [e for e in daemon.events() if e["event"] == "event_loop_stopped"]
    assert stopped["handlers"] == ["stops_the_loop"]
