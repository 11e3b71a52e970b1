"""Services: the long-running parts of the daemon, started in order and stopped in reverse."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Protocol

import structlog

log = structlog.get_logger("jobwire.services")


class Service(Protocol):
    """One part of the daemon with a start and a stop (a pool, a source, a leader's loop)."""

    @property
    def name(self) -> str:
        """What logs call it."""

    async def start(self) -> None:
        """Start; return once running (raise if it cannot)."""

    async def stop(self) -> None:
        """Stop gracefully; called only after a successful start."""


class ServiceGroup:
    """Starts services in order and stops the started ones in reverse.

    A start that fails stops what had started, then raises: nothing is left running. A
    stop that fails is logged and the others still stop.
    """

    def __init__(self, services: Sequence[Service]) -> None:
        self.services = list(services)
        self._started: list[Service] = []

    @property
    def started(self) -> list[str]:
        """Names of the services running now, in start order."""
        return [s.name for s in self._started]

    async def start(self) -> None:
        """Start every service in order."""
        for service in self.services:
            try:
                await service.start()
            except asyncio.CancelledError:
                # A stop asked for during the start (SIGTERM while waiting for the
                # database): no failure, though what had started stops all the same.
                log.info("service_start_stopped", service=service.name)
                await self.stop()
                raise
            except BaseException:
                log.error("service_start_failed", service=service.name)
                await self.stop()
                raise
            self._started.append(service)

    async def stop(self) -> None:
        """Stop the started services, last started first."""
        while self._started:
            service = self._started.pop()
            try:
                await service.stop()
            except Exception:
                log.exception("service_stop_failed", service=service.name)


class LoopService:
    """A service that runs one coroutine as a task; ``prepare`` runs first, in start."""

    def __init__(
        self,
        name: str,
        loop: Callable[[], Coroutine[Any, Any, None]],
        *,
        prepare: Callable[[], Awaitable[None]] | None = None,
        stop_wait: float = 5.0,
    ) -> None:
        self.name = name
        self._loop = loop
        self._prepare = prepare
        self._stop_wait = stop_wait
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Prepare, then start the loop's task."""
        if self._prepare is not None:
            await self._prepare()
        self._task = asyncio.create_task(self._loop(), name=f"jobwire-{self.name}")

    async def stop(self) -> None:
        """Cancel the loop (it cleans up in its ``finally``) and wait for it a while."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=self._stop_wait)


async def cancel_until_done(tasks: Sequence[asyncio.Task[Any]], again_after: float = 1.0) -> None:
    """Cancel ``tasks`` and wait until every one has ended, cancelling again each
    ``again_after`` seconds: a cancellation can be swallowed (in Python 3.11,
    ``asyncio.wait_for`` returns the result of an inner task that finished as it was
    cancelled, and broker clients connect through it), and a stop must not wait forever on a
    task that carried on. Exceptions are retrieved, not raised (the task is being stopped)."""
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=again_after)
    for task in tasks:
        if not task.cancelled():
            task.exception()
