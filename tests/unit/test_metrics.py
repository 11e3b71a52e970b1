"""The metrics collector's database figures, against the in-memory store."""

from __future__ import annotations

from prometheus_client import generate_latest

from jobwire.metrics import Metrics
from jobwire.models import JobSpec, JobStatus, Outcome
from jobwire.store.base import ClaimRequest
from jobwire.store.memory import MemoryStore


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
