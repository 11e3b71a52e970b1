"""The supervisor of workers.processes with stand-in children (tests/support/fake_child.py):
no file system of its own, only its children heard, a crash loop given up on."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import structlog

from jobwire.processes import Supervisor
from jobwire.processes.inbox import NotifyInbox
from jobwire.processes.slot import RestartPolicy
from jobwire.sdnotify import sd_notify, watchdog_interval
from tests.support.notify import NotifyListener
from tests.support.waiting import wait_for

FAKE = str(Path(__file__).parents[1] / "support" / "fake_child.py")
pytestmark = pytest.mark.timeout(60)


def _supervisor(
    systemd: NotifyListener,
    argv: list[str],
    processes: int,
    policy: Callable[[], RestartPolicy] = RestartPolicy,
) -> Supervisor:
    environ = {**os.environ, "NOTIFY_SOCKET": systemd.address}
    return Supervisor(argv, processes, 5.0, environ, [sys.executable, FAKE], policy)


def test_it_needs_no_temporary_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Kubernetes' readOnlyRootFilesystem leaves no /tmp: the notify sockets are abstract."""
    missing = str(tmp_path / "missing")
    monkeypatch.setenv("TMPDIR", missing)
    monkeypatch.setattr(tempfile, "tempdir", missing)
    with NotifyListener(tmp_path / "notify.sock") as systemd:
        supervisor = _supervisor(systemd, ["serve"], 2)

        async def go() -> int:
            task = asyncio.create_task(supervisor.run())
            await wait_for(lambda: supervisor.announced or task.done(), timeout=30, what="ready")
            supervisor.request_stop("test")
            return await task

        assert asyncio.run(go()) == 0
        systemd.until("READY=1", timeout=5)
        systemd.until("STOPPING=1", timeout=5)
    assert not os.path.exists(missing)


def test_a_crash_loop_stops_the_service(tmp_path: Path) -> None:
    """A child that keeps dying soon after its start: restarted with a STATUS each time,
    then given up on after 5 deaths; the others are stopped and the service exits 1."""
    with NotifyListener(tmp_path / "notify.sock") as systemd:
        supervisor = _supervisor(
            systemd, ["crash", "0.2", "3"], 1, policy=lambda: RestartPolicy(first_wait=0.01)
        )
        with structlog.testing.capture_logs() as logs:
            code = asyncio.run(asyncio.wait_for(supervisor.run(), 30))
        assert code == 1
        for n in range(1, 5):
            systemd.until(f"STATUS=process 0 restarting ({n})", timeout=5)
    assert [e["event"] for e in logs].count("worker_process_restarted") == 4
    assert [e for e in logs if e["event"] == "worker_process_crash_loop"] == [
        {"event": "worker_process_crash_loop", "process": 0, "failures": 5, "log_level": "error"}
    ]


def test_a_stop_while_a_restart_waits_is_clean(tmp_path: Path) -> None:
    """A child that died after the service was ready, waiting to be started again: the stop
    ends no process, so the service exits 0 and that death is reported once, not again as
    what the stop ended."""
    with NotifyListener(tmp_path / "notify.sock") as systemd:
        supervisor = _supervisor(
            systemd, ["crash", "0.2", "3"], 1, policy=lambda: RestartPolicy(first_wait=30)
        )

        async def go() -> int:
            task = asyncio.create_task(supervisor.run())
            waiting = "STATUS=process 0 restarting (1)"
            await wait_for(
                lambda: any(waiting in m for m in systemd.received) or task.done(),
                timeout=20,
                what="the wait before the first restart",
            )
            supervisor.request_stop("test")
            return await task

        with structlog.testing.capture_logs() as logs:
            code = asyncio.run(asyncio.wait_for(go(), 30))
    assert code == 0
    exited = [e for e in logs if e["event"] == "worker_process_exited"]
    assert [(e["exit_code"], e["log_level"]) for e in exited] == [(3, "error")]
    assert [e["event"] for e in logs].count("worker_process_restarted") == 0


@pytest.mark.parametrize(
    "usec",
    # A superscript 3 passes str.isdigit() but not int(); an Arabic-Indic and a fullwidth 4
    # pass both (as 4); 0 would make the ping loop spin on sleep(0).
    ["", "0", "000", "-1", "1.5", "x", " 1", "\u00b3", "\u0664", "\uff14"],
)
def test_a_watchdog_interval_is_a_positive_number(usec: str) -> None:
    """Anything but a positive count of microseconds in ASCII digits: no watchdog."""
    assert watchdog_interval({"WATCHDOG_USEC": usec}) is None


def test_the_watchdog_is_for_the_process_it_names() -> None:
    """WATCHDOG_USEC in seconds, unless WATCHDOG_PID names another process."""
    assert watchdog_interval({"WATCHDOG_USEC": "2000000"}) == 2.0
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}) == 2.0
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}) is None


def test_the_restart_policy_forgives_a_long_run() -> None:
    """Deaths count in a row only while each run was short; the waits double from the first."""
    now = [0.0]
    policy = RestartPolicy(limit=3, stable_after=60, first_wait=1, clock=lambda: now[0])
    policy.backoff.jitter = "none"
    policy.started()
    assert policy.died() == 1
    policy.started()
    assert policy.died() == 2
    policy.started()
    now[0] += 60  # a minute's run: the next death is the first again
    assert policy.died() == 1
    policy.started()
    assert policy.died() == 2
    policy.started()
    now[0] += 59
    assert policy.died() is None


def test_the_inbox_names_the_sender() -> None:
    """Abstract names (no file), and each datagram's sender pid from the kernel."""
    got: list[tuple[int, int, dict[str, str]]] = []
    inbox = NotifyInbox(2, lambda index, pid, fields: got.append((index, pid, fields)))
    loop = asyncio.new_event_loop()
    try:
        assert inbox.address(1).startswith("@jobwire-")
        sd_notify("READY=1\nSTATUS=x", inbox.address(1))
        inbox.drain(1)
        inbox.drain(0)
    finally:
        inbox.close(loop)
        loop.close()
    assert got == [(1, os.getpid(), {"READY": "1", "STATUS": "x"})]


def test_a_full_receiver_never_blocks_the_sender(tmp_path: Path) -> None:
    """A receiver that reads nothing (a stalled systemd, a test's listener): sd_notify drops
    what does not fit instead of blocking the event loop that calls it."""
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(address)
        sender = threading.Thread(
            target=lambda: [sd_notify("WATCHDOG=1", address) for _ in range(1000)], daemon=True
        )
        sender.start()
        sender.join(10)
        assert not sender.is_alive()


def test_only_the_child_itself_is_heard(tmp_path: Path) -> None:
    """A datagram from another process (the abstract name is visible to the whole network
    namespace) neither makes a child ready nor stands for its pings."""
    with NotifyListener(tmp_path / "notify.sock") as systemd:
        supervisor = _supervisor(systemd, ["serve"], 1)
    supervisor._on_notify(0, os.getpid(), {"READY": "1", "WATCHDOG": "1"})
    assert not supervisor.slots[0].ready and supervisor.slots[0].last_ping == 0
    assert not supervisor.announced
