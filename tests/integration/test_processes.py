"""workers.processes: one ``jobwire run``, a supervisor and its child daemons, seen as one
service (one READY=1, SIGTERM drains all, a killed child comes back, none outlives it).

Real PostgreSQL and RabbitMQ; the handler returns its process id, so the rows say which
child ran each job.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.support import hostile as h
from tests.support.daemon import Daemon, jobwire, write_config
from tests.support.notify import NotifyListener
from tests.support.rows import assert_exactly, fetch, job_count, jobs_at_least
from tests.support.waiting import wait_for, wait_sync

pytestmark = pytest.mark.timeout(300)
N = 400
WHOAMI = "tests.integration.processes_handlers:whoami"


@pytest.fixture
def queue() -> Iterator[str]:
    """A fresh queue name, the queue deleted afterwards (the daemon declares it)."""
    name = f"jw-test-processes-{uuid.uuid4().hex[:8]}"
    yield name
    with contextlib.suppress(Exception):
        h.delete_amqp_queue(name)


def _config(tmp_path: Path, database_url: str, queue: str, shutdown_timeout: str = "5s") -> Path:
    data: dict[str, Any] = {
        "database": {"url": database_url},
        "logging": {"format": "json"},
        # A short drain: the supervisor-killed test waits for orphans that drain first.
        "workers": {"processes": 2, "shutdown_timeout": shutdown_timeout},
        "handlers": {"whoami": WHOAMI},
        "sources": [
            {
                "name": "work",
                "type": "amqp",
                "url": h.AMQP_URL,
                "queue": queue,
                "route": {"handler": "whoami"},
            }
        ],
    }
    return write_config(tmp_path / "jobwire.yaml", data)


def _publish(queue: str, start: int, n: int) -> None:
    h.publish_amqp(
        queue,
        [h.Outgoing(json.dumps({"i": i}).encode(), f"m-{i}") for i in range(start, start + n)],
    )


def _consuming(daemon: Daemon, pids: dict[int, int]) -> None:
    """Wait until these child processes ({index: pid}) consume the queue: READY=1 does not
    wait for brokers. A worker id is <host>-<pid>-<suffix>."""

    def up() -> bool:
        seen = {
            (e.get("process"), int(str(e.get("worker")).rsplit("-", 2)[1]))
            for e in daemon.events()
            if e.get("event") == "source_state" and e.get("state") == "up"
        }
        return set(pids.items()) <= seen

    wait_sync(up, timeout=60, what=f"the sources of {pids} up")


def _ready_pids(daemon: Daemon) -> dict[int, int]:
    """Each child's pid, from the supervisor's latest worker_process_ready line per child."""
    return {
        e["process"]: e["pid"]
        for e in daemon.events()
        if e.get("event") == "worker_process_ready" and "process" in e
    }


def _ran_by(database_url: str) -> Counter[int]:
    """Succeeded jobs by the pid that ran them."""
    rows = asyncio.run(
        fetch(
            database_url,
            "SELECT (result->>'pid')::int AS pid, count(*) AS n FROM jobwire.jobs"
            " WHERE status = 'succeeded' AND attempts = 1 GROUP BY 1",
        )
    )
    return Counter({r["pid"]: r["n"] for r in rows})


def _stops_cleanly(daemon: Daemon) -> None:
    """SIGTERM: every child drains and the service exits 0 (the supervisor's lines if not)."""
    code = daemon.terminate()
    lines = [e for e in daemon.events() if str(e.get("event", "")).startswith("worker_process")]
    assert code == 0, lines


def _drained(database_url: str, n: int) -> None:
    asyncio.run(
        wait_for(
            lambda: jobs_at_least(database_url, n, "status = 'succeeded'"),
            timeout=120,
            what=f"{n} succeeded jobs",
        )
    )
    asyncio.run(assert_exactly(database_url, n))


def test_two_processes_are_one_service_and_share_the_queue(
    database_url: str, queue: str, tmp_path: Path
) -> None:
    """READY=1 once both children are ready; N messages, N jobs once each, run by both
    children; SIGTERM drains both and the service exits 0."""
    with NotifyListener(tmp_path / "notify.sock") as systemd:
        daemon = Daemon(
            _config(tmp_path, database_url, queue),
            tmp_path / "daemon.log",
            env={"NOTIFY_SOCKET": systemd.address},
        )
        try:
            systemd.until("READY=1")
            pids = _ready_pids(daemon)
            assert sorted(pids) == [0, 1], daemon.log()
            children = {p.pid for p in psutil.Process(daemon.proc.pid).children()}
            assert children == set(pids.values())
            _consuming(daemon, pids)
            _publish(queue, 0, N)
            _drained(database_url, N)
            ran = _ran_by(database_url)
            assert set(ran) == set(pids.values()), ran  # both children took work
            assert sum(ran.values()) == N
            _stops_cleanly(daemon)
            systemd.until("STOPPING=1")
        finally:
            daemon.stop_quietly()
    # The first child's readiness was a status; READY=1 came once, after both.
    first = next(i for i, m in enumerate(systemd.received) if "1 of 2 processes ready" in m)
    ready = [i for i, m in enumerate(systemd.received) if "READY=1" in m]
    assert len(ready) == 1 and first < ready[0], systemd.received
    assert not any(psutil.pid_exists(pid) for pid in pids.values())
    events = daemon.events()
    # Only process 0 serves HTTP; each child is an instance with its own worker id.
    assert [e["process"] for e in events if e.get("event") == "http_listening"] == [0]
    workers = {e["worker"] for e in events if e.get("event") == "daemon_ready"}
    assert len(workers) == 2


def test_a_killed_child_is_started_again_and_the_work_goes_on(
    database_url: str, queue: str, tmp_path: Path
) -> None:
    """SIGKILL of child 1: logged, started again with a new pid, which then takes work."""
    daemon = Daemon(_config(tmp_path, database_url, queue), tmp_path / "daemon.log")
    try:
        daemon.wait_event("worker_processes_ready")
        old = _ready_pids(daemon)
        os.kill(old[1], signal.SIGKILL)
        daemon.wait_event("worker_process_exited", process=1, pid=old[1], exit_code=-9)
        daemon.wait_event("worker_process_restarted", process=1, previous_pid=old[1])
        wait_sync(
            lambda: _ready_pids(daemon).get(1) not in (None, old[1]),
            timeout=60,
            what="the new child 1 ready",
        )
        new = _ready_pids(daemon)
        assert new[0] == old[0]  # the other child was left alone
        _consuming(daemon, new)
        _publish(queue, 0, N)
        _drained(database_url, N)
        ran = _ran_by(database_url)
        assert set(ran) == {new[0], new[1]}, ran
        _stops_cleanly(daemon)
    finally:
        daemon.stop_quietly()


def test_no_child_outlives_a_killed_supervisor(
    database_url: str, queue: str, tmp_path: Path
) -> None:
    """SIGKILL of the supervisor: the children get SIGTERM from the kernel and drain away."""
    daemon = Daemon(_config(tmp_path, database_url, queue), tmp_path / "daemon.log")
    children: list[psutil.Process] = []
    try:
        daemon.wait_event("worker_processes_ready")
        children = psutil.Process(daemon.proc.pid).children()
        assert len(children) == 2
        daemon.kill()

        def gone() -> bool:
            return not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children)

        # shutdown_timeout is 5s: a drain with nothing running ends well before this.
        wait_sync(gone, timeout=45, what="no child process left")
    finally:
        daemon.stop_quietly()
        for child in children:  # only on failure: orphans must not outlive the test
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()


