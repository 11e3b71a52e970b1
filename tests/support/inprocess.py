"""Run the daemon inside the test's event loop, for tests that need to look inside it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from jobwire.adapters.base import SourceState
from jobwire.app import Daemon
from jobwire.config import Config, HttpConfig
from jobwire.handlers import HandlerRegistry
from tests.support.waiting import wait_for


@contextlib.asynccontextmanager
async def running_daemon(config: Config, wait_sources: bool = True) -> AsyncIterator[Daemon]:
    """Start ``Daemon.run()`` as a task; stop it gracefully on exit.

    A config left at the default HTTP address gets a free port instead (see write_config).
    """
    if config.http.listen == HttpConfig().listen:
        http = config.http.model_copy(update={"listen": "127.0.0.1:0"})
        config = config.model_copy(update={"http": http})
    daemon = Daemon(config, HandlerRegistry.from_config(config.handlers))
    task = asyncio.create_task(daemon.run())

    async def up() -> bool:
        if task.done():
            task.result()  # raise what killed it
        return daemon.ready.is_set() and (
            not wait_sources
            or (
                len(daemon.sources) == len(config.sources)
                and all(s.adapter.state == SourceState.UP for s in daemon.sources)
            )
        )

    await wait_for(up, timeout=30, what="daemon and sources up")
    try:
        yield daemon
    finally:
        daemon.request_stop("test finished")
        await asyncio.wait_for(task, 60)
