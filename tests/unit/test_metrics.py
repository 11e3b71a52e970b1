"""The metrics collector's database figures, against the in-memory store."""

from __future__ import annotations

import platform
import sys
from datetime import UTC, datetime, timedelta

from prometheus_client import generate_latest

from jobwire import __version__
from jobwire.handlers import HandlerRegistry
from jobwire.metrics import Metrics
from jobwire.metrics_queues import MAX_UNSERVED_QUEUES, OTHER_QUEUES
from jobwire.models import Job, JobSpec, JobStatus, Outcome
from jobwire.store.base import ClaimRequest
from jobwire.store.memory import MemoryStore
from jobwire.worker import WorkerPool
from tests.support.pools import fast_config
from tests.support.waiting import wait_for


def make_metrics(store: MemoryStore, queues: tuple[str, ...] = ("default",)) -> Metrics:
    return Metrics(store, lambda: {}, lambda: {}, queues=queues)


def job_lines(metrics: Metrics) -> set[str]:
    text = generate_latest(metrics.registry).decode()
    return {line for line in text.splitlines() if line.startswith("jobwire_jobs{")}


def line(queue: str, status: str, value: float) -> str:
    return f'jobwire_jobs{{queue="{queue}",status="{status}"}} {value}'


async def test_jobs_gauge_counts_live_jobs_with_a_zero_for_each_served_queue() -> None:
    store = MemoryStore()
    metrics = make_metrics(store, ("default", "mail"))
    assert job_lines(metrics) == set()  # never read: nothing rather than made-up zeros

    await store.enqueue_many([JobSpec("noop") for _ in range(3)])
    await store.enqueue_many([JobSpec("noop", queue="unserved")])
    claimed = await store.claim(ClaimRequest({"default": 2}, 2, "w", 60.0))
    done = claimed[0]
    await store.complete_many("w", [Outcome(done.id, 1, JobStatus.SUCCEEDED, 0.0)])
    await metrics.refresh(max_age=0)

    assert job_lines(metrics) == {
        line("default", "pending", 1.0),
        line("default", "retrying", 0.0),
        line("default", "running", 1.0),
        line("mail", "pending", 0.0),
        line("mail", "retrying", 0.0),
        line("mail", "running", 0.0),
        # Not served here, but its jobs wait: shown, so an operator sees them.
        line("unserved", "pending", 1.0),
        line("unserved", "retrying", 0.0),
        line("unserved", "running", 0.0),
    }


async def test_a_queue_seen_once_reads_zero_when_its_jobs_are_done() -> None:
    store = MemoryStore()
    metrics = make_metrics(store)
    await store.enqueue_many([JobSpec("noop", queue="other")])
    await metrics.refresh(max_age=0)
    assert line("other", "pending", 1.0) in job_lines(metrics)

    (job,) = await store.claim(ClaimRequest({"other": 1}, 1, "w", 60.0))
    await store.complete_many("w", [Outcome(job.id, 1, JobStatus.SUCCEEDED, 0.0)])
    await metrics.refresh(max_age=0)
    lines = job_lines(metrics)
    assert line("other", "pending", 0.0) in lines  # not gone: zero
    assert not any('status="succeeded"' in each for each in lines)  # history is not counted


async def test_queues_named_by_applications_are_bounded_the_rest_folded_into_other() -> None:
    """Queue names are input (the SQL function, the Client, the HTTP API): 50,000 of them
    made /metrics 10 MB, rendered in seconds on the event loop. Served queues keep their
    series, a capped number of others theirs, and the rest share ``_other``."""
    store = MemoryStore()
    metrics = make_metrics(store, ("default",))
    cap = MAX_UNSERVED_QUEUES
    await store.enqueue_many([JobSpec("noop", queue=f"q{i}") for i in range(cap + 500)])
    ids = await store.enqueue_many([JobSpec("noop", queue=f"q{i}") for i in range(3)])
    for job_id in ids:
        assert job_id is not None
        store.jobs[job_id].run_at -= timedelta(minutes=10)
    await metrics.refresh(max_age=0)

    queues = {each.split('"')[1] for each in job_lines(metrics)}
    assert len(queues) == 1 + cap + 1, len(queues)
    assert {"default", "q0", "q1", "q2", OTHER_QUEUES} <= queues  # the biggest are named
    text = exposition(metrics)
    pending = sum(
        float(each.rsplit(" ", 1)[1])
        for each in text.splitlines()
        if each.startswith("jobwire_jobs{") and 'status="pending"' in each
    )
    assert pending == cap + 503  # nothing dropped: the rest counted under _other
    assert line(OTHER_QUEUES, "pending", 500.0) in job_lines(metrics)
    assert len(oldest_lines(metrics)) == 1 + cap + 1
    assert oldest_lines(metrics)[OTHER_QUEUES] < 60  # the late ones have their own series


async def test_a_paused_queue_says_so_beside_its_lateness() -> None:
    """A paused queue's ready jobs wait on purpose: the shipped JobwireQueueLate leaves it
    out by jobwire_queue_paused, and paged for a pause an operator made before."""
    store = MemoryStore()
    metrics = make_metrics(store, ("default", "mail"))
    (job_id,) = await store.enqueue_many([JobSpec("noop", queue="mail")])
    assert job_id is not None
    store.jobs[job_id].run_at -= timedelta(minutes=10)
    store.jobs[job_id].created_at -= timedelta(minutes=10)
    await store.set_queue_paused("mail", True, "test")
    await metrics.refresh(max_age=0)
    text = exposition(metrics)
    assert 'jobwire_queue_paused{queue="mail"} 1.0' in text
    assert 'jobwire_queue_paused{queue="default"} 0.0' in text
    assert oldest_lines(metrics)["mail"] >= 600  # still shown: the jobs do wait

    await store.set_queue_paused("mail", False, "test")
    await metrics.refresh(max_age=0)
    assert 'jobwire_queue_paused{queue="mail"} 0.0' in exposition(metrics)