@pytest.mark.parametrize(
    ("extra", "key", "words"),
    [
        ({"database": {"url": "embedded"}}, "workers.processes", "need a PostgreSQL server"),
        (
            {
                # Not auto: with the embedded database (the default) that is 1 process,
                # and elsewhere as many as this host's cores.
                "database": {"url": "postgresql://localhost/jobwire"},
                "sources": [
                    {"name": "m", "type": "mqtt", "topics": ["t/#"], "route": {"handler": "noop"}}
                ],
            },
            "sources[0].shared_group",
            "set shared_group",
        ),
    ],
)
def test_a_config_the_processes_cannot_share_is_refused(
    tmp_path: Path, extra: dict[str, Any], key: str, words: str
) -> None:
    """Exit 2 with the key and the reason, before anything starts."""
    data = {"workers": {"processes": 2}, **extra}
    config = write_config(tmp_path / "jobwire.yaml", data)
    out = jobwire("check-config", "-c", str(config), check=False)
    assert out.returncode == 2, out.stderr
    assert key in out.stderr and words in out.stderr, out.stderr


def test_a_child_that_stops_answering_is_replaced(
    database_url: str, queue: str, tmp_path: Path
) -> None:
    """Under systemd's watchdog the supervisor pings systemd, the children ping the
    supervisor, and a child silent for a whole interval (here: stopped) is killed and
    started again."""
    with NotifyListener(tmp_path / "notify.sock") as systemd:
        daemon = Daemon(
            _config(tmp_path, database_url, queue),
            tmp_path / "daemon.log",
            env={"NOTIFY_SOCKET": systemd.address, "WATCHDOG_USEC": "10000000"},
        )
        old: dict[int, int] = {}
        try:
            systemd.until("READY=1")
            systemd.until("WATCHDOG=1")
            # Both children's ready lines, waited for: the supervisor writes them before
            # READY=1, yet one full run read child 1's as missing right after it (cause not
            # found; a line missing for good still fails here, at the deadline).
            wait_sync(lambda: len(_ready_pids(daemon)) == 2, timeout=10, what="both ready")
            old = _ready_pids(daemon)
            os.kill(old[1], signal.SIGSTOP)
            daemon.wait_event("worker_process_hung", process=1, pid=old[1])
            daemon.wait_event("worker_process_restarted", process=1, previous_pid=old[1])
            wait_sync(
                lambda: _ready_pids(daemon).get(1) not in (None, old[1]),
                timeout=60,
                what="the new child 1 ready",
            )
            assert not psutil.pid_exists(old[1]) or (
                psutil.Process(old[1]).status() == psutil.STATUS_ZOMBIE
            )
            _stops_cleanly(daemon)
        finally:
            daemon.stop_quietly()
            if 1 in old:  # only on failure: a stopped child must not outlive the test
                with contextlib.suppress(ProcessLookupError):
                    os.kill(old[1], signal.SIGKILL)


