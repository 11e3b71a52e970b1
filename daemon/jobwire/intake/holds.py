"""Why a source is not taking messages (the store is out, the backlog is high), and the
wait for the store to answer again."""

from __future__ import annotations

import contextlib
import time
from typing import Any

from jobwire.backoff import Backoff
from jobwire.intake.ports import Settler
from jobwire.store.base import JobStore, StoreUnavailable


class Holds:
    """The reasons one source is paused for; it goes on once none is left."""

    def __init__(self, settler: Settler, store: JobStore, log: Any) -> None:
        self._settler = settler
        self._store = store
        self._log = log
        self._reasons: set[str] = set()

    @property
    def reasons(self) -> list[str]:
        """Why the source is not taking messages now (store, backlog); empty: it is."""
        return sorted(self._reasons)

    async def hold(self, reason: str) -> None:
        """Stop the source taking messages, for ``reason`` (store, backlog)."""
        first = not self._reasons
        self._reasons.add(reason)
        if first:
            self._log.info("intake_held", reason=reason)
            await self._settler.pause()

    async def release(self, reason: str) -> None:
        """Drop one reason; the source goes on once no reason is left."""
        if reason not in self._reasons:
            return
        self._reasons.discard(reason)
        if not self._reasons:
            self._log.info("intake_released", reason=reason)
            await self._settler.resume()

    async def until_store_answers(self) -> None:
        """Hold the source for "store" until the store answers a ping."""
        await self.hold("store")
        started = time.monotonic()
        # A ping is cheap and local: exact delays, no jitter.
        backoff = Backoff(initial=0.1, maximum=2.0, jitter="none")
        while True:
            await backoff.sleep()
            with contextlib.suppress(StoreUnavailable):
                await self._store.ping()
                break
        self._log.info("intake_store_back", paused_for=round(time.monotonic() - started, 3))
        await self.release("store")
