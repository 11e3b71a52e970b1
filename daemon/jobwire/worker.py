"""The worker pool: claim ready jobs, run their handlers, write outcomes back in batches.

One asyncio task claims, one writes completions, one renews leases, one listens for
notifications. Slots are counted per queue and for the whole pool; a job's lease is
renewed for as long as its handler runs, and a job whose lease this pool could not renew
in time, or that a renewal no longer finds ours, is stopped locally and its outcome never
written, because another instance may already have taken it back. Plain (blocking)
handlers run on the pool's own threads, one per slot; a thread cannot be stopped, so its
slot stays taken until it returns.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import socket
import time
import traceback
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

from jobwire import __version__
from jobwire.config import Config
from jobwire.exceptions import Reject, Retry
from jobwire.handlers import HandlerRegistry, HandlerThreads, JobContext
from jobwire.models import Job, JobStatus, Outcome
from jobwire.retry import Backoff
from jobwire.store.base import ClaimRequest, JobStore, StoreUnavailable
from jobwire.tracing import job_span

log = structlog.get_logger("jobwire.worker")
T = TypeVar("T")

_MAX_ERROR_CHARS = 8000
# How long a stop waits for handler threads still running after their jobs were stopped
# (they were told: ctx.cancelled) before it gives the jobs back and leaves them behind.
_THREAD_GRACE = 5.0


def make_worker_id() -> str:
    """A unique, readable id for this instance: host, pid and a random suffix."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass(slots=True)
class _Running:
    job: Job
    task: asyncio.Task[None]
    ctx: JobContext
    stop_reason: str | None = None  # "cancelled" | "lease_lost" | "shutdown"


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


