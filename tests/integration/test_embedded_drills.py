"""The embedded database as operators break it: bad data_dirs, SIGKILL, stale pid files,
a server killed under a running daemon."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.integration.test_embedded import postgres_processes
from tests.support.daemon import REPO, Daemon, jobwire, wait_until, write_config
from tests.support.waiting import wait_sync

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]


def embedded_config(tmp_path: Path, data_dir: Path, **http: str) -> Path:
    """A config for the embedded default under data_dir, JSON logs, quick polling."""
    data = {
        "database": {"data_dir": str(data_dir)},
        "workers": {"poll_interval": "200ms"},
        "logging": {"format": "json"},
    }
    if http:
        data["http"] = http
    return write_config(tmp_path / "jobwire.yaml", data)


def job_status(config: Path, job_id: str) -> str:
    """The job's status, read through the CLI (which attaches to the daemon's server)."""
    out = jobwire("jobs", "show", job_id, "-c", str(config)).stdout
    return str(json.loads(out)["status"])


@pytest.mark.parametrize(
    ("layout", "code", "says"),
    [
        ("file", 2, "point database.data_dir at a writable directory"),
        ("space", 2, "contains whitespace"),
        ("garbage", 1, "did not start"),
        ("users-unreadable", 1, "could not start"),
    ],
)
def test_an_unusable_data_dir_is_a_clear_refusal(
    tmp_path: Path, layout: str, code: int, says: str
) -> None:
    data_dir = tmp_path / "var"
    if layout == "file":
        data_dir.write_text("not a directory")
    elif layout == "space":
        data_dir = tmp_path / "my var"
    elif layout == "users-unreadable":
        # The library's list of processes using the server cannot be read or written.
        (data_dir / "pgdata" / ".handle_pids.json").mkdir(parents=True)
    else:
        # Not a PostgreSQL data directory, though it claims to be one.
        (data_dir / "pgdata").mkdir(parents=True)
        (data_dir / "pgdata" / "PG_VERSION").write_text("garbage\n")
    config = embedded_config(tmp_path, data_dir)
    out = jobwire("run", "-c", str(config), check=False, timeout=90)
    assert out.returncode == code, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    assert says in out.stderr
    assert not postgres_processes(data_dir)


def test_a_server_left_by_a_killed_daemon_is_stopped_by_the_next(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    config = embedded_config(tmp_path, data_dir)
    first = Daemon(config, tmp_path / "first.log")
    try:
        first.wait_ready(timeout=120)
        # Due only after the kill: it must survive it and run under the next daemon.
        job_id = jobwire("enqueue", "echo", "--delay", "3s", "-c", str(config)).stdout.strip()
        first.kill()
    finally:
        first.stop_quietly()
    assert postgres_processes(data_dir), "a SIGKILL leaves the server running"
    second = Daemon(config, tmp_path / "second.log")
    try:
        second.wait_ready(timeout=120)
        wait_until(lambda: job_status(config, job_id) == "succeeded", timeout=30, what="job ran")
        assert second.terminate() == 0
    finally:
        second.stop_quietly()
    # The killed daemon never said it left; the last one out still stops the server.
    wait_until(
        lambda: not postgres_processes(data_dir), timeout=30, what="embedded PostgreSQL stopped"
    )


def test_a_stale_pid_file_naming_another_program_neither_blocks_nor_kills_it(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "var"
    pid_file = data_dir / "pgdata" / "postmaster.pid"
    config = embedded_config(tmp_path, data_dir)
    first = Daemon(config, tmp_path / "first.log")
    try:
        first.wait_ready(timeout=120)
        lines = pid_file.read_text().splitlines()
        assert first.terminate() == 0
    finally:
        first.stop_quietly()
    wait_until(lambda: not pid_file.exists(), timeout=30, what="server stopped")
    # After a power loss or in a restarted container, the old postmaster's pid is someone
    # else's: here a sleep's.
    bystander = subprocess.Popen(["sleep", "300"])
    try:
        pid_file.write_text("\n".join([str(bystander.pid), *lines[1:]]) + "\n")
        second = Daemon(config, tmp_path / "second.log")
        try:
            second.wait_ready(timeout=60)
            assert second.terminate() == 0
        finally:
            second.stop_quietly()
        assert bystander.poll() is None, "jobwire killed a process that was not its server"
    finally:
        bystander.kill()
        bystander.wait(10)
    wait_until(
        lambda: not postgres_processes(data_dir), timeout=30, what="embedded PostgreSQL stopped"
    )


def test_a_server_killed_under_the_daemon_is_started_again(
    tmp_path: Path, unused_tcp_port: int
) -> None:
    data_dir = tmp_path / "var"
    config = embedded_config(tmp_path, data_dir, listen=f"127.0.0.1:{unused_tcp_port}")
    daemon = Daemon(config, tmp_path / "daemon.log")

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{unused_tcp_port}/readyz") as resp:
                return bool(json.load(resp)["ready"])
        except OSError:
            return False

    try:
        daemon.wait_ready(timeout=120)
        postmaster = int((data_dir / "pgdata" / "postmaster.pid").read_text().split()[0])
        os.kill(postmaster, signal.SIGKILL)
        daemon.wait_event("embedded_postgres_died", timeout=30)
        daemon.wait_event("embedded_postgres_restarted", timeout=60)
        wait_until(ready, timeout=30, what="/readyz ready again")
        job_id = jobwire("enqueue", "echo", "-c", str(config)).stdout.strip()
        wait_until(lambda: job_status(config, job_id) == "succeeded", timeout=30, what="job ran")
        assert daemon.terminate() == 0
    finally:
        daemon.stop_quietly()
    assert not psutil.pid_exists(postmaster) or psutil.Process(postmaster).name() != "postgres"
    wait_until(
        lambda: not postgres_processes(data_dir), timeout=30, what="embedded PostgreSQL stopped"
    )


def test_a_first_start_killed_during_initdb_initializes_again(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    config = embedded_config(tmp_path, data_dir)
    # Its own process group: SIGKILL reaches initdb too, as systemd's kill of the unit does.
    first = subprocess.Popen(
        [sys.executable, "-m", "jobwire", "run", "-c", str(config)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_sync(
            lambda: (data_dir / "pgdata" / "PG_VERSION").exists(),
            timeout=60,
            interval=0.005,
            what="initdb under way",
        )
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(10)
    interrupted = (data_dir / "pgdata.initializing").exists()  # else initdb won the race
    migrated = jobwire("migrate", "-c", str(config), check=False, timeout=120)
    assert migrated.returncode == 0, migrated.stderr
    assert ("embedded_postgres_initdb_interrupted" in migrated.stderr) == interrupted
    jobwire("stats", "-c", str(config))
    wait_until(
        lambda: not postgres_processes(data_dir), timeout=30, what="embedded PostgreSQL stopped"
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs the server as another user")
def test_as_root_directories_above_data_dir_are_not_made_readable_to_all(
    tmp_path: Path,
) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    private.chmod(0o700)
    config = embedded_config(tmp_path, private / "jobwire")
    migrated = jobwire("migrate", "-c", str(config), check=False, timeout=120)
    assert migrated.returncode == 0, migrated.stderr
    # The server's user may pass through, as it must; no one else may list what is there.
    assert stat.S_IMODE(private.stat().st_mode) == 0o711
    assert "embedded_postgres_opened_directories" in migrated.stderr
    wait_until(
        lambda: not postgres_processes(private), timeout=30, what="embedded PostgreSQL stopped"
    )


def test_a_failed_initdb_says_how_much_space_there_is(tmp_path: Path) -> None:
    from jobwire.store import embedded

    failed = subprocess.CalledProcessError(1, ["/opt/pginstall/bin/initdb", "-D", "x"])
    error = embedded._start_failed(tmp_path, failed)
    # initdb's own words are in the library's log line; a full disk is the common cause.
    assert "could not be initialized" in str(error)
    assert "MB free there" in str(error)
    assert error.exit_code == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs the server as another user")
def test_as_root_a_long_data_dir_socket_is_not_open_to_other_users(tmp_path: Path) -> None:
    # Too long for a unix socket under pgdata (107 bytes): the socket goes elsewhere.
    data_dir = tmp_path / ("d" * 80) / "var"
    config = embedded_config(tmp_path, data_dir)
    daemon = Daemon(config, tmp_path / "daemon.log")
    try:
        daemon.wait_ready(timeout=120)
        dsn = next(e["dsn"] for e in daemon.events() if e["event"] == "embedded_postgres_ready")
        socket_path = Path(dsn.split("host=", 1)[1]) / ".s.PGSQL.5432"
        assert socket_path.is_socket()
        # Trust authentication: whoever can open the socket is the PostgreSQL superuser.
        reachable = subprocess.run(["test", "-w", str(socket_path)], user="nobody", check=False)
        assert reachable.returncode != 0, f"{socket_path} is open to every local user"
        jobwire("stats", "-c", str(config))  # root, as the CLI, still gets in
        assert daemon.terminate() == 0
    finally:
        daemon.stop_quietly()
    wait_until(
        lambda: not postgres_processes(data_dir), timeout=30, what="embedded PostgreSQL stopped"
    )
    assert not socket_path.parent.exists(), "the socket's private directory is left behind"


def test_a_stop_just_after_the_server_died_is_clean(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    config = embedded_config(tmp_path, data_dir)
    daemon = Daemon(config, tmp_path / "daemon.log")
    try:
        daemon.wait_ready(timeout=120)
        postmaster = int((data_dir / "pgdata" / "postmaster.pid").read_text().split()[0])
        os.kill(postmaster, signal.SIGKILL)
        # Stopped while the dead server may not be reaped yet: the library then "kills" it.
        daemon.wait_event("embedded_postgres_died", timeout=30)
        assert daemon.terminate() == 0
    finally:
        daemon.stop_quietly()
    plain = [line for line in daemon.log().splitlines() if not line.startswith("{")]
    assert not any("Traceback" in line for line in plain), daemon.log()
    wait_until(
        lambda: not postgres_processes(data_dir), timeout=30, what="embedded PostgreSQL stopped"
    )
