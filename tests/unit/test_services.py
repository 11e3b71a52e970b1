"""Services start in order and stop in reverse; a failed start stops what had started."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from jobwire.app import Daemon
from jobwire.config import Config
from jobwire.handlers import HandlerRegistry
from jobwire.services import LoopService, ServiceGroup
from jobwire.store.memory import MemoryStore
from jobwire.store.postgres import PostgresStore

pytestmark = pytest.mark.timeout(10)


class Fake:
    """A service that records its start and stop in a shared list."""

    def __init__(self, name: str, events: list[str], fail: str | None = None) -> None:
        self.name = name
        self.events = events
        self.fail = fail

    async def start(self) -> None:
        if self.fail == "start":
            raise RuntimeError(f"{self.name} cannot start")
        self.events.append(f"start {self.name}")

    async def stop(self) -> None:
        self.events.append(f"stop {self.name}")
        if self.fail == "stop":
            raise RuntimeError(f"{self.name} cannot stop")


async def test_started_in_order_and_stopped_in_reverse() -> None:
    events: list[str] = []
    group = ServiceGroup([Fake(n, events) for n in ("store", "pool", "sources")])
    await group.start()
    assert group.started == ["store", "pool", "sources"]
    await group.stop()
    await group.stop()  # a second stop does nothing
    assert events == [
        "start store",
        "start pool",
        "start sources",
        "stop sources",
        "stop pool",
        "stop store",
    ]
    assert group.started == []


async def test_a_failed_start_stops_what_had_started_and_raises() -> None:
    events: list[str] = []
    names = ("http", "pool", "gate", "sources")
    group = ServiceGroup([Fake(n, events, fail="start" if n == "gate" else None) for n in names])
    with pytest.raises(RuntimeError, match="gate cannot start"):
        await group.start()
    assert events == ["start http", "start pool", "stop pool", "stop http"]


async def test_a_stop_during_start_is_no_failure_in_the_logs() -> None:
    # A SIGTERM while a service started (a child of workers.processes waiting for the
    # database) logged service_start_failed at error level, though the stop was asked for.
    from structlog.testing import capture_logs

    events: list[str] = []
    started = asyncio.Event()

    class Slow(Fake):
        async def start(self) -> None:
            started.set()
            await asyncio.Event().wait()

    group = ServiceGroup([Fake("pool", events), Slow("http", events)])
    with capture_logs() as logs:
        task = asyncio.create_task(group.start())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert events == ["start pool", "stop pool"]
    assert [(e["event"], e["log_level"]) for e in logs] == [("service_start_stopped", "info")]


async def test_a_failed_stop_does_not_keep_the_others_running() -> None:
    events: list[str] = []
    group = ServiceGroup([Fake("pool", events), Fake("gate", events, fail="stop")])
    await group.start()
    await group.stop()
    assert events[-2:] == ["stop gate", "stop pool"]


async def test_a_loop_service_prepares_runs_and_is_cancelled() -> None:
    events: list[str] = []
    stopped = asyncio.Event()

    async def prepare() -> None:
        events.append("prepared")

    async def loop() -> None:
        events.append("running")
        try:
            await asyncio.Event().wait()
        finally:
            stopped.set()

    service = LoopService("leader", loop, prepare=prepare)
    await service.start()
    await asyncio.sleep(0)
    assert events == ["prepared", "running"]
    await service.stop()
    assert stopped.is_set()


def test_the_daemon_builds_its_services_in_start_order() -> None:
    config = Config.model_validate(
        {
            "http": {"listen": "127.0.0.1:0"},
            "workers": {"max_backlog": 100},
            "schedules": [{"name": "tick", "every": "1s", "handler": "noop"}],
        }
    )
    daemon = Daemon(config, HandlerRegistry({}))
    store: Any = MemoryStore()
    store.pool_usage = lambda: (1, 1)
    services = daemon.build(cast(PostgresStore, store))
    # No sources configured: no backlog gate, and an empty sources service.
    assert [s.name for s in services] == ["http", "pool", "scheduler", "maintenance", "sources"]
    assert daemon.pool is not None and daemon.metrics is not None and daemon.http is not None
    assert daemon.pool.completer.on_outcome == daemon.metrics.observe