def exposition(metrics: Metrics) -> str:
    return generate_latest(metrics.registry).decode()


def oldest_lines(metrics: Metrics) -> dict[str, float]:
    prefix = "jobwire_queue_oldest_ready_seconds{queue="
    found = {}
    for each in exposition(metrics).splitlines():
        if each.startswith(prefix):
            labels, value = each[len(prefix) :].split("} ")
            found[labels.strip('"')] = float(value)
    return found


async def test_oldest_ready_age_per_served_queue_counts_only_jobs_due_now() -> None:
    store = MemoryStore()
    metrics = make_metrics(store, ("default", "mail"))
    await metrics.refresh(max_age=0)
    assert oldest_lines(metrics) == {"default": 0.0, "mail": 0.0}  # none ready: 0, not gone

    old, _newer = await store.enqueue_many([JobSpec("noop"), JobSpec("noop")])
    assert old is not None
    store.jobs[old].run_at -= timedelta(minutes=10)  # ready, and waiting since then
    store.jobs[old].created_at -= timedelta(minutes=10)
    (backdated,) = await store.enqueue_many([JobSpec("noop", queue="mail")])
    assert backdated is not None
    # An application's run_at a year back: ready now, but waiting only since its insert.
    store.jobs[backdated].run_at -= timedelta(days=365)
    await store.enqueue_many([JobSpec("noop", queue="mail", delay=3600)])  # not due yet
    await metrics.refresh(max_age=0)
    ages = oldest_lines(metrics)
    assert 600 <= ages["default"] < 660 and ages["mail"] < 60, ages


async def test_wait_from_ready_to_start_is_observed_when_the_pool_starts_a_job() -> None:
    store = MemoryStore()
    metrics = make_metrics(store)
    job_id, backdated = await store.enqueue_many([JobSpec("noop"), JobSpec("noop")])
    assert job_id is not None and backdated is not None
    store.jobs[job_id].run_at -= timedelta(seconds=90)
    store.jobs[job_id].created_at -= timedelta(seconds=90)
    # run_at set a day back by an application: it waited from its insert, not for a day.
    store.jobs[backdated].run_at -= timedelta(days=1)
    pool = WorkerPool(
        store,
        HandlerRegistry({}),
        fast_config(),
        on_outcome=metrics.observe,
        on_start=metrics.observe_start,
    )
    await pool.start()
    try:
        await wait_for(lambda: pool.counters.succeeded == 2, what="the jobs ran")
    finally:
        await pool.stop()
    text = exposition(metrics)
    assert 'jobwire_job_wait_seconds_count{queue="default"} 2.0' in text
    assert 'jobwire_job_wait_seconds_bucket{le="60.0",queue="default"} 1.0' in text
    assert 'jobwire_job_wait_seconds_bucket{le="300.0",queue="default"} 2.0' in text


def test_attempts_are_counted_by_queue_handler_and_outcome_within_the_allow_list() -> None:
    metrics = Metrics(MemoryStore(), lambda: {}, lambda: {}, handlers={"email"})
    at = datetime.now(UTC)
    for queue, handler, status in [
        ("mail", "email", JobStatus.SUCCEEDED),
        ("mail", "email", JobStatus.SUCCEEDED),
        ("mail", "email", JobStatus.RETRYING),
        ("default", "made-up-1", JobStatus.FAILED),
        ("default", "made-up-2", JobStatus.FAILED),
    ]:
        job = Job(1, handler, queue, JobStatus.RUNNING, 0, 1, 3, None, at, at)
        metrics.observe(job, Outcome(1, 1, status, 0.01))
    attempts = {
        each for each in exposition(metrics).splitlines() if each.startswith("jobwire_attempts")
    }
    assert attempts == {
        'jobwire_attempts_total{handler="email",outcome="succeeded",queue="mail"} 2.0',
        'jobwire_attempts_total{handler="email",outcome="retried",queue="mail"} 1.0',
        # Names outside the allow-list share one label: the series stay bounded.
        'jobwire_attempts_total{handler="_unlisted",outcome="failed",queue="default"} 2.0',
    }


def test_build_info_process_metrics_and_no_created_series() -> None:
    text = exposition(make_metrics(MemoryStore()))
    version = platform.python_version()
    assert f'jobwire_build_info{{python="{version}",version="{__version__}"}} 1.0' in text
    assert "python_info{" in text
    if sys.platform == "linux":  # ProcessCollector reads /proc
        assert "process_cpu_seconds_total " in text
        assert "process_resident_memory_bytes " in text
    assert "_created" not in text


def test_each_source_has_its_waiting_deliveries_and_how_long_they_were_held_back() -> None:
    sources = {
        "orders": {"state": "up", "received": 7, "waiting": 120, "held_back_s": 0.31},
        "telemetry": {"state": "down"},  # a source that says nothing reads as none waiting
    }
    metrics = Metrics(MemoryStore(), lambda: {}, lambda: sources)
    text = exposition(metrics)
    assert 'jobwire_intake_waiting{source="orders"} 120.0' in text
    assert 'jobwire_intake_held_back_seconds{source="orders"} 0.31' in text
    assert 'jobwire_intake_waiting{source="telemetry"} 0.0' in text
    assert 'jobwire_intake_messages_total{outcome="received",source="orders"} 7.0' in text
    assert 'jobwire_source_state{source="telemetry",state="down"} 1.0' in text