def test_a_stop_under_the_watchdog_lets_a_running_job_finish(
    database_url: str, queue: str, tmp_path: Path
) -> None:
    """SIGTERM while a job runs longer than WatchdogSec: a draining child pings no more
    (STOPPING=1), and the supervisor lets it finish within shutdown_timeout instead of
    killing it as hung; the job succeeds and the service exits 0."""
    daemon = Daemon(
        _config(tmp_path, database_url, queue, shutdown_timeout="30s"),
        tmp_path / "daemon.log",
        env={"WATCHDOG_USEC": "2000000"},
    )
    try:
        daemon.wait_event("worker_processes_ready")
        _consuming(daemon, _ready_pids(daemon))
        h.publish_amqp(queue, [h.Outgoing(json.dumps({"sleep": 7}).encode(), "slow")])
        asyncio.run(
            wait_for(
                lambda: jobs_at_least(database_url, 1, "status = 'running'"),
                timeout=60,
                what="the slow job running",
            )
        )
        code = daemon.terminate()
        hung = [e for e in daemon.events() if e.get("event") == "worker_process_hung"]
        assert (code, hung) == (0, []), daemon.log()
        assert asyncio.run(job_count(database_url, "status = 'succeeded'")) == 1
        assert asyncio.run(job_count(database_url)) == 1
    finally:
        daemon.stop_quietly()
