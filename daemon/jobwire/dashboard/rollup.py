"""The throughput rollup: once a minute, the leader counts the jobs finished in the minutes
since its last run (through the jobs_finished index) into throughput_minutes, which the
overview's sparklines read, and fingerprints failed rows kept from before migration 0010.
Off the jobs' own path: completions write nothing more."""

from __future__ import annotations

import asyncio
import time

import structlog

from jobwire.store.base import LeaderLock, OperatorStore, StoreUnavailable

log = structlog.get_logger("jobwire.dashboard")

LOCK_KEY = "jobwire-dashboard-rollup"  # the schema follows: one rollup per jobwire schema
BACKFILL_BATCH = 1000  # failed rows fingerprinted per statement (short transactions)
BACKFILL_BATCHES = 50  # at most this many a minute: the rest waits for the next run
AFTER_MINUTE = 6.0  # seconds past each whole minute: its last completions have committed


class Rollup:
    """A task that rolls up each minute on the instance holding the rollup lock."""

    def __init__(self, store: OperatorStore, schema: str = "jobwire") -> None:
        self.store = store
        self.lock_key = f"{LOCK_KEY}:{schema}"
        self._lock: LeaderLock | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin (rolls up once at once, then after every minute)."""
        self._task = asyncio.create_task(self._run(), name="jobwire-dashboard-rollup")

    async def stop(self) -> None:
        """Stop, and give the lock up."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=5)
        if self._lock is not None:
            try:
                await self._lock.release()
            except StoreUnavailable:
                pass

    async def once(self) -> int:
        """One rollup if this instance leads (taking the lock if free); rows written."""
        if self._lock is not None and not await self._lock.still_held():
            self._lock = None
        if self._lock is None:
            self._lock = await self.store.try_leadership(self.lock_key)
            if self._lock is None:
                return 0
        written = await self.store.rollup_throughput()
        await self.backfill()
        return written

    async def backfill(self) -> int:
        """Fingerprint failed rows kept from before migration 0010, a batch at a time."""
        done = 0
        for _ in range(BACKFILL_BATCHES):
            n = await self.store.backfill_fingerprints(BACKFILL_BATCH)
            done += n
            if n < BACKFILL_BATCH:
                break
            await asyncio.sleep(0)  # let the daemon's other tasks in between batches
        if done:
            log.info("dashboard_fingerprints_backfilled", rows=done)
        return done

    async def _run(self) -> None:
        while True:
            try:
                await self.once()
            except StoreUnavailable as exc:
                log.warning("dashboard_rollup_failed", error=str(exc))
            except Exception:  # never a dead task: the next minute tries again
                log.exception("dashboard_rollup_crashed")
            await asyncio.sleep(60.0 - time.time() % 60.0 + AFTER_MINUTE)
