"""The flow controls one pool obeys: paused queues and queues with keyed jobs (re-read from
the store every poll), queue and handler rates (from the config), and the wake-up when a
rate held jobs back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import structlog

from jobwire.config import Config
from jobwire.limits import Rate, make_rate
from jobwire.store.base import ClaimFlow, FlowState, JobStore, QueueFlow, StoreUnavailable

log = structlog.get_logger("jobwire.worker")

# Every how many reads of the flow state one looks at whole queues (see refresh).
FULL_LOOK_EVERY = 5


class FlowControls:
    """What the claimer and the direct hand-off ask before starting a job."""

    def __init__(self, config: Config, queues: Sequence[str], wake: asyncio.Event) -> None:
        self.queues = list(queues)
        self.poll_interval = config.workers.poll_interval
        self.queue_rates: dict[str, Rate] = {}
        self.settings: dict[str, QueueFlow] = {}
        for q in self.queues:
            qc = config.queue(q)
            rate = make_rate(qc.rate, qc.burst) if qc.rate is not None else None
            if rate is not None:
                self.queue_rates[q] = rate
            self.settings[q] = QueueFlow(qc.key_concurrency, qc.ordered, rate)
        self.handler_rates = {
            name: make_rate(limit.rate, limit.burst)
            for name, limit in config.handler_limits.items()
        }
        self.limited_handlers = frozenset(self.handler_rates)
        self.state = FlowState()
        self._wake = wake
        self._next_read = 0.0
        self._reads = 0
        self._timer: asyncio.TimerHandle | None = None
        self._due = 0.0

    @property
    def paused(self) -> frozenset[str]:
        """Queues paused by an operator, as last read."""
        return self.state.paused

    @property
    def active(self) -> bool:
        """Whether keyed jobs wait (then every written outcome may let one start: wake the
        claimer after it; a rate's next token wakes it by a timer instead)."""
        return bool(self.state.keyed)

    def direct_ok(self, queue: str) -> bool:
        """Whether jobs of ``queue`` may start straight from the intake (not paused, no
        queue rate: those go through the claim, which counts them)."""
        return queue not in self.state.paused and queue not in self.queue_rates

    def reread_soon(self) -> None:
        """An operator changed a control (a notification): read them before the next claim."""
        self._next_read = 0.0
        self._wake.set()

    async def refresh(self, store: JobStore) -> None:
        """Re-read paused, keyed and limited queues if a poll interval has passed since the
        last read; the last known state stays while the store does not answer."""
        at = time.monotonic()
        if at < self._next_read:
            return
        self._next_read = at + self.poll_interval
        # A full look reads a queue without keyed or rate-limited jobs to its end; the looks
        # between read a bounded head and may only add to what the last full one found, so
        # a queue leaves the flow path only when a full look says so.
        full = self._reads % FULL_LOOK_EVERY == 0
        self._reads += 1
        try:
            state = await store.flow_state(self.queues, self.limited_handlers, full)
        except StoreUnavailable:
            self._reads = 0  # look fully once the store is back
            return  # the claim that follows reports the outage
        if not full:
            state = FlowState(
                state.paused, state.keyed | self.state.keyed, state.limited | self.state.limited
            )
        if state.paused != self.state.paused:
            log.info("queues_paused", queues=sorted(state.paused))
        self.state = state

    def claim_flow(self) -> ClaimFlow | None:
        """The flow part of the next claim; None when nothing here is limited (the fast
        claim alone, exactly as without flow controls).

        A queue with a rate, keyed jobs or jobs of a rate-limited handler waiting is
        claimed wholly by the flow claim: the fast claim would walk past every such job
        to find none (it never takes them, whatever this says)."""
        flowing = self.state.keyed | self.state.limited
        queues = {q: s for q, s in self.settings.items() if q in self.queue_rates or q in flowing}
        if not queues and not self.handler_rates:
            return None
        return ClaimFlow(queues, self.handler_rates, self.throttled)

    def throttled(self, seconds: float) -> None:
        """A rate held jobs back: claim again when its next token is due."""
        loop = asyncio.get_running_loop()
        due = loop.time() + seconds
        if self._timer is not None and loop.time() < self._due <= due:
            return  # an earlier wake-up is already set
        if self._timer is not None:
            self._timer.cancel()
        self._due = due
        self._timer = loop.call_at(due, self._wake.set)
