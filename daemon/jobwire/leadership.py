"""Leading by a PostgreSQL advisory lock: one instance at a time does a duty (schedules,
maintenance), and another takes over when the leader's lock connection is gone."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from jobwire.store.base import LeaderLock, StoreUnavailable

log = structlog.get_logger("jobwire.leadership")

# How often a leader checks that its lock's connection is still there.
PING_EVERY = 2.0


class Leader:
    """Takes the lock ``key`` when free and runs ``duty`` every ``check_every`` while it
    holds it; logs ``<name>_leading``, ``<name>_lock_lost``, ``<name>_leadership_released``
    and ``<name>_store_unavailable``."""

    def __init__(
        self,
        name: str,
        try_lock: Callable[[str], Awaitable[LeaderLock | None]],
        key: str,
        duty: Callable[[], Awaitable[object]],
        *,
        retry_every: float,
        check_every: float,
    ) -> None:
        self.name = name
        self.key = key
        self._try_lock = try_lock
        self._duty = duty
        self.retry_every = retry_every
        self.check_every = check_every
        self.leading = False

    async def run(self) -> None:
        """Try to lead; lead until the lock's connection is lost; try again (until cancelled)."""
        while True:
            try:
                lock = await self._try_lock(self.key)
            except StoreUnavailable as exc:
                log.warning(f"{self.name}_store_unavailable", error=str(exc))
                lock = None
            if lock is None:
                await asyncio.sleep(self.retry_every)
                continue
            try:
                await self._lead(lock)
            finally:
                self.leading = False
                await lock.release()
                log.info(f"{self.name}_leadership_released")

    async def _lead(self, lock: LeaderLock) -> None:
        self.leading = True
        log.info(f"{self.name}_leading", lock=self.key)
        loop = asyncio.get_running_loop()
        next_ping = loop.time() + PING_EVERY
        while True:
            try:
                await self._duty()
            except StoreUnavailable as exc:
                log.warning(f"{self.name}_store_unavailable", error=str(exc))
            await asyncio.sleep(self.check_every)
            if loop.time() >= next_ping:
                next_ping = loop.time() + PING_EVERY
                if not await lock.still_held():
                    log.warning(f"{self.name}_lock_lost")
                    return