class WorkerPool:
    """Runs jobs from a JobStore with whole-pool and per-queue concurrency limits."""

    def __init__(
        self,
        store: JobStore,
        registry: HandlerRegistry,
        config: Config,
        worker_id: str | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.config = config
        self.worker_id = worker_id or make_worker_id()
        self.counters = PoolCounters()
        self._backoff = Backoff.from_config(config.retry)
        self._queues = config.queue_names()
        self._limits = {
            q: min(
                config.queue(q).concurrency or config.workers.concurrency,
                config.workers.concurrency,
            )
            for q in self._queues
        }
        # Read once: Config.queue() builds a default QueueConfig (pydantic) per call.
        self._timeouts = {q: config.queue(q).timeout for q in self._queues}
        self._busy = dict.fromkeys(self._queues, 0)
        self._reserved: dict[str, int] = {}
        self._reserved_total = 0
        # An insert of directly started jobs, or a claim, failed with its answer lost: rows
        # may be running under this worker with no task. Set until they are given back;
        # while that runs, nothing new is claimed or handed over (see _give_back_unknown).
        self._orphans_possible = False
        self._reconciling = False
        self._claiming = False
        self._settled = asyncio.Event()  # set when no claim or hand-over is in flight
        self._running: dict[int, _Running] = {}
        self._outcomes: list[Outcome] = []
        self._outcomes_ready = asyncio.Event()
        self._wake = asyncio.Event()
        # Ready jobs wait in the database that this pool could not take (a claim came back
        # full, or the intake inserted more than the pool had room for): until a claim
        # comes back short, the intake hands nothing over directly, so older jobs go first.
        self._backlog = False
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        # Every attempt whose lease this pool holds (running here, or its outcome not yet
        # written), (job id, attempt) -> until when the lease is known good: the send time
        # of the claim or of the last renewal that returned it, plus the lease (the database
        # counts from a moment later). Kept by monotonic time, which runs on while the
        # process is frozen (SIGSTOP): a thawed pool sees at once what it can no longer hold.
        self._leases: dict[tuple[int, int], float] = {}
        self._lease_timer: asyncio.TimerHandle | None = None
        # Outcomes at the head of self._outcomes being written right now (never dropped).
        self._flushing = 0
        self._threads: HandlerThreads | None = None
        # Threads of attempts already ended (timed out, stopped) that have not returned yet:
        # each keeps its slot, or more threads would run than the pool's concurrency.
        self._lingering: set[concurrent.futures.Future[Any]] = set()
        # Told of every attempt's end (metrics: the handler duration histogram).
        self.on_outcome: Callable[[Job, Outcome], None] | None = None
        self._store_down_since: float | None = None
        # More to publish in this instance's workers row (the daemon adds its sources).
        self.extra_state: Callable[[], dict[str, Any]] = dict

    # -- public surface -------------------------------------------------------------

    def wake(self) -> None:
        """Claim now: called after a local insert and on every notification."""
        self._wake.set()

    # -- direct hand-off: intake inserts jobs already running here, skipping the claim --

    def reserve(self, queue: str, wanted: int) -> int:
        """Slots for jobs being inserted right now; 0 while older ready work is waiting."""
        if (
            self._stopping.is_set()
            or self._backlog
            or self._reconciling
            or queue not in self._limits
        ):
            return 0
        free_total = self._free_total()
        free_queue = self._limits[queue] - self._busy[queue] - self._reserved.get(queue, 0)
        granted = max(0, min(wanted, free_total, free_queue))
        if granted < wanted:
            # The rest are stored as ready: they are older than whatever comes next.
            self._backlog = True
        if granted:
            self._reserved[queue] = self._reserved.get(queue, 0) + granted
            self._reserved_total += granted
        return granted

    def unreserve(self, queue: str, count: int) -> None:
        """Return reserved slots (used or not) after the insert."""
        self._reserved[queue] = self._reserved.get(queue, 0) - count
        self._reserved_total -= count
        self._note_settled()

    def _note_settled(self) -> None:
        if not self._claiming and self._reserved_total <= 0:
            self._settled.set()

    def orphans_possible(self) -> None:
        """An insert of directly started jobs failed unseen: look for rows left running."""
        self._orphans_possible = True

    def direct_start(self) -> tuple[str, float]:
        """Worker id and lease to insert directly started jobs with."""
        return self.worker_id, self.config.workers.lease

    def start_inserted(self, job: Job) -> None:
        """Run a job the intake inserted as running in this worker (its slot was reserved)."""
        self.counters.direct += 1
        # Counted from now, a moment after the insert: were the process frozen in between,
        # the renewal due at once after the thaw finds whether the job is still ours.
        self._start(job, time.monotonic())

    async def start(self) -> None:
        """Register this instance and start the pool's tasks."""
        await self.store.register_worker(
            self.worker_id, socket.gethostname(), os.getpid(), __version__
        )
        structlog.contextvars.bind_contextvars(worker=self.worker_id)
        self._threads = HandlerThreads(self.config.workers.concurrency)
        self._tasks = [
            asyncio.create_task(_keep_running("claim", self._claim_loop), name="jobwire-claim"),
            asyncio.create_task(
                _keep_running("complete", self._completion_loop), name="jobwire-complete"
            ),
            asyncio.create_task(_keep_running("lease", self._lease_loop), name="jobwire-lease"),
        ]
        if self.config.workers.listen:
            self._tasks.append(
                asyncio.create_task(
                    _keep_running("listen", lambda: self.store.listen(self._on_notify, self.wake)),
                    name="jobwire-listen",
                )
            )
        log.info(
            "pool_started",
            concurrency=self.config.workers.concurrency,
            queues=self._limits,
            handlers=self.registry.names(),
        )

    async def stop(self) -> None:
        """Graceful stop: no new claims, let jobs finish, give the rest back, flush outcomes."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._wake.set()
        timeout = self.config.workers.shutdown_timeout
        if self._running:
            log.info("pool_draining", running=len(self._running), timeout=timeout)
            tasks = [r.task for r in self._running.values()]
            await asyncio.wait(tasks, timeout=timeout)
        leftovers = list(self._running.values())
        for running in leftovers:
            running.stop_reason = "shutdown"
            running.ctx.cancel()
            running.task.cancel()
        if leftovers:
            await asyncio.wait([r.task for r in leftovers])
        await self._wait_for_threads()
        # The completion loop must not flush the same outcomes alongside the final flush; an
        # interrupted write is repeated, and a repeat matches no row (the attempt is done).
        # Every store step below is bounded: a stop must end even when the store does not
        # answer (leases then expire and other instances take the jobs back).
        completer = self._tasks[1]
        completer.cancel()
        await asyncio.wait({completer}, timeout=5)
        await _bounded("flush outcomes", self._flush_outcomes(final=True), 30)
        if leftovers:
            ids = [r.job.id for r in leftovers]
            released = await _bounded("release jobs", self.store.release(self.worker_id, ids), 10)
            if released is not None:
                log.info("jobs_released", count=len(released), job_ids=released)
        for task in self._tasks:
            task.cancel()
        await asyncio.wait(self._tasks, timeout=5)
        if self._lease_timer is not None:
            self._lease_timer.cancel()
        await _bounded("unregister worker", self.store.unregister_worker(self.worker_id), 5)
        log.info("pool_stopped", **self._counts())

    async def _wait_for_threads(self) -> None:
        """Give stopped handlers' threads a moment to return, then let the threads go."""
        if self._lingering:
            await asyncio.wait(
                [asyncio.wrap_future(f) for f in self._lingering], timeout=_THREAD_GRACE
            )
        if self._lingering:
            log.warning(
                "handler_threads_left_running",
                count=len(self._lingering),
                note="plain handlers that ignore ctx.cancelled cannot be stopped",
            )
        if self._threads is not None:
            # Not waiting: a thread stuck for good must not hold up the stop (they are
            # daemon threads, so the exit does not wait for them either).
            self._threads.shutdown(wait=False, cancel_futures=True)

    def figures(self) -> dict[str, int]:
        """Counters and the number of jobs running now (stats and metrics)."""
        return {**self._counts(), "running": len(self._running)}

    def _counts(self) -> dict[str, int]:
        c = self.counters
        return {
            "succeeded": c.succeeded,
            "failed": c.failed,
            "retried": c.retried,
            "cancelled": c.cancelled,
            "claims": c.claims,
            "claimed": c.claimed - c.direct,
            "direct": c.direct,
            "completion_batches": c.completion_batches,
        }

    # -- claiming -------------------------------------------------------------------

    def _on_notify(self, message: str) -> None:
        if message.startswith("cancel:"):
            with contextlib.suppress(ValueError):
                self._cancel_local(int(message.split(":", 1)[1]), "cancelled")
            return
        self._wake.set()

    def _free_total(self) -> int:
        # Outcomes not yet written hold their slot once they pass a batch: when the store
        # writes more slowly than handlers finish, the pool slows down instead of piling up
        # finished-but-unrecorded jobs in memory.
        unwritten = max(0, len(self._outcomes) - self.config.workers.completion_batch)
        return (
            self.config.workers.concurrency
            - len(self._running)
            - len(self._lingering)
            - self._reserved_total
            - unwritten
        )

    def _free_slots(self) -> tuple[dict[str, int], int]:
        free_total = self._free_total()
        per_queue = {
            q: max(0, min(self._limits[q] - self._busy[q] - self._reserved.get(q, 0), free_total))
            for q in self._queues
        }
        return per_queue, free_total

    async def _claim_loop(self) -> None:
        poll = self.config.workers.poll_interval
        while not self._stopping.is_set():
            woken = self._wake.is_set()
            self._wake.clear()
            per_queue, free_total = self._free_slots()
            asked = min(free_total, sum(per_queue.values()))
            if asked > 0 and not self._reconciling:
                sent = time.monotonic()
                self._claiming = True
                try:
                    jobs = await self.store.claim(
                        ClaimRequest(
                            per_queue, free_total, self.worker_id, self.config.workers.lease
                        )
                    )
                    self._store_back()
                except StoreUnavailable as exc:
                    # The claim may have committed with its answer lost.
                    self._orphans_possible = True
                    await self._store_down("claim", exc)
                    continue
                finally:
                    self._claiming = False
                    self._note_settled()
                self.counters.claims += 1
                for job in jobs:
                    self._start(job, sent)
                # A full answer, or a queue at its limit, means more may be waiting: claim
                # again as soon as a slot frees instead of waiting for the next wake.
                # A wake during the claim (an insert it may not have seen) is not counted
                # as a backlog: the loop claims again at once anyway. Counting it (as an
                # earlier version did) kept a busy intake's every batch going the long way,
                # insert then claim, instead of straight to the pool (seen in an AMQP drain
                # of 40,000: 259 jobs handed over, 39,741 claimed).
                self._backlog = len(jobs) >= asked or any(
                    self._busy[q] >= self._limits[q] for q in self._queues
                )
                if self._stopping.is_set():
                    break
            elif woken:
                # Told of ready work (another producer's insert, a retry due) with no slot
                # free: the intake must not hand its jobs every slot that frees past that
                # work. Hold the hand-off until a claim has looked; a finishing job wakes us.
                self._backlog = True
            if not self._wake.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(poll):
                        await self._wake.wait()

    async def _store_down(self, what: str, exc: Exception) -> None:
        now = time.monotonic()
        if self._store_down_since is None:
            self._store_down_since = now
            log.error("store_unavailable", operation=what, error=str(exc))
        delay = min(self.config.workers.poll_interval, 1.0)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._stopping.wait()

    def _store_back(self) -> None:
        if self._store_down_since is not None:
            log.info(
                "store_available", down_for=round(time.monotonic() - self._store_down_since, 3)
            )
            self._store_down_since = None

    # -- running --------------------------------------------------------------------

    def _start(self, job: Job, since: float) -> None:
        """Run a job now held here; its lease began no earlier than ``since`` (monotonic)."""
        if job.id in self._running:
            # Ours again (another instance took it back, then this pool claimed it) while the
            # older attempt still runs here: that attempt's lease is gone.
            self._cancel_local(job.id, "lease_lost", why="claimed_again")
        self.counters.claimed += 1
        self._busy[job.queue] = self._busy.get(job.queue, 0) + 1
        ctx = JobContext(
            job_id=job.id,
            attempt=job.attempts,
            max_attempts=job.max_attempts,
            queue=job.queue,
            handler=job.handler,
            source=job.source,
            headers=job.headers,
            body=job.body,
            content_type=job.content_type,
            _progress_sink=self.store.set_progress,
            _loop=asyncio.get_running_loop(),
        )
        # Unnamed: naming a task costs a Python call per job (1% of the daemon in a profile),
        # and the job id is in every log line the task writes.
        task = asyncio.create_task(self._run(job, ctx))
        self._running[job.id] = _Running(job, task, ctx)
        self._leases[(job.id, job.attempts)] = since + self.config.workers.lease

    async def _run(self, job: Job, ctx: JobContext) -> None:
        # Set by _start before this task's first step.
        mine = self._running[job.id]
        structlog.contextvars.bind_contextvars(job_id=job.id, queue=job.queue)
        timeout = (
            self._timeouts[job.queue]
            if job.queue in self._timeouts
            else self.config.queue(job.queue).timeout
        )
        started = time.monotonic()
        outcome: Outcome | None = None
        try:
            if timeout is None:
                result = await self._invoke(job, ctx)
            else:
                async with asyncio.timeout(timeout) as deadline:
                    result = await self._invoke(job, ctx)
            outcome = self._succeeded(job, result, time.monotonic() - started)
        except Retry as exc:
            outcome = self._retry_or_fail(job, exc.reason, time.monotonic() - started, exc.after)
        except Reject as exc:
            outcome = self._final(job, JobStatus.FAILED, f"rejected: {exc.reason}", started)
        except TimeoutError as exc:
            if timeout is not None and deadline.expired():
                ctx.cancel()
                reason = f"timed out after {timeout}s (queue {job.queue!r} timeout)"
            else:
                reason = _describe(exc)
            outcome = self._retry_or_fail(job, reason, time.monotonic() - started, None)
        except asyncio.CancelledError:
            if mine.stop_reason == "cancelled":
                outcome = self._final(job, JobStatus.CANCELLED, "cancelled by request", started)
            elif mine.stop_reason is None:
                raise
            # "shutdown" and "lease_lost": no outcome; the job is released or taken back.
        except Exception as exc:  # noqa: BLE001 - a handler's failure is data, not a crash
            outcome = self._retry_or_fail(job, _describe(exc), time.monotonic() - started, None)
        finally:
            self._finish(mine)
        # A handler that swallowed the cancellation still returns: with the lease lost, what
        # it returns is not ours to write.
        if outcome is not None and mine.stop_reason != "lease_lost":
            self._record(job, outcome)  # its lease is kept until the outcome is written
        else:
            self._leases.pop((job.id, job.attempts), None)

    async def _invoke(self, job: Job, ctx: JobContext) -> Any:
        with job_span(job):
            return await self.registry.invoke(job.handler, job.payload, ctx, self._threads)

    def _finish(self, mine: _Running) -> None:
        job = mine.job
        if self._running.get(job.id) is mine:
            del self._running[job.id]
        thread = mine.ctx._thread
        if thread is not None and not thread.done():
            # The attempt is over but its thread runs on: the slot (queue and pool) stays
            # taken until the thread returns.
            self._lingering.add(thread)
            loop = asyncio.get_running_loop()
            thread.add_done_callback(
                lambda future: _call_soon_threadsafe(loop, self._thread_returned, job, future)
            )
            return
        self._free_slot(job.queue)

    def _thread_returned(self, job: Job, thread: concurrent.futures.Future[Any]) -> None:
        if thread in self._lingering:
            self._lingering.discard(thread)
            log.info("handler_thread_returned", job_id=job.id, handler=job.handler)
            self._free_slot(job.queue)

    def _free_slot(self, queue: str) -> None:
        self._busy[queue] = max(0, self._busy.get(queue, 1) - 1)
        if self._backlog:
            self._wake.set()

    def _succeeded(self, job: Job, result: Any, duration: float) -> Outcome:
        try:
            result_json = None if result is None else json.dumps(result)
        except (TypeError, ValueError) as exc:
            return Outcome(
                job.id,
                job.attempts,
                JobStatus.FAILED,
                duration,
                error=f"result is not JSON serialisable: {exc}",
            )
        return Outcome(job.id, job.attempts, JobStatus.SUCCEEDED, duration, result_json=result_json)

    def _retry_or_fail(self, job: Job, error: str, duration: float, after: float | None) -> Outcome:
        if job.attempts >= job.max_attempts:
            return Outcome(
                job.id,
                job.attempts,
                JobStatus.FAILED,
                duration,
                error=f"{error} (attempt {job.attempts} of {job.max_attempts})",
            )
        delay = after if after is not None else self._backoff.delay(job.attempts)
        return Outcome(
            job.id, job.attempts, JobStatus.RETRYING, duration, error=error, retry_in=delay
        )

    def _final(self, job: Job, status: JobStatus, error: str, started: float) -> Outcome:
        return Outcome(job.id, job.attempts, status, time.monotonic() - started, error=error)

    def _record(self, job: Job, outcome: Outcome) -> None:
        c = self.counters
        if outcome.status == JobStatus.SUCCEEDED:
            c.succeeded += 1
        elif outcome.status == JobStatus.RETRYING:
            c.retried += 1
            retry_in = outcome.retry_in or 0.0
            if retry_in < self.config.workers.poll_interval:
                # Sooner than the next poll: wake ourselves rather than run it late.
                asyncio.get_running_loop().call_later(retry_in + 0.01, self.wake)
            log.warning(
                "job_retrying",
                job_id=job.id,
                handler=job.handler,
                attempt=job.attempts,
                retry_in=round(outcome.retry_in or 0, 3),
                error=(outcome.error or "").splitlines()[0],
            )
        elif outcome.status == JobStatus.FAILED:
            c.failed += 1
            log.error(
                "job_failed",
                job_id=job.id,
                handler=job.handler,
                attempt=job.attempts,
                error=(outcome.error or "").splitlines()[0],
            )
        else:
            c.cancelled += 1
            log.info("job_cancelled", job_id=job.id, handler=job.handler)
        if self.on_outcome is not None:
            self.on_outcome(job, outcome)
        self._outcomes.append(outcome)
        self._outcomes_ready.set()

    def _cancel_local(
        self, job_id: int, reason: str, why: str | None = None, attempt: int | None = None
    ) -> bool:
        """Stop a job running here (``reason``: cancelled, lease_lost or shutdown); with
        ``attempt``, only that attempt. True if it was stopped now."""
        running = self._running.get(job_id)
        if running is None or (attempt is not None and running.job.attempts != attempt):
            return False
        if running.stop_reason is not None and not (
            # A cancelled job whose lease is then lost must not write "cancelled" either.
            reason == "lease_lost" and running.stop_reason == "cancelled"
        ):
            return False
        running.stop_reason = reason
        running.ctx.cancel()
        running.task.cancel()
        if reason == "lease_lost":
            log.warning(
                "job_lease_lost",
                job_id=job_id,
                handler=running.job.handler,
                attempt=running.job.attempts,
                reason=why,
                note="stopped here; another instance may run it, its outcome is not written",
            )
        else:
            log.info("job_stopping", job_id=job_id, reason=reason)
        return True

    # -- completions ----------------------------------------------------------------

    async def _completion_loop(self) -> None:
        delay = self.config.workers.completion_delay
        while True:
            await self._outcomes_ready.wait()
            # Let a few more outcomes join the batch: one statement for many jobs.
            if len(self._outcomes) < self.config.workers.completion_batch:
                await asyncio.sleep(delay)
            self._outcomes_ready.clear()
            await self._flush_outcomes()

    async def _flush_outcomes(self, final: bool = False) -> None:
        tries = 0
        while self._outcomes:
            batch = self._outcomes[: self.config.workers.completion_batch]
            self._flushing = len(batch)
            try:
                await self.store.complete_many(self.worker_id, batch)
            except StoreUnavailable as exc:
                self._flushing = 0
                tries += 1
                if final and tries >= 5:
                    log.error(
                        "outcomes_unsaved",
                        count=len(self._outcomes),
                        error=str(exc),
                        note="leases will expire and the jobs run again",
                    )
                    return
                if final:
                    await asyncio.sleep(0.5)  # stopping: _store_down would not wait at all
                else:
                    await self._store_down("complete", exc)
                continue
            except BaseException:
                self._flushing = 0
                raise
            self._flushing = 0
            self._store_back()
            self.counters.completion_batches += 1
            del self._outcomes[: len(batch)]
            for o in batch:
                self._leases.pop((o.job_id, o.attempt), None)
            if self._backlog:
                self._wake.set()  # slots held by unwritten outcomes are free again

    # -- leases ---------------------------------------------------------------------

    async def _lease_loop(self) -> None:
        lease = self.config.workers.lease
        interval = min(lease / 3, 10.0)
        self._arm_lease_timer()
        while True:
            # A loop that wakes late (the process was frozen, the loop blocked) may already be
            # past its leases, and another instance may run those jobs by now: stop them
            # before anything else (the timer does too; this covers a timer not yet run).
            self._expire_leases()
            held = self._held()
            sent = time.monotonic()
            try:
                renewal = await self.store.renew_leases(
                    self.worker_id, lease, [job_id for job_id, _ in held]
                )
            except StoreUnavailable as exc:
                if self._store_down_since is None:
                    self._store_down_since = time.monotonic()
                    log.error("store_unavailable", operation="renew leases", error=str(exc))
                # The next try may come too late: stop the jobs one interval before the end.
                self._expire_leases(margin=interval, why="store_unavailable")
                await asyncio.sleep(interval)
                continue
            self._store_back()
            lost = set()
            for pair in held:
                if pair[0] not in renewal.held:
                    lost.add(pair)
                elif pair in self._leases:
                    self._leases[pair] = sent + lease
            self._lease_lost(lost, "not_held")
            # An answer that came after the new lease already ended is no better than none.
            self._expire_leases()
            for job_id, attempt in held:
                if job_id in renewal.cancel:
                    self._cancel_local(job_id, "cancelled", attempt=attempt)
            try:
                if self._orphans_possible:
                    await self._give_back_unknown()
                recovered = await self.store.recover_expired_leases()
                await self.store.heartbeat_worker(
                    self.worker_id,
                    {"running": len(self._running), **self._counts(), **self.extra_state()},
                )
            except StoreUnavailable as exc:
                log.warning("lease_upkeep_failed", error=str(exc))
                recovered = []
            if recovered:
                log.warning("leases_recovered", count=len(recovered), job_ids=recovered[:20])
                self._wake.set()
            await asyncio.sleep(interval)

    async def _give_back_unknown(self) -> None:
        """Give back rows running under this worker that no task here runs.

        Claims and hand-overs wait meanwhile, and the ones in flight finish first: a row
        they committed but had not started yet must not be taken for an orphan.
        """
        self._reconciling = True
        try:
            self._settled.clear()
            self._note_settled()
            try:
                async with asyncio.timeout(30.0):
                    await self._settled.wait()
            except TimeoutError:
                return  # still busy: try again at the next renewal
            known = sorted({job_id for job_id, _ in self._leases} | set(self._running))
            released = await self.store.release_unknown(self.worker_id, known)
            self._orphans_possible = False
        finally:
            self._reconciling = False
            self._wake.set()
        if released:
            log.warning("unknown_jobs_released", count=len(released), job_ids=released[:20])

    def _held(self) -> list[tuple[int, int]]:
        """(job id, attempt) of every lease to renew: running here, or finished with the
        outcome not yet written. Not one being stopped: that one must be left to expire."""
        return [pair for pair in self._leases if not self._stopping_attempt(pair)]

    def _stopping_attempt(self, pair: tuple[int, int]) -> bool:
        running = self._running.get(pair[0])
        return (
            running is not None
            and running.job.attempts == pair[1]
            and running.stop_reason is not None
        )

    def _arm_lease_timer(self) -> None:
        """Check the leases at the first deadline, and at least every renewal interval:
        should no renewal answer in time (one hanging, the store gone), the jobs still stop
        at their lease's end, not at the lease loop's next turn."""
        if self._lease_timer is not None:
            self._lease_timer.cancel()
        interval = min(self.config.workers.lease / 3, 10.0)
        now = time.monotonic()
        first = min(self._leases.values(), default=now + interval)
        delay = max(0.0, min(first - now, interval))
        self._lease_timer = asyncio.get_running_loop().call_later(delay, self._lease_tick)

    def _lease_tick(self) -> None:
        self._expire_leases()
        if not self._stopping.is_set():
            self._arm_lease_timer()

    def _expire_leases(self, margin: float = 0.0, why: str = "not_renewed_in_time") -> None:
        """Stop every attempt whose lease ends within ``margin`` seconds (or has ended);
        one being cancelled too, so that it writes no "cancelled" either."""
        limit = time.monotonic() + margin
        self._lease_lost({p for p, until in self._leases.items() if until <= limit}, why)

    def _lease_lost(self, pairs: set[tuple[int, int]], why: str) -> None:
        """Stop these attempts (job id, attempt) and drop their unwritten outcomes: another
        instance may own the jobs now, and the attempt's outcome is not ours to write."""
        if not pairs:
            return
        for job_id, attempt in pairs:
            self._cancel_local(job_id, "lease_lost", why=why, attempt=attempt)
            self._leases.pop((job_id, attempt), None)
        # Not the head being written right now: that write is matched against the row's
        # worker and attempt and changes nothing if the job is no longer ours.
        waiting = self._outcomes[self._flushing :]
        kept = [o for o in waiting if (o.job_id, o.attempt) not in pairs]
        if len(kept) < len(waiting):
            for o in waiting:
                if (o.job_id, o.attempt) in pairs:
                    log.warning(
                        "job_lease_lost",
                        job_id=o.job_id,
                        attempt=o.attempt,
                        reason=why,
                        note=f"finished here ({o.status}); that outcome is not written",
                    )
            self._outcomes[self._flushing :] = kept


def _call_soon_threadsafe(
    loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: Any
) -> None:
    """Hand a callback to the loop from another thread; nothing if the loop is closed."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback, *args)


async def _keep_running(name: str, loop: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run one of the pool's loops; an unexpected error is logged and the loop restarted,
    never left to end the loop silently (a dead claim loop is a daemon that does nothing)."""
    while True:
        try:
            await loop()
            return
        except Exception:
            log.exception("pool_loop_crashed", loop=name)
            await asyncio.sleep(1.0)


async def _bounded(step: str, coro: Coroutine[Any, Any, T], seconds: float) -> T | None:
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


def _describe(exc: BaseException) -> str:
    """``Type: message`` on the first line (for logs and lists), the traceback below it."""
    trace = "".join(traceback.format_exception(exc, limit=-8))
    return f"{type(exc).__name__}: {exc}\n{trace[-_MAX_ERROR_CHARS:]}".rstrip()
