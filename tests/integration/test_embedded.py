"""The embedded default: ``jobwire run`` with no database configured, as root or not."""

from __future__ import annotations

import json
from pathlib import Path

import psutil
import pytest

from tests.support.daemon import Daemon, jobwire, wait_until, write_config

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]


def postgres_processes(data_dir: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if proc.info["name"] == "postgres" and str(data_dir) in cmdline:
            found.append(proc)
    return found


def test_embedded_default_runs_jobs_and_stops_its_server(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    config = write_config(
        tmp_path / "jobwire.yaml",
        {
            "database": {"data_dir": str(data_dir)},  # url defaults to "embedded"
            "workers": {"poll_interval": "200ms"},
            "logging": {"format": "json"},
        },
    )
    daemon = Daemon(config, tmp_path / "daemon.log")
    try:
        daemon.wait_ready(timeout=120)
        assert postgres_processes(data_dir), "embedded PostgreSQL is not running"
        # The CLI attaches to the daemon's server; leaving does not stop it.
        job_id = jobwire(
            "enqueue", "echo", "--payload", '{"hello": "embedded"}', "-c", str(config)
        ).stdout.strip()

        def succeeded() -> bool:
            out = jobwire("jobs", "show", job_id, "-c", str(config)).stdout
            return json.loads(out)["status"] == "succeeded"

        wait_until(succeeded, timeout=30, what="job succeeded on the embedded database")
        assert daemon.terminate() == 0
    finally:
        daemon.stop_quietly()
    wait_until(
        lambda: not postgres_processes(data_dir), timeout=30, what="embedded PostgreSQL stopped"
    )
