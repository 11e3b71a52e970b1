"""Flow control: a backlog of ready jobs holds the sources, so a flood waits in the broker."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import structlog

from jobwire.intake import Intake
from jobwire.store.base import JobStore, StoreUnavailable

log = structlog.get_logger("jobwire.flow")


class BacklogGate:
    """Holds every intake above ``high`` ready jobs and releases them at or below ``low``.

    ``intakes`` may be a callable: the intakes are built after the gate, since each takes
    the gate's ``note_stored`` at construction.
    """

    name = "backlog gate"

    def __init__(
        self,
        store: JobStore,
        intakes: Sequence[Intake] | Callable[[], Sequence[Intake]],
        high: int,
        low: int,
        interval: float = 1.0,
    ) -> None:
        self.store = store
        self._intakes = intakes
        self.high = high
        self.low = low
        self.interval = interval
        self.holding = False
        self.last_backlog = 0
        self._stored_since_check = 0
        self._checking: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def intakes(self) -> list[Intake]:
        """The intakes this gate holds and releases."""
        intakes = self._intakes
        return list(intakes() if callable(intakes) else intakes)

    async def start(self) -> None:
        """Start checking every ``interval``."""
        self._task = asyncio.create_task(self.run(), name="jobwire-backlog")

    async def stop(self) -> None:
        """Stop checking."""
        for task in (self._task, self._checking):
            if task is not None:
                task.cancel()
                await asyncio.wait({task}, timeout=5)

    def note_stored(self, count: int) -> None:
        """Intake stored ``count`` jobs: check at once if that may have crossed the mark.

        Polling alone is too coarse: intake stores thousands of jobs a second.
        """
        self._stored_since_check += count
        crossed = self.last_backlog + self._stored_since_check > self.high
        if crossed and not self.holding and (self._checking is None or self._checking.done()):
            self._checking = asyncio.create_task(self._check_quietly())

    async def _check_quietly(self) -> None:
        try:
            await self.check()
        except StoreUnavailable:
            pass

    async def check(self) -> None:
        """Measure once and hold or release the sources (with hysteresis between the marks)."""
        self._stored_since_check = 0
        backlog = await self.store.ready_backlog(self.high + 1)
        self.last_backlog = backlog
        if not self.holding and backlog > self.high:
            self.holding = True
            log.warning("backlog_high", ready=f">{self.high}", resume_at=self.low)
            await asyncio.gather(*(i.hold("backlog") for i in self.intakes))
        elif self.holding and backlog <= self.low:
            self.holding = False
            log.info("backlog_normal", ready=backlog)
            await asyncio.gather(*(i.release("backlog") for i in self.intakes))

    async def run(self) -> None:
        """Check every ``interval`` until cancelled."""
        while True:
            try:
                await self.check()
            except StoreUnavailable:
                pass  # the intakes hold themselves while the store is away
            await asyncio.sleep(self.interval)
