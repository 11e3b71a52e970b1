"""Leading by a PostgreSQL advisory lock: one instance at a time does a duty (schedules,
maintenance), and another takes over when the leader's lock connection is gone.

A follower asks every ``retry_every`` (jittered, so instances started together spread out);
the store answers "held" from pg_locks through its pool, opening a dedicated connection
only when the lock looks free. Takeover after a leader dies: PostgreSQL frees the lock when
the leader's connection ends (at once for a crashed process; a vanished host's connection
ends when the server notices, by TCP keepalive), then within 1.25 x ``retry_every`` plus
one connect. A leader that is frozen rather than dead (SIGSTOP, a paused VM) loses the lock
once it has not pinged for LOCK_IDLE_TIMEOUT: the server ends its connection. While the
store is unavailable a follower backs off exponentially up to OUTAGE_MAX seconds, and logs
once per outage, not once per attempt.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Protocol

import structlog

from jobwire.store.base import LeaderLock, StoreUnavailable

log = structlog.get_logger("jobwire.leadership")

# How often a leader checks that its lock's connection is still there.
PING_EVERY = 2.0
# A leader that has not pinged for this long loses its lock (the store ends its connection):
# a frozen leader (SIGSTOP, a paused VM, a stalled event loop) kept the lock, and no
# schedule fired, for as long as it stayed frozen. Pings run beside the duty, so a slow
# duty (thousands of schedules due at once) does not lose it.
LOCK_IDLE_TIMEOUT = 10.0
JITTER = 0.25  # each wait is drawn from (1 +- JITTER) x its nominal length
OUTAGE_MAX = 30.0  # seconds: the longest wait between attempts while the store is away


class TryLock(Protocol):
    """A store's try_leadership."""

    def __call__(
        self, key: str, *, idle_timeout: float | None = None
    ) -> Awaitable[LeaderLock | None]:
        """The lock ``key`` if free (see ScheduleStore.try_leadership)."""
        ...


def jittered(seconds: float) -> float:
    """``seconds`` give or take JITTER of it."""
    return seconds * random.uniform(1 - JITTER, 1 + JITTER)


class Leader:
    """Takes the lock ``key`` when free and runs ``duty`` every ``check_every`` while it
    holds it; logs ``<name>_leading``, ``<name>_lock_lost``, ``<name>_leadership_released``
    and ``<name>_store_unavailable`` (once per outage)."""

    def __init__(
        self,
        name: str,
        try_lock: TryLock,
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
        self.attempts = 0  # calls of try_lock (tests count them)

    async def run(self) -> None:
        """Try to lead; lead until the lock's connection is lost; try again (until cancelled)."""
        outage_wait: float | None = None  # set while the store is unavailable
        while True:
            self.attempts += 1
            try:
                lock = await self._try_lock(self.key, idle_timeout=LOCK_IDLE_TIMEOUT)
            except StoreUnavailable as exc:
                if outage_wait is None:
                    log.warning(f"{self.name}_store_unavailable", error=str(exc))
                    outage_wait = self.retry_every
                else:
                    outage_wait = min(outage_wait * 2, max(OUTAGE_MAX, self.retry_every))
                await asyncio.sleep(jittered(outage_wait))
                continue
            if outage_wait is not None:
                log.info(f"{self.name}_store_available")
                outage_wait = None
            if lock is None:
                await asyncio.sleep(jittered(self.retry_every))
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
        stop = asyncio.Event()
        duties = asyncio.create_task(self._duties(stop), name=f"jobwire-{self.name}-duty")
        try:
            while not duties.done():
                await asyncio.wait({duties}, timeout=PING_EVERY)
                if not duties.done() and not await lock.still_held():
                    log.warning(f"{self.name}_lock_lost")
                    # The pass under way ends first: cut off inside a transaction, it left
                    # an error in the log ("Resetting connection with an active transaction").
                    stop.set()
                    await asyncio.wait({duties}, timeout=LOCK_IDLE_TIMEOUT)
                    return
            duties.result()  # _duties returns only when stopped: this raises what ended it
        finally:
            if not duties.done():
                duties.cancel()
                await asyncio.gather(duties, return_exceptions=True)

    async def _duties(self, stop: asyncio.Event) -> None:
        down = False
        failing = False
        while not stop.is_set():
            try:
                await self._duty()
            except StoreUnavailable as exc:
                if not down:  # once per outage: the duty runs every check_every
                    log.warning(f"{self.name}_store_unavailable", error=str(exc))
                down = True
            except Exception:
                # A duty that raised used to end the leader's task, with the lock let go
                # and nothing logged: no schedule fired again until a restart, where it
                # raised again. Logged once per run of failures; the next check tries again.
                if not failing:
                    log.exception(f"{self.name}_duty_failed")
                failing = True
            else:
                if down:
                    log.info(f"{self.name}_store_available")
                down = failing = False
            await asyncio.sleep(self.check_every)
