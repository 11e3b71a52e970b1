"""The worker pool: the claimer, executor, completer and lease keeper over one shared slot
count, and the direct hand-off from the intake."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from jobwire import __version__
from jobwire.config import Config
from jobwire.handlers import HandlerRegistry
from jobwire.models import Job, Outcome
from jobwire.retry import Backoff, HandlerDefaults
from jobwire.store.base import JobStore
from jobwire.waiting import wait_until
from jobwire.worker.claimer import Claimer
from jobwire.worker.completer import Completer
from jobwire.worker.executor import Executor
from jobwire.worker.leases import LeaseKeeper
from jobwire.worker.outcomes import OutcomeBuilder
from jobwire.worker.state import PoolCounters, PoolState, bounded, log, make_worker_id


class WorkerPool:
    """Runs jobs from a JobStore with whole-pool and per-queue concurrency limits."""

    name = "pool"

    def __init__(
        self,
        store: JobStore,
        registry: HandlerRegistry,
        config: Config,
        worker_id: str | None = None,
        *,
        on_outcome: Callable[[Job, Outcome], None] | None = None,
        on_start: Callable[[Job], None] | None = None,
        on_written: Callable[[set[str]], None] | None = None,
        replies: Mapping[str, str] | None = None,
        extra_state: Callable[[], dict[str, Any]] = dict,
    ) -> None:
        self.store = store
        self.registry = registry
        self.config = config
        self.worker_id = worker_id or make_worker_id()
        self.state = PoolState(config, self.worker_id)
        self.completer = Completer(self.state, store, on_outcome, on_written, replies)
        self.executor = Executor(
            self.state,
            store,
            registry,
            OutcomeBuilder(Backoff.from_config(config.retry), HandlerDefaults.from_config(config)),
            self.completer.record,
            on_start,
        )
        self.claimer = Claimer(self.state, store, self.executor.start_job, self.executor.cancel)
        self.leases = LeaseKeeper(self.state, store, self.executor, self.completer, extra_state)

    @property
    def counters(self) -> PoolCounters:
        """In-process counts (stats, metrics, tests)."""
        return self.state.counters

    def wake(self) -> None:
        """Claim now: called after a local insert and on every notification."""
        self.state.wake.set()

    # -- direct hand-off: intake inserts jobs already running here, skipping the claim --

    def reserve(self, queue: str, wanted: int) -> int:
        """Slots for jobs being inserted right now; 0 while older ready work is waiting."""
        state = self.state
        if (
            state.stopping.is_set()
            or queue in state.backlog
            or state.reconciling
            or queue not in state.limits
            or not state.flow.direct_ok(queue)
        ):
            return 0
        free_total, free_in = state.free_total(), state.free_in(queue)
        granted = max(0, min(wanted, free_total, free_in))
        if granted < wanted:
            # The rest are stored as ready: they are older than whatever comes next, in
            # this queue, and in every queue when the whole pool was the limit.
            state.mark_backlog({queue} if free_in < free_total else set(state.queues))
        if granted:
            state.reserved[queue] = state.reserved.get(queue, 0) + granted
            state.reserved_total += granted
        return granted

    def room(self, queue: str) -> int | None:
        """How many jobs of ``queue`` the pool would start straight from the intake now; 0:
        none until a slot frees or older ready jobs are claimed; None: none at all (the
        pool is stopping, the queue is paused or has a rate, only the claim starts those)."""
        state = self.state
        if (
            not (state.alone or queue in state.paced_beside)
            or state.workers.hand_off_wait <= 0
            or state.stopping.is_set()
            or queue not in state.limits
            or not state.flow.direct_ok(queue)
        ):
            return None
        if queue in state.backlog or state.reconciling or state.orphans_possible:
            return 0
        return max(0, min(state.free_total(), state.free_in(queue)))

    @property
    def hand_off_wait(self) -> float:
        """How long a delivery may wait for a free slot at most (0: never)."""
        return self.state.workers.hand_off_wait

    async def wait_room(self, queue: str, timeout: float) -> int | None:
        """``room(queue)`` once it is not 0, or 0 after ``timeout`` seconds."""
        if await wait_until(self.state.room_changed, lambda: self.room(queue) != 0, timeout):
            return self.room(queue)
        return 0

    @property
    def limited_handlers(self) -> frozenset[str]:
        """Handlers with a rate limit: their jobs never start straight from the intake."""
        return self.state.flow.limited_handlers

    def unreserve(self, queue: str, count: int) -> None:
        """Return reserved slots (used or not) after the insert."""
        state = self.state
        state.reserved[queue] = state.reserved.get(queue, 0) - count
        state.reserved_total -= count
        if state.backlog and state.free_total() > 0:
            # Fewer started than reserved (duplicates, a split batch): the claim may use
            # those slots now, not at the next poll.
            state.wake.set()
        state.note_settled()

    def orphans_possible(self) -> None:
        """An insert of directly started jobs failed unseen: look for rows left running."""
        self.state.orphans_possible = True

    def direct_start(self) -> tuple[str, float]:
        """Worker id and lease to insert directly started jobs with."""
        return self.worker_id, self.config.workers.lease

    def start_inserted(self, job: Job, sent: float | None = None) -> None:
        """Run a job the intake inserted as running in this worker (its slot was reserved);
        ``sent``: when the insert was sent (monotonic), where its lease began at the latest."""
        self.state.counters.direct += 1
        # The lease is counted from when the insert was sent, not from its answer: a slow
        # commit or a freeze in between must not let this worker believe in a lease that
        # another instance may already have taken back.
        self.executor.start_job(job, time.monotonic() if sent is None else sent)

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Register this instance and start the pool's parts."""
        await self.store.register_worker(
            self.worker_id, socket.gethostname(), os.getpid(), __version__, self.leases.state_now()
        )
        await self.leases.count_instances()
        structlog.contextvars.bind_contextvars(worker=self.worker_id)
        await self.executor.start()
        await self.claimer.start()
        await self.completer.start()
        await self.leases.start()
        log.info(
            "pool_started",
            concurrency=self.config.workers.concurrency,
            queues=self.state.limits,
            handlers=self.registry.names(),
        )

    async def stop(self) -> None:
        """Graceful stop: no new claims, let jobs finish, give the rest back, flush outcomes."""
        state = self.state
        if state.stopping.is_set():
            return
        state.stopping.set()
        state.wake.set()
        state.room_changed.set()
        # Leases are still renewed while the jobs finish; every store step below is
        # bounded: a stop must end even when the store does not answer (leases then
        # expire and other instances take the jobs back).
        leftovers = await self.executor.stop()
        await self.completer.stop()
        if leftovers:
            ids = [r.job.id for r in leftovers]
            released = await bounded("release jobs", self.store.release(self.worker_id, ids), 10)
            if released is not None:
                log.info("jobs_released", count=len(released), job_ids=released)
        await asyncio.gather(self.claimer.stop(), self.leases.stop())
        await bounded("unregister worker", self.store.unregister_worker(self.worker_id), 5)
        log.info("pool_stopped", **state.counters.as_dict())

    def store_trouble(self) -> str | None:
        """What the pool's statements have failed with for over a second, if they have."""
        return self.state.store_trouble()

    def figures(self) -> dict[str, int]:
        """Counters and the number of jobs running now (stats and metrics)."""
        return self.state.figures()

    def describe(self) -> dict[str, Any]:
        """This pool's id and figures."""
        return {"worker": self.worker_id, **self.figures()}
