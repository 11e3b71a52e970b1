"""Prometheus metrics: read from the daemon's own state when scraped, plus one histogram.

Most figures already exist as counters and states in the pool, the intakes and the
adapters; a custom collector reads them at scrape time instead of mirroring every change.
Figures that need the database (live jobs by queue and status, the ready backlog) are
refreshed by ``refresh()`` before each scrape, at most once a second, so a scrape storm
costs the database nothing extra. Attempts, waits and handler durations are counted as they
happen, from the pool's hooks (``observe_start``, ``observe``).
"""

from __future__ import annotations

import asyncio
import platform
import time
from collections.abc import Awaitable, Callable, Container, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from jobwire import __version__
from jobwire.metrics_queues import OTHER_QUEUES, QueueSeries
from jobwire.metrics_sources import source_metrics
from jobwire.models import LIVE, Job, JobStatus, Outcome
from jobwire.store.base import JobStore, OutboxBacklog, StoreUnavailable

# A `_created` series per counter and histogram child doubles the series to store and tells
# an operator nothing that rate() does not; process-wide, as prometheus_client decides it.
disable_created_metrics()  # type: ignore[no-untyped-call]  # the library leaves it unannotated

# The attempt outcomes as the counter has always named them (a retry is "retried").
ATTEMPT_OUTCOMES = {
    JobStatus.SUCCEEDED: "succeeded",
    JobStatus.RETRYING: "retried",
    JobStatus.FAILED: "failed",
    JobStatus.CANCELLED: "cancelled",
}
# A handler named by a job but not in the allow-list: one label for all of them, so a
# stream of made-up names cannot grow the series without bound.
UNLISTED_HANDLER = "_unlisted"


