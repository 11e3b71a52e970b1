"""Leader-only maintenance: the retention purge of old finished jobs.

One instance leads, by an advisory lock of its own (see PostgresStore.try_leadership):
the lock lasts as long as its connection, so a dead leader is replaced within
``retry_every``. Lease rescue is not here but on every instance (worker/leases.py): a
frozen leader keeps its lock, and its own expired leases would then never be rescued.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import structlog

from jobwire.config import RetentionConfig
from jobwire.scheduler import LeaderLock
from jobwire.store.base import StoreUnavailable

log = structlog.get_logger("jobwire.maintenance")


class MaintenanceStore(Protocol):
    """The store operations maintenance uses."""

    async def try_leadership(self, key: str) -> LeaderLock | None:
        """A LeaderLock, or None when another instance leads."""

    async def purge_finished(self, older_than: float, batch: int) -> int:
        """Delete one batch of old finished jobs, oldest first."""


class Maintenance:
    """Leads when it can; while leading, purges finished jobs past retention."""

    name = "maintenance"

    def __init__(
        self,
        store: MaintenanceStore,
        retention: RetentionConfig,
        *,
        schema: str = "jobwire",
        retry_every: float = 1.0,
        check_every: float = 1.0,
        first_purge_after: float = 5.0,
    ) -> None:
        self.store = store
        self.retention = retention
        self.lock_key = f"jobwire-maintenance:{schema}"
        self.retry_every = retry_every
        self.check_every = check_every
        self.first_purge_after = first_purge_after
        self.leading = False
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start trying to lead."""
        self._task = asyncio.create_task(self.run(), name="jobwire-maintenance")

    async def stop(self) -> None:
        """Stop; a leader releases its lock (closes its connection) on the way out."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=5)

    async def run(self) -> None:
        """Try to lead; lead until the lock's connection is lost; try again."""
        while True:
            try:
                lock = await self.store.try_leadership(self.lock_key)
            except StoreUnavailable as exc:
                log.warning("maintenance_store_unavailable", error=str(exc))
                lock = None
            if lock is None:
                await asyncio.sleep(self.retry_every)
                continue
            try:
                await self._lead(lock)
            finally:
                self.leading = False
                await lock.release()
                log.info("maintenance_leadership_released")

    async def _lead(self, lock: LeaderLock) -> None:
        self.leading = True
        log.info("maintenance_leading", lock=self.lock_key)
        loop = asyncio.get_running_loop()
        next_ping = loop.time() + 2.0
        # Not in the first seconds of a start-up, when the daemon has more urgent work.
        next_purge = loop.time() + self.first_purge_after
        while True:
            if loop.time() >= next_purge:
                next_purge = loop.time() + self.retention.every
                try:
                    await self.purge()
                except StoreUnavailable as exc:
                    log.warning("maintenance_store_unavailable", error=str(exc))
            await asyncio.sleep(self.check_every)
            if loop.time() >= next_ping:
                next_ping = loop.time() + 2.0
                if not await lock.still_held():
                    log.warning("maintenance_lock_lost")
                    return

    async def purge(self) -> int:
        """Delete finished jobs past retention.finished, in small batches with pauses."""
        retention = self.retention
        total = 0
        while True:
            deleted = await self.store.purge_finished(retention.finished, retention.batch)
            total += deleted
            if deleted < retention.batch:
                break
            await asyncio.sleep(0.05)  # small batches, room for the real work in between
        if total:
            log.info("jobs_purged", count=total, older_than_s=retention.finished)
        return total
