"""workers.processes: a child started again runs the config the service started with, not
the file as it is now; an edit takes effect on a restart of the service."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import Daemon, write_config
from tests.support.waiting import wait_sync

pytestmark = pytest.mark.timeout(180)


def _data(database_url: str, log_format: str = "json") -> dict[str, Any]:
    return {
        "database": {"url": database_url},
        "logging": {"format": log_format},
        "workers": {"processes": 2, "shutdown_timeout": "5s"},
    }


def _ready_pids(daemon: Daemon) -> dict[int, int]:
    """Each child's pid, from the supervisor's latest worker_process_ready line per child."""
    return {
        e["process"]: e["pid"]
        for e in daemon.events()
        if e.get("event") == "worker_process_ready" and "process" in e
    }


def _ran_as_configured(daemon: Daemon, index: int, pid: int) -> bool:
    """Child ``index`` (this pid) logged daemon_ready as a JSON line: it logs as configured
    at the start. A worker id is <host>-<pid>-<suffix>."""
    return any(
        e.get("event") == "daemon_ready"
        and e.get("process") == index
        and int(str(e.get("worker")).rsplit("-", 2)[1]) == pid
        for e in daemon.events()
    )


@pytest.mark.parametrize("edit", ["invalid key", "valid change"])
def test_a_restarted_child_runs_the_config_the_service_started_with(
    database_url: str, tmp_path: Path, edit: str
) -> None:
    """The file is edited once the service is ready, then child 1 is killed: the new child
    starts with the config of its siblings. An invalid key used to make it exit 2, which
    stopped the whole healthy service; a valid change made it run another config (here:
    console logs instead of JSON)."""
    config = write_config(tmp_path / "jobwire.yaml", _data(database_url))
    daemon = Daemon(config, tmp_path / "daemon.log")
    try:
        daemon.wait_event("worker_processes_ready")
        old = _ready_pids(daemon)
        if edit == "invalid key":
            with config.open("a", encoding="utf-8") as f:
                f.write("no_such_key: 1\n")
        else:
            write_config(config, _data(database_url, log_format="console"))
        os.kill(old[1], signal.SIGKILL)
        daemon.wait_event("worker_process_restarted", process=1, previous_pid=old[1])

        def new_child_ready() -> int | None:
            if daemon.proc.poll() is not None:
                raise AssertionError(f"service exited {daemon.proc.returncode}:\n{daemon.log()}")
            pid = _ready_pids(daemon).get(1)
            return pid if pid not in (None, old[1]) else None

        new = wait_sync(new_child_ready, timeout=60, what="the new child 1 ready")
        wait_sync(
            lambda: _ran_as_configured(daemon, 1, new),
            timeout=10,
            what="the new child's daemon_ready as a JSON line",
        )
        assert daemon.terminate() == 0, daemon.log()
    finally:
        daemon.stop_quietly()