class Metrics(Collector):
    """The daemon's metrics registry and the collector that fills it at scrape time."""

    def __init__(
        self,
        store: JobStore,
        pool_counters: Callable[[], dict[str, int]],
        sources: Callable[[], dict[str, dict[str, Any]]],
        db_pool: Callable[[], tuple[int, int]] | None = None,
        backlog_cap: int = 1_000_000,
        queues: Iterable[str] = (),
        handlers: Container[str] | None = None,
    ) -> None:
        self.store = store
        # The outbox's figures (the daemon sets both when outputs are configured).
        self.outputs: tuple[str, ...] = ()
        self.outbox_pending: Callable[[], Awaitable[dict[str, OutboxBacklog]]] | None = None
        self._outbox: dict[str, OutboxBacklog] | None = None
        self.handlers = handlers  # None: every handler name is a label (tests)
        self.pool_counters = pool_counters
        self.sources = sources
        self.db_pool = db_pool
        self.backlog_cap = backlog_cap
        self.registry = CollectorRegistry(auto_describe=False)
        self.handler_duration = Histogram(
            "jobwire_handler_duration_seconds",
            "Time a handler took, per attempt, by handler and outcome.",
            ["handler", "outcome"],
            registry=self.registry,
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300, float("inf")),
        )
        self._duration_by: dict[tuple[str, str], Any] = {}
        # From 1 ms (a direct hand-off, an idle pool) to an hour (a queue far behind).
        self.wait = Histogram(
            "jobwire_job_wait_seconds",
            "Time from a job being ready to run (run_at) to its start, by queue.",
            ["queue"],
            registry=self.registry,
            buckets=(
                0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 1800, 3600,
                float("inf"),
            ),
        )  # fmt: skip
        self._wait_by: dict[str, Any] = {}
        self._attempts: dict[tuple[str, str, str], int] = {}
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.registry.register(self)
        self._jobs: dict[str, dict[str, int]] | None = None  # None: never read yet
        # Every queue served here or seen with live jobs gets a series for each live status,
        # 0 when empty: a series that vanished would read as "no data", not as "none left".
        # Queue names are input: past a cap, unserved ones share one series (metrics_queues).
        self._queues = QueueSeries(queues)
        self._backlog: int | None = None
        self._oldest: dict[str, float] | None = None
        self._paused: frozenset[str] = frozenset()
        self._store_up = 0
        self._refreshed = 0.0
        self._reading: asyncio.Task[None] | None = None

    def _handler_label(self, handler: str) -> str:
        if self.handlers is None or handler in self.handlers:
            return handler
        return UNLISTED_HANDLER

    def observe_start(self, job: Job) -> None:
        """The pool's on_start hook: how long the job waited, ready, before it started."""
        child = self._wait_by.get(job.queue)
        if child is None:
            # labels() takes a lock and builds a key per call: look each child up once.
            child = self._wait_by[job.queue] = self.wait.labels(job.queue)
        # Both times come from the same clock (the database's, or the memory store's). A
        # job is ready from run_at, or from its insert when an application backdated run_at.
        started = job.started_at or datetime.now(UTC)
        ready = job.run_at if job.run_at >= job.created_at else job.created_at
        child.observe(max(0.0, (started - ready).total_seconds()))

    def observe(self, job: Job, outcome: Outcome) -> None:
        """The pool's on_outcome hook: the attempt counted and its duration observed."""
        handler = self._handler_label(job.handler)
        key = (handler, outcome.status)
        child = self._duration_by.get(key)
        if child is None:
            child = self._duration_by[key] = self.handler_duration.labels(
                handler, str(outcome.status)
            )
        child.observe(outcome.duration)
        status = ATTEMPT_OUTCOMES.get(outcome.status, str(outcome.status))
        counted = (job.queue, handler, status)
        self._attempts[counted] = self._attempts.get(counted, 0) + 1

    async def refresh(self, max_age: float = 1.0, deadline: float = 2.0) -> None:
        """Read the database figures, unless read less than ``max_age`` seconds ago.

        A read slower than ``deadline`` goes on alone (one at a time), and this scrape gets
        the figures read before with jobwire_store_up 0: a frozen database held every
        scrape for command_timeout, past Prometheus's own timeout, so the figures vanished
        just when they were wanted.
        """
        if self._reading is None or self._reading.done():
            if time.monotonic() - self._refreshed < max_age:
                return
            self._reading = asyncio.ensure_future(self._read())
        reading = self._reading
        done, _ = await asyncio.wait({reading}, timeout=deadline)
        if done:
            reading.result()
        else:
            self._store_up = 0

    async def _read(self) -> None:
        try:
            # Live jobs only: a count over the history grew with it (150 ms per million
            # finished rows, at every refresh of every instance).
            live = await self.store.stats(finished=False)
            self._queues.update(live)
            self._jobs = self._queues.fold(live)
            self._backlog = await self.store.ready_backlog(self.backlog_cap)
            named = self._queues.named()
            oldest = await self.store.oldest_ready(named)
            if self._queues.folding:
                elsewhere = await self.store.oldest_ready_elsewhere(named)
                oldest[OTHER_QUEUES] = max(oldest.get(OTHER_QUEUES, 0.0), elsewhere)
            self._oldest = oldest
            # Paused queues' jobs are ready and wait on purpose: the alert on lateness
            # leaves them out by this gauge (no queue given: the paused ones alone).
            self._paused = (await self.store.flow_state((), full=False)).paused
            if self.outbox_pending is not None:
                self._outbox = await self.outbox_pending()
            self._store_up = 1
        except StoreUnavailable:
            self._store_up = 0
        self._refreshed = time.monotonic()

    def collect(self) -> Iterator[Metric]:
        """Every figure except the histogram, from current state."""
        yield _gauge(
            "jobwire_store_up", "1 when the database answered the last scrape.", self._store_up
        )
        jobs = GaugeMetricFamily(
            "jobwire_jobs",
            "Jobs pending, retrying or running, by queue and status (at the last read).",
            labels=["queue", "status"],
        )
        if self._jobs is not None:
            for queue in self._queues.labels():
                counts = self._jobs.get(queue, {})
                for status in LIVE:
                    jobs.add_metric([queue, status], counts.get(status, 0))
        yield jobs
        if self._oldest is not None:
            oldest = GaugeMetricFamily(
                "jobwire_queue_oldest_ready_seconds",
                "Age of the oldest job ready to run now, by queue (0 when none is ready).",
                labels=["queue"],
            )
            paused = GaugeMetricFamily(
                "jobwire_queue_paused",
                "1 when an operator paused the queue: its ready jobs wait on purpose.",
                labels=["queue"],
            )
            for queue in self._queues.labels():
                oldest.add_metric([queue], self._oldest.get(queue, 0.0))
                paused.add_metric([queue], 1 if queue in self._paused else 0)
            yield oldest
            yield paused
        if self._backlog is not None:
            yield _gauge(
                "jobwire_ready_backlog",
                f"Jobs ready to run, counted up to {self.backlog_cap}.",
                self._backlog,
            )
        build = GaugeMetricFamily(
            "jobwire_build_info",
            "Always 1: the jobwire and Python versions this instance runs.",
            labels=["version", "python"],
        )
        build.add_metric([__version__, platform.python_version()], 1)
        yield build
        attempts = CounterMetricFamily(
            "jobwire_attempts",
            "Attempts this instance finished, by queue, handler and outcome.",
            labels=["queue", "handler", "outcome"],
        )
        for labels, count in sorted(self._attempts.items()):
            attempts.add_metric(list(labels), count)
        yield attempts
        pool = self.pool_counters()
        yield _counter(
            "jobwire_claimed_jobs", "Jobs this instance claimed.", pool.get("claimed", 0)
        )
        yield _counter(
            "jobwire_direct_jobs",
            "Jobs the intake handed straight to this instance's pool.",
            pool.get("direct", 0),
        )
        yield _gauge(
            "jobwire_running_jobs", "Jobs running in this instance.", pool.get("running", 0)
        )
        yield from source_metrics(self.sources())
        yield from self._outbox_metrics()
        if self.db_pool is not None:
            size, idle = self.db_pool()
            yield _gauge("jobwire_db_pool_connections", "Open database connections.", size)
            yield _gauge("jobwire_db_pool_in_use", "Database connections in use.", size - idle)

    def _outbox_metrics(self) -> Iterator[Metric]:
        """Unsent outbox rows and the oldest one's age, per configured output."""
        if self._outbox is None or not self.outputs:
            return
        pending = GaugeMetricFamily(
            "jobwire_outbox_pending",
            "Outbox messages not yet confirmed by the broker, by output.",
            labels=["output"],
        )
        oldest = GaugeMetricFamily(
            "jobwire_outbox_oldest_seconds",
            "Age of the oldest unsent outbox message, by output (0 when none).",
            labels=["output"],
        )
        aside = GaugeMetricFamily(
            "jobwire_outbox_set_aside",
            "Outbox messages the relay gave up on (max_attempts, or refused for good): they "
            "wait for an operator, by output.",
            labels=["output"],
        )
        for output in self.outputs:
            count, age, parked = self._outbox.get(output, OutboxBacklog(0, 0.0, 0))
            pending.add_metric([output], count)
            oldest.add_metric([output], age)
            aside.add_metric([output], parked)
        yield pending
        yield oldest
        yield aside


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)
