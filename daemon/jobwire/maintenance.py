"""Leader-only maintenance: the retention purge of old finished jobs.

One instance leads, by an advisory lock of its own (see PostgresStore.try_leadership):
the lock lasts as long as its connection, so a dead leader is replaced within
``retry_every``. Lease rescue is not here but on every instance (worker/leases.py): a
frozen leader keeps its lock, and its own expired leases would then never be rescued.
"""

from __future__ import annotations

import asyncio

import structlog

from jobwire.config import RetentionConfig
from jobwire.leadership import Leader
from jobwire.store.base import MaintenanceStore, PurgeCursor

log = structlog.get_logger("jobwire.maintenance")


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
        self._next_purge: float | None = None
        self._leader = Leader(
            "maintenance",
            store.try_leadership,
            self.lock_key,
            self._due,
            retry_every=retry_every,
            check_every=check_every,
        )
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start trying to lead."""
        self._task = asyncio.create_task(self.run(), name="jobwire-maintenance")

    async def stop(self) -> None:
        """Stop; a leader releases its lock (closes its connection) on the way out."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=5)

    @property
    def leading(self) -> bool:
        """True while this instance holds the maintenance lock."""
        return self._leader.leading

    async def run(self) -> None:
        """Try to lead; while leading, purge when due; until cancelled."""
        await self._leader.run()

    async def _due(self) -> None:
        # Not in the first seconds of a start-up, when the daemon has more urgent work.
        loop = asyncio.get_running_loop()
        if self._next_purge is None:
            self._next_purge = loop.time() + self.first_purge_after
        if loop.time() >= self._next_purge:
            self._next_purge = loop.time() + self.retention.every
            await self.purge()

    async def purge(self) -> int:
        """Delete finished jobs past retention.finished, in small batches with pauses."""
        retention = self.retention
        total = 0
        cursor = PurgeCursor()  # each batch reads on from the last one's end
        while True:
            deleted = await self.store.purge_finished(retention.finished, retention.batch, cursor)
            total += deleted
            if deleted < retention.batch:
                break
            await asyncio.sleep(0.05)  # small batches, room for the real work in between
        if total:
            log.info("jobs_purged", count=total, older_than_s=retention.finished)
        await self._purge_outbox()
        return total

    async def _purge_outbox(self) -> None:
        """Delete sent outbox rows past retention.outbox_sent, in the same small batches."""
        retention = self.retention
        sent = 0
        while True:
            deleted = await self.store.purge_outbox(retention.outbox_sent, retention.batch)
            sent += deleted
            if deleted < retention.batch:
                break
            await asyncio.sleep(0.05)
        if sent:
            log.info("outbox_purged", count=sent, older_than_s=retention.outbox_sent)
