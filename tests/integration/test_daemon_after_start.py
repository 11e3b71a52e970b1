"""The daemon's after-start hook (``jobwire run`` sets the process's garbage collector
there): run once, after every service has started and before the daemon says it is ready."""

from __future__ import annotations

import asyncio

import pytest

from jobwire.app import Daemon
from jobwire.config import Config
from jobwire.handlers import HandlerRegistry
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(60)


async def test_after_start_runs_once_between_the_services_starting_and_ready(
    database_url: str,
) -> None:
    config = Config.model_validate(
        {"database": {"url": database_url}, "http": {"listen": "127.0.0.1:0"}}
    )
    seen: list[tuple[bool, bool]] = []

    def after_start() -> None:
        # The HTTP server is the first service started: it listens by now.
        assert daemon.http is not None
        seen.append((daemon.ready.is_set(), bool(daemon.http.port)))

    daemon = Daemon(config, HandlerRegistry.from_config({}), after_start=after_start)
    task = asyncio.create_task(daemon.run())
    try:
        await wait_for(lambda: daemon.ready.is_set() or task.done(), timeout=30, what="ready")
        assert not task.done(), task.exception()
        assert seen == [(False, True)]
    finally:
        daemon.request_stop("test finished")
        await asyncio.wait_for(task, 30)
    assert len(seen) == 1
