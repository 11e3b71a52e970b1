"""What the pool's parts share: slot accounting, the jobs running here, their leases and
unwritten outcomes, the wake and stop signals, and whether the store answers."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import os
import socket
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

from jobwire.config import Config
from jobwire.handlers import JobContext
from jobwire.models import Job, Outcome
from jobwire.store.base import StoreUnavailable
from jobwire.worker.controls import FlowControls

log = structlog.get_logger("jobwire.worker")
T = TypeVar("T")


def make_worker_id() -> str:
    """A unique, readable id for this instance: host, pid and a random suffix."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass(slots=True)
class Running:
    """One attempt running here: its job, task and context, and why it is being stopped."""

    job: Job
    task: asyncio.Task[None]
    ctx: JobContext
    stop_reason: str | None = None  # "cancelled" | "lease_lost" | "shutdown"
    timeout_at: float | None = None  # when its timeout ends (monotonic), if it has one
    overdue_named: float = 0.0  # seconds past its timeout when last logged as ignoring it


@dataclass
class PoolCounters:
    """In-process counts for logs, stats and metrics."""

    claimed: int = 0
    succeeded: int = 0
    retried: int = 0
    failed: int = 0
    cancelled: int = 0
    claims: int = 0
    direct: int = 0
    completion_batches: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counts as published (claimed excludes the jobs handed over directly)."""
        return {
            "succeeded": self.succeeded,
            "failed": self.failed,
            "retried": self.retried,
            "cancelled": self.cancelled,
            "claims": self.claims,
            "claimed": self.claimed - self.direct,
            "direct": self.direct,
            "completion_batches": self.completion_batches,
        }


class PoolState:
    """The slots, jobs, leases and outcomes the claimer, executor, completer and lease
    keeper share; slots are counted per queue and for the whole pool."""

    def __init__(self, config: Config, worker_id: str) -> None:
        self.config = config
        self.workers = config.workers
        self.worker_id = worker_id
        self.counters = PoolCounters()
        self.queues = config.queue_names()
        self.limits = {
            q: min(
                config.queue(q).concurrency or self.workers.concurrency, self.workers.concurrency
            )
            for q in self.queues
        }
        self.busy = dict.fromkeys(self.queues, 0)
        self.reserved: dict[str, int] = {}
        self.reserved_total = 0
        self.running: dict[int, Running] = {}
        # Threads of attempts already ended (timed out, stopped) that have not returned yet:
        # each keeps its slot, or more threads would run than the pool's concurrency.
        self.lingering: set[concurrent.futures.Future[Any]] = set()
        # Handlers of the jobs started since the lease timer last fired: what may have
        # blocked the event loop, should the timer fire late.
        self.started_lately: collections.deque[str] = collections.deque(maxlen=32)
        # Finished attempts whose outcome is not written yet, oldest first; the first
        # ``flushing`` of them are being written right now (never dropped).
        self.outcomes: list[Outcome] = []
        self.flushing = 0
        # Every attempt whose lease this pool holds (running here, or its outcome not yet
        # written), (job id, attempt) -> until when the lease is known good: the send time
        # of the claim or of the last renewal that returned it, plus the lease (the database
        # counts from a moment later). Kept by monotonic time, which runs on while the
        # process is frozen (SIGSTOP): a thawed pool sees at once what it can no longer hold.
        self.leases: dict[tuple[int, int], float] = {}
        self.wake = asyncio.Event()
        self.stopping = asyncio.Event()
        # Queues whose ready jobs wait in the database and this pool could not take (a claim
        # came back full, the queue is at its limit, or the intake inserted more than the
        # pool had room for): until a claim comes back short, the intake hands none of that
        # queue's jobs over directly, so older jobs go first.
        self.backlog: set[str] = set()
        # Queues marked while a claim was in flight: its answer must not erase them.
        self.marked_in_claim: set[str] = set()
        # Set whenever room for the intake may have opened (a slot freed, a reservation
        # returned, a backlog cleared, the pool stopping): a pacing intake waits on it.
        self.room_changed = asyncio.Event()
        # An insert of directly started jobs, or a claim, failed with its answer lost: rows
        # may be running under this worker with no task. Set until they are given back;
        # while that runs, nothing new is claimed or handed over (see LeaseKeeper).
        self.orphans_possible = False
        self.reconciling = False
        # No other instance has a live heartbeat on this database (read at start and at each
        # upkeep): only then may the intake hold a batch for this pool (see WorkerPool.room),
        # or for the queues in paced_beside, which the others get as this one does (fleet.py).
        self.alone = False
        self.paced_beside: frozenset[str] = frozenset()
        self.claiming = False
        self.settled = asyncio.Event()  # set when no claim or hand-over is in flight
        self._store_down_since: float | None = None
        self._store_error = ""
        self.flow = FlowControls(config, self.queues, self.wake)

    # -- slots ----------------------------------------------------------------------

    def free_total(self) -> int:
        """Slots free in the whole pool."""
        # Outcomes not yet written hold their slot once they pass a batch: when the store
        # writes more slowly than handlers finish, the pool slows down instead of piling up
        # finished-but-unrecorded jobs in memory. The batch being written is not counted:
        # with it, a busy pool had no slot left while a completion was in flight, and the
        # claim waited for it instead of overlapping it (bench/noop_throughput.py). A store
        # that fails sets ``flushing`` back to 0, so its outcomes hold their slots again.
        waiting = len(self.outcomes) - self.flushing
        unwritten = max(0, waiting - self.workers.completion_batch)
        return (
            self.workers.concurrency
            - len(self.running)
            - len(self.lingering)
            - self.reserved_total
            - unwritten
        )

    def free_in(self, queue: str) -> int:
        """Slots free in one queue, not counting the whole pool's limit."""
        return self.limits[queue] - self.busy[queue] - self.reserved.get(queue, 0)

    def free_slots(self) -> tuple[dict[str, int], int]:
        """Free slots per queue (each capped by the pool's) and in the whole pool; none in a
        paused queue."""
        free_total = self.free_total()
        paused = self.flow.paused
        per_queue = {
            q: 0 if q in paused else max(0, min(self.free_in(q), free_total)) for q in self.queues
        }
        return per_queue, free_total

    def take_slot(self, queue: str) -> None:
        """A job of ``queue`` starts running here."""
        self.busy[queue] = self.busy.get(queue, 0) + 1

    def free_slot(self, queue: str) -> None:
        """A job of ``queue`` (or its thread) is done with its slot."""
        self.busy[queue] = max(0, self.busy.get(queue, 1) - 1)
        self.room_changed.set()
        if self.backlog:
            self.wake.set()

    def mark_backlog(self, queues: set[str]) -> None:
        """Older ready jobs of ``queues`` wait in the database: no hand-over past them."""
        self.backlog |= queues
        if self.claiming:
            self.marked_in_claim |= queues

    def note_settled(self) -> None:
        """Set ``settled`` once no claim and no hand-over is in flight."""
        self.room_changed.set()
        if not self.claiming and self.reserved_total <= 0:
            self.settled.set()

    def figures(self) -> dict[str, int]:
        """Counters and the number of jobs running now."""
        return {**self.counters.as_dict(), "running": len(self.running)}

    # -- the store's health ---------------------------------------------------------

    def store_failed(self, what: str, exc: Exception) -> None:
        """Note (and log, the first time) that the store did not answer."""
        self._store_error = f"{what}: {exc}"
        if self._store_down_since is None:
            self._store_down_since = time.monotonic()
            log.error("store_unavailable", operation=what, error=str(exc))

    def store_trouble(self, after: float = 1.0) -> str | None:
        """The pool's last store failure, while none of its statements has succeeded since
        and for over ``after`` seconds; None otherwise. A database that answers a ping and
        refuses every write (read-only, a full disk) is down for /readyz too."""
        since = self._store_down_since
        if since is None or time.monotonic() - since < after:
            return None
        return self._store_error

    async def store_down(self, what: str, exc: Exception) -> None:
        """Note the failure and wait a moment before the next try (less when stopping)."""
        self.store_failed(what, exc)
        delay = min(self.workers.poll_interval, 1.0)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self.stopping.wait()

    def store_back(self) -> None:
        """The store answered: log how long it was away, if it was."""
        if self._store_down_since is not None:
            log.info(
                "store_available", down_for=round(time.monotonic() - self._store_down_since, 3)
            )
            self._store_down_since = None


