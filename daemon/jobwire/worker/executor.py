"""The executor: runs each job's handler in its own task, with its timeout, and
turns how it ended into an outcome.

Plain (blocking) handlers run on the pool's own threads, one per slot; a thread cannot be
stopped, so its slot stays taken until it returns.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Callable
from typing import Any

import structlog

from jobwire.handlers import HandlerRegistry, HandlerThreads, JobContext
from jobwire.models import Job, JobStatus, Outcome
from jobwire.store.base import JobStore
from jobwire.tracing import job_span, look_for_provider
from jobwire.worker import attempt
from jobwire.worker.outcomes import OutcomeBuilder
from jobwire.worker.state import PoolState, Running, call_soon_threadsafe, log

# How long a stop waits for handler threads still running after their jobs were stopped
# (they were told: ctx.cancelled) before it gives the jobs back and leaves them behind.
_THREAD_GRACE = 5.0
# How long a stop waits for cancelled handlers to end: one that swallows its cancellation
# must not hold the stop (and the release of the jobs that did end) for good.
_CANCEL_GRACE = 2.0


class Executor:
    """Runs jobs held here; stops them on request (cancel, lease lost, shutdown)."""

    name = "executor"

    def __init__(
        self,
        state: PoolState,
        store: JobStore,
        registry: HandlerRegistry,
        outcomes: OutcomeBuilder,
        record: Callable[[Job, Outcome], None],
        on_start: Callable[[Job], None] | None = None,
    ) -> None:
        self.state = state
        self._on_start = on_start
        self.store = store
        self.registry = registry
        self.outcomes = outcomes
        self._record = record
        # Read once: Config.queue() builds a default QueueConfig (pydantic) per call.
        self._timeouts = {q: state.config.queue(q).timeout for q in state.queues}
        self._threads: HandlerThreads | None = None
        # The loop, once: asyncio.get_running_loop() costs a getpid() system call per use.
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        """Make the handler threads (started as plain handlers need them)."""
        self._loop = asyncio.get_running_loop()
        self._threads = HandlerThreads(self.state.workers.concurrency)
        look_for_provider()

    async def stop(self) -> list[Running]:
        """Let running jobs finish up to the shutdown timeout, stop the rest; returns the
        stopped ones (to give back)."""
        state = self.state
        timeout = state.workers.shutdown_timeout
        if state.running:
            log.info("pool_draining", running=len(state.running), timeout=timeout)
            await asyncio.wait([r.task for r in state.running.values()], timeout=timeout)
        leftovers = list(state.running.values())
        for running in leftovers:
            running.stop_reason = "shutdown"
            running.ctx.cancel()
            running.task.cancel()
        if leftovers:
            # Bounded: a handler that swallows its cancellation held the stop for good.
            _, stubborn = await asyncio.wait([r.task for r in leftovers], timeout=_CANCEL_GRACE)
            if stubborn:
                # Not given back: released, another instance would run them while this
                # process still does. Their leases run out once it has ended.
                leftovers = [r for r in leftovers if r.task not in stubborn]
                log.warning(
                    "handlers_ignoring_cancellation",
                    job_ids=sorted(r.job.id for r in state.running.values() if r.task in stubborn),
                    note="left to their leases: another instance takes them after this one ends",
                )
        await self._wait_for_threads()
        return leftovers

    async def _wait_for_threads(self) -> None:
        """Give stopped handlers' threads a moment to return, then let the threads go."""
        lingering = self.state.lingering
        if lingering:
            await asyncio.wait([asyncio.wrap_future(f) for f in lingering], timeout=_THREAD_GRACE)
        if lingering:
            log.warning(
                "handler_threads_left_running",
                count=len(lingering),
                note="plain handlers that ignore ctx.cancelled cannot be stopped",
            )
        if self._threads is not None:
            # Not waiting: a thread stuck for good must not hold up the stop (they are
            # daemon threads, so the exit does not wait for them either).
            self._threads.shutdown(wait=False, cancel_futures=True)

    def start_job(self, job: Job, since: float) -> None:
        """Run a job now held here; its lease began no earlier than ``since`` (monotonic)."""
        state = self.state
        if job.id in state.running:
            # Ours again (another instance took it back, then this pool claimed it) while the
            # older attempt still runs here: that attempt's lease is gone.
            self.cancel(job.id, "lease_lost", why="claimed_again")
        state.counters.claimed += 1
        state.take_slot(job.queue)
        state.started_lately.append(job.handler)
        if self._on_start is not None:
            self._on_start(job)
        if self.outcomes.defaults is not None:
            # handler_defaults: a job that set no max_attempts gets its handler's.
            job.max_attempts = self.outcomes.defaults.max_attempts(job.handler, job.max_attempts)
        loop = self._loop or asyncio.get_running_loop()
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
            _loop=loop,
        )
        # Unnamed: naming a task costs a Python call per job, noticeable in a profile of a
        # busy daemon, and the job id is in every log line the task writes.
        task = loop.create_task(self._run(job, ctx))
        state.running[job.id] = Running(job, task, ctx)
        state.leases[(job.id, job.attempts)] = since + state.workers.lease

    async def _run(self, job: Job, ctx: JobContext) -> None:
        # Set by start_job before this task's first step.
        mine = self.state.running[job.id]
        structlog.contextvars.bind_contextvars(job_id=job.id, queue=job.queue)
        started = time.monotonic()
        recorded = False
        try:
            try:
                outcome = await self._attempt(job, ctx, mine, started)
            finally:
                self._finish(mine)
            thread = ctx._thread
            if outcome is not None and outcome.status == JobStatus.RETRYING and thread is not None:
                # A plain handler past its timeout runs on in its thread: the retry is
                # written (and the lease kept) only once it returns, or the next attempt
                # ran beside it (a drill saw three attempts of one job at once).
                await asyncio.wait([asyncio.wrap_future(thread)])
                if (job.id, job.attempts) not in self.state.leases:
                    return  # the lease was lost meanwhile: not ours to write
            # A handler that swallowed the cancellation still returns: with the lease lost,
            # what it returns is not ours to write.
            if outcome is not None and mine.stop_reason != "lease_lost":
                self._record(job, outcome)  # its lease is kept until the outcome is written
                recorded = True
        finally:
            if not recorded:
                # No outcome: released at shutdown, taken back, or this task was cancelled
                # from outside; the lease must not be renewed for it any more.
                self.state.leases.pop((job.id, job.attempts), None)

    async def _attempt(
        self, job: Job, ctx: JobContext, mine: Running, started: float
    ) -> Outcome | None:
        """Run the handler and say how the attempt ended (None: no outcome to write)."""
        timeout, whose = self._timeout_of(job)
        return await attempt.run(
            job, ctx, mine, started, self.outcomes, lambda: self._invoke(job, ctx), timeout, whose
        )

    def _timeout_of(self, job: Job) -> tuple[float | None, str]:
        """The attempt's timeout and whose it is: the job's own, its handler's
        (handler_defaults:), then its queue's."""
        if job.timeout is not None:
            return job.timeout, "the job's timeout"
        defaults = self.outcomes.defaults
        own = None if defaults is None else defaults.timeout(job.handler)
        if own is not None:
            return own, f"handler {job.handler!r} timeout"
        queue = (
            self._timeouts[job.queue]
            if job.queue in self._timeouts
            else self.state.config.queue(job.queue).timeout
        )
        return queue, f"queue {job.queue!r} timeout"

    async def _invoke(self, job: Job, ctx: JobContext) -> Any:
        with job_span(job):
            return await self.registry.invoke(job.handler, job.payload, ctx, self._threads)

    def _finish(self, mine: Running) -> None:
        job = mine.job
        state = self.state
        if state.running.get(job.id) is mine:
            del state.running[job.id]
        thread = mine.ctx._thread
        if thread is not None and not thread.done():
            # The attempt is over but its thread runs on: the slot (queue and pool) stays
            # taken until the thread returns.
            state.lingering.add(thread)
            loop = asyncio.get_running_loop()
            thread.add_done_callback(
                lambda future: call_soon_threadsafe(loop, self._thread_returned, job, future)
            )
            return
        state.free_slot(job.queue)

    def _thread_returned(self, job: Job, thread: concurrent.futures.Future[Any]) -> None:
        if thread in self.state.lingering:
            self.state.lingering.discard(thread)
            log.info("handler_thread_returned", job_id=job.id, handler=job.handler)
            self.state.free_slot(job.queue)

    def cancel(
        self, job_id: int, reason: str, why: str | None = None, attempt: int | None = None
    ) -> bool:
        """Stop a job running here (``reason``: cancelled, lease_lost or shutdown); with
        ``attempt``, only that attempt. True if it was stopped now."""
        running = self.state.running.get(job_id)
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