def call_soon_threadsafe(
    loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: Any
) -> None:
    """Hand a callback to the loop from another thread; nothing if the loop is closed."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback, *args)


async def keep_running(
    name: str, loop: Callable[[], Coroutine[Any, Any, None]], first_delay: float = 1.0
) -> None:
    """Run one of the pool's loops; an unexpected error is logged and the loop restarted,
    never left to end the loop silently (a dead claim loop is a daemon that does nothing)."""
    last, repeats, delay = "", 0, first_delay
    while True:
        try:
            await loop()
            return
        except Exception as exc:
            seen = f"{type(exc).__name__}: {exc}"
            if seen != last:
                log.exception("pool_loop_crashed", loop=name)
                last, repeats, delay = seen, 0, first_delay
            else:
                # The same failure again: one line now and then, not a traceback a second
                # (a drill's read-only database wrote hundreds of them a minute).
                repeats += 1
                delay = min(delay * 2, 30 * first_delay)
                if repeats & (repeats - 1) == 0:  # 1, 2, 4, 8, ... repeats
                    log.error("pool_loop_crashed", loop=name, error=seen[:500], repeats=repeats)
            await asyncio.sleep(delay)


async def bounded(step: str, coro: Coroutine[Any, Any, T], seconds: float) -> T | None:
    """Run one shutdown step with a deadline; log and go on if it fails or takes too long."""
    try:
        async with asyncio.timeout(seconds):
            return await coro
    except (TimeoutError, StoreUnavailable) as exc:
        log.error(
            "shutdown_step_failed",
            step=step,
            error=f"{type(exc).__name__}: {exc}",
            note="leases expire and other instances take unfinished jobs back",
        )
        return None
