"""Worker pool semantics against the in-memory store: fast and deterministic."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from structlog.testing import capture_logs

from jobwire import JobContext, Reject, Retry
from jobwire.models import JobSpec, JobStatus
from jobwire.store.base import ClaimRequest, DirectStart, Renewal
from jobwire.store.memory import MemoryStore
from jobwire.worker import WorkerPool
from tests.support.pools import fast_config, make_pool
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(30)


async def statuses(store: MemoryStore) -> dict[int, str]:
    return {j.id: str(j.status) for j in store.jobs.values()}


async def all_finished(store: MemoryStore) -> bool:
    return all(j.status in ("succeeded", "failed", "cancelled") for j in store.jobs.values())


async def test_runs_jobs_and_stores_results() -> None:
    store = MemoryStore()
    ids = await store.enqueue_many([JobSpec("echo", {"n": i}) for i in range(20)])
    pool = make_pool(store)
    await pool.start()
    await wait_for(lambda: all_finished(store), what="jobs finished")
    await pool.stop()
    for job_id in ids:
        assert job_id is not None
        job = store.jobs[job_id]
        assert job.status == JobStatus.SUCCEEDED
        assert job.result == job.payload
        assert job.attempts == 1 and job.progress == 100
    assert len(store.job_runs) == 20
    assert store.workers == {}  # unregistered on a clean stop


async def test_priority_first_then_fifo_and_run_at() -> None:
    store = MemoryStore()
    order: list[str] = []

    async def record(payload: Any, ctx: JobContext) -> None:
        order.append(payload)

    await store.enqueue_many(
        [
            JobSpec("record", "low-1", priority=0),
            JobSpec("record", "high-1", priority=10),
            JobSpec("record", "low-2", priority=0),
            JobSpec("record", "later", priority=100, delay=0.4),
            JobSpec("record", "high-2", priority=10),
        ]
    )
    started = time.monotonic()
    pool = make_pool(store, {"record": record}, fast_config(workers={"concurrency": 1}))
    await pool.start()
    await wait_for(lambda: all_finished(store), what="jobs finished")
    await pool.stop()
    assert order == ["high-1", "high-2", "low-1", "low-2", "later"]
    later = next(j for j in store.jobs.values() if j.payload == "later")
    assert later.started_at is not None
    assert time.monotonic() - started >= 0.4


async def test_retries_with_backoff_then_fails_with_a_run_per_attempt() -> None:
    store = MemoryStore()
    (job_id,) = await store.enqueue_many([JobSpec("fail", {"message": "boom"}, max_attempts=3)])
    pool = make_pool(store)
    await pool.start()
    await wait_for(lambda: all_finished(store), what="job failed")
    await pool.stop()
    assert job_id is not None
    job = store.jobs[job_id]
    assert job.status == JobStatus.FAILED
    assert job.attempts == 3
    assert job.last_error is not None and job.last_error.startswith("RuntimeError: boom")
    runs = await store.runs(job_id)
    assert [(r["attempt"], r["status"]) for r in runs] == [
        (1, "retrying"),
        (2, "retrying"),
        (3, "failed"),
    ]
    assert all("boom" in r["error"] for r in runs)


async def test_retry_after_and_reject() -> None:
    store = MemoryStore()
    seen: list[int] = []

    async def flaky(payload: Any, ctx: JobContext) -> str:
        seen.append(ctx.attempt)
        if ctx.attempt < 2:
            raise Retry("not yet", after="50ms")
        return "done"

    async def refuse(payload: Any, ctx: JobContext) -> None:
        raise Reject("bad input")

    a, b = await store.enqueue_many(
        [JobSpec("flaky", max_attempts=5), JobSpec("refuse", max_attempts=5)]
    )
    pool = make_pool(store, {"flaky": flaky, "refuse": refuse})
    await pool.start()
    await wait_for(lambda: all_finished(store), what="jobs finished")
    await pool.stop()
    assert a is not None and b is not None
    assert store.jobs[a].status == JobStatus.SUCCEEDED and store.jobs[a].result == "done"
    assert seen == [1, 2]
    assert store.jobs[b].status == JobStatus.FAILED and store.jobs[b].attempts == 1
    assert store.jobs[b].last_error == "rejected: bad input"


async def test_queue_timeout_cancels_the_attempt_and_counts_it() -> None:
    store = MemoryStore()
    (job_id,) = await store.enqueue_many(
        [JobSpec("sleep", {"seconds": 10}, queue="short", max_attempts=2)]
    )
    config = fast_config(queues={"short": {"timeout": "100ms"}})
    pool = make_pool(store, config=config)
    await pool.start()
    await wait_for(lambda: all_finished(store), what="job timed out twice")
    await pool.stop()
    assert job_id is not None
    job = store.jobs[job_id]
    assert job.status == JobStatus.FAILED and job.attempts == 2
    assert job.last_error is not None and "timed out after 0.1s" in job.last_error


async def test_cancel_pending_and_running_jobs() -> None:
    store = MemoryStore()
    running, waiting = await store.enqueue_many(
        [JobSpec("sleep", {"seconds": 30}), JobSpec("noop", delay=60)]
    )
    assert running is not None and waiting is not None
    pool = make_pool(store)
    await pool.start()

    async def is_running() -> bool:
        return store.jobs[running].status == JobStatus.RUNNING

    await wait_for(is_running, what="sleep job running")
    assert await store.cancel(waiting) == "cancelled"
    assert await store.cancel(running) == "running"

    async def cancelled() -> bool:
        return store.jobs[running].status == JobStatus.CANCELLED

    await wait_for(cancelled, timeout=5, what="running job cancelled")
    await pool.stop()
    assert store.jobs[waiting].status == JobStatus.CANCELLED
    assert (await store.runs(running))[-1]["status"] == "cancelled"


async def test_per_queue_and_pool_concurrency_limits() -> None:
    store = MemoryStore()
    active: dict[str, int] = {"a": 0, "b": 0}
    peak: dict[str, int] = {"a": 0, "b": 0, "all": 0}

    async def track(payload: Any, ctx: JobContext) -> None:
        active[ctx.queue] += 1
        peak[ctx.queue] = max(peak[ctx.queue], active[ctx.queue])
        peak["all"] = max(peak["all"], sum(active.values()))
        await asyncio.sleep(0.02)
        active[ctx.queue] -= 1

    await store.enqueue_many([JobSpec("track", queue=q) for q in "ab" * 30])
    config = fast_config(workers={"concurrency": 5}, queues={"a": {"concurrency": 2}, "b": {}})
    pool = make_pool(store, {"track": track}, config)
    await pool.start()
    await wait_for(lambda: all_finished(store), what="jobs finished")
    await pool.stop()
    assert peak["a"] == 2
    assert peak["all"] == 5


async def test_graceful_stop_gives_unfinished_jobs_back() -> None:
    store = MemoryStore()
    (job_id,) = await store.enqueue_many([JobSpec("sleep", {"seconds": 30})])
    assert job_id is not None
    pool = make_pool(store, config=fast_config(workers={"shutdown_timeout": "100ms"}))
    await pool.start()

    async def is_running() -> bool:
        return store.jobs[job_id].status == JobStatus.RUNNING

    await wait_for(is_running, what="job running")
    await pool.stop()
    job = store.jobs[job_id]
    assert job.status == JobStatus.PENDING
    assert job.attempts == 0 and job.lease_until is None and job.worker_id is None
    assert [r["status"] for r in await store.runs(job_id)] == ["interrupted"]


async def test_plain_functions_run_in_threads_and_payload_only_handlers() -> None:
    store = MemoryStore()

    def blocking(payload: Any, ctx: JobContext) -> int:
        time.sleep(0.05)  # would stall the loop if not in a thread
        return int(payload) * 2

    def payload_only(payload: Any) -> str:
        return f"got {payload}"

    a, b = await store.enqueue_many([JobSpec("blocking", 21), JobSpec("payload_only", "x")])
    pool = make_pool(store, {"blocking": blocking, "payload_only": payload_only})
    await pool.start()
    await wait_for(lambda: all_finished(store), what="jobs finished")
    await pool.stop()
    assert a is not None and b is not None
    assert store.jobs[a].result == 42
    assert store.jobs[b].result == "got x"


async def test_unknown_handler_and_unserialisable_result_fail_clearly() -> None:
    store = MemoryStore()

    async def weird(payload: Any, ctx: JobContext) -> object:
        return object()

    a, b = await store.enqueue_many([JobSpec("nope"), JobSpec("weird")])
    pool = make_pool(store, {"weird": weird})
    await pool.start()
    await wait_for(lambda: all_finished(store), what="jobs finished")
    await pool.stop()
    assert a is not None and b is not None
    assert "not in the allow-list" in (store.jobs[a].last_error or "")
    assert store.jobs[a].attempts == 1
    assert "not JSON serialisable" in (store.jobs[b].last_error or "")


async def test_expired_lease_of_a_dead_worker_is_taken_back() -> None:
    store = MemoryStore()
    (job_id,) = await store.enqueue_many([JobSpec("echo", "again")])
    assert job_id is not None
    # A worker claims the job with a tiny lease, then "dies" (never heartbeats).
    await store.claim(ClaimRequest({"default": 1}, 1, "dead-worker", lease=0.01))
    await asyncio.sleep(0.02)
    pool = make_pool(store)
    await pool.start()

    async def done() -> bool:
        return store.jobs[job_id].status == JobStatus.SUCCEEDED

    await wait_for(done, what="job finished by the live pool")
    await pool.stop()
    assert [r["status"] for r in await store.runs(job_id)] == ["lost", "succeeded"]
    assert store.jobs[job_id].attempts == 2


async def test_progress_is_recorded() -> None:
    store = MemoryStore()
    gate = asyncio.Event()

    async def slow(payload: Any, ctx: JobContext) -> None:
        await ctx.progress(40, "halfway-ish")
        await gate.wait()

    (job_id,) = await store.enqueue_many([JobSpec("slow")])
    assert job_id is not None
    pool = make_pool(store, {"slow": slow})
    await pool.start()

    async def progressed() -> bool:
        return store.jobs[job_id].progress == 40

    await wait_for(progressed, what="progress 40")
    assert store.jobs[job_id].progress_note == "halfway-ish"
    gate.set()
    await wait_for(lambda: all_finished(store), what="job finished")
    await pool.stop()


async def idle_pool(concurrency: int) -> tuple[MemoryStore, WorkerPool]:
    """A started pool whose first claim (of an empty store) is done; it polls only every 10s,
    so it claims when woken."""
    store = MemoryStore()
    pool = make_pool(
        store, config=fast_config(workers={"concurrency": concurrency, "poll_interval": "10s"})
    )
    await pool.start()
    await wait_for(lambda: pool.counters.claims >= 1, what="the first claim")
    return store, pool


async def test_direct_hand_off_waits_only_behind_older_ready_jobs() -> None:
    _store, pool = await idle_pool(concurrency=2)

    # No await between these steps: the claim loop cannot run in between.
    pool.wake()  # an insert elsewhere: the next claim looks, the hand-off is not held back
    assert pool.reserve("default", 1) == 1
    pool.unreserve("default", 1)
    assert pool.reserve("default", 3) == 2  # room for two; the third is stored as ready...
    pool.unreserve("default", 2)
    assert pool.reserve("default", 1) == 0  # ...and goes before anything inserted after it

    claims = pool.counters.claims
    pool.wake()
    await wait_for(lambda: pool.counters.claims > claims, what="a claim")
    assert pool.reserve("default", 1) == 1  # that claim came back short: nothing older waits
    pool.unreserve("default", 1)
    await pool.stop()


async def test_ready_work_announced_while_the_pool_is_full_goes_before_the_next_hand_off() -> None:
    store, pool = await idle_pool(concurrency=1)
    assert pool.reserve("default", 1) == 1  # the only slot: an intake insert in flight
    (older,) = await store.enqueue_many([JobSpec("noop")])  # another producer's job
    pool.wake()
    await wait_for(lambda: not pool.state.wake.is_set(), what="the claim loop looked")
    pool.unreserve("default", 1)  # the insert is done and its job gone: the slot is free
    assert pool.reserve("default", 1) == 0  # not for the intake's next batch: the older job
    pool.wake()  # the intake stored that batch as ready, and says so
    await wait_for(lambda: all_finished(store), what="the older job run")
    assert older is not None and store.jobs[older].status == JobStatus.SUCCEEDED
    await pool.stop()


# -- lease loss: a job this pool can no longer be sure it holds is stopped, nothing written --


async def take_back(store: MemoryStore, job_id: int, by: str = "other-instance") -> None:
    """What another instance does to a job whose lease ran out: recover it, then claim it."""
    store.jobs[job_id].lease_until = datetime.now(UTC) - timedelta(seconds=1)
    assert await store.recover_expired_leases() == [job_id]
    claimed = await store.claim(ClaimRequest({"default": 1}, 1, by, lease=60))
    assert [j.id for j in claimed] == [job_id]


def lease_lost_events(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == "job_lease_lost"]


async def test_a_job_a_renewal_no_longer_returns_is_stopped_and_writes_nothing() -> None:
    store = MemoryStore()
    contexts: list[JobContext] = []

    async def hold(payload: Any, ctx: JobContext) -> str:
        contexts.append(ctx)
        await asyncio.Event().wait()
        return "never"

    (job_id,) = await store.enqueue_many([JobSpec("hold")])
    assert job_id is not None
    # A 1s lease: renewals every 1/3 s.
    pool = make_pool(store, {"hold": hold}, fast_config(workers={"lease": "1s"}))
    with capture_logs() as logs:
        await pool.start()
        await wait_for(lambda: contexts, what="the job running")
        await take_back(store, job_id)
        await wait_for(lambda: job_id not in pool.state.running, timeout=5, what="the job stopped")
        await pool.stop()
    assert contexts[0].cancelled
    # Only the recovery's row: this pool wrote no outcome, the job is the other's.
    assert [r["status"] for r in await store.runs(job_id)] == ["lost"]
    job = store.jobs[job_id]
    assert job.status == JobStatus.RUNNING and job.worker_id == "other-instance"
    assert pool.counters.succeeded == pool.counters.cancelled == 0
    (event,) = lease_lost_events(logs)
    assert event["job_id"] == job_id and event["handler"] == "hold"
    assert event["reason"] == "not_held"


async def test_an_unwritten_outcome_of_a_job_no_longer_held_is_dropped() -> None:
    store = MemoryStore()
    (job_id,) = await store.enqueue_many([JobSpec("echo", "done")])
    assert job_id is not None
    # Outcomes wait 30s for company before they are written: this one is still unwritten
    # when the renewal finds the job gone.
    config = fast_config(workers={"lease": "1s", "completion_delay": "30s"})
    pool = make_pool(store, config=config)
    with capture_logs() as logs:
        await pool.start()
        await wait_for(lambda: pool.counters.succeeded == 1, what="the job finished here")
        assert [o.job_id for o in pool.state.outcomes] == [job_id]
        await take_back(store, job_id)
        await wait_for(lambda: not pool.state.outcomes, timeout=5, what="the outcome dropped")
        await pool.stop()
    assert [r["status"] for r in await store.runs(job_id)] == ["lost"]
    assert store.jobs[job_id].worker_id == "other-instance"
    (event,) = lease_lost_events(logs)
    assert event["job_id"] == job_id and event["reason"] == "not_held"


async def test_a_frozen_pool_stops_its_jobs_once_it_runs_again() -> None:
    """Frozen past the lease (SIGSTOP, a loop blocked): at the thaw another instance may run
    the job already, so the pool stops it at once, before any renewal could say so."""
    store = MemoryStore()
    contexts: list[JobContext] = []

    async def hold(payload: Any, ctx: JobContext) -> None:
        contexts.append(ctx)
        await asyncio.Event().wait()

    (job_id,) = await store.enqueue_many([JobSpec("hold")])
    assert job_id is not None
    pool = make_pool(store, {"hold": hold}, fast_config(workers={"lease": "1s"}))
    renewed: list[Sequence[int]] = []
    renew = store.renew_leases

    async def renew_and_note(worker_id: str, lease: float, job_ids: Sequence[int]) -> Renewal:
        renewed.append(list(job_ids))
        return await renew(worker_id, lease, job_ids)

    store.renew_leases = renew_and_note  # type: ignore[method-assign]
    with capture_logs() as logs:
        await pool.start()
        await wait_for(lambda: contexts, what="the job running")
        await wait_for(lambda: [job_id] in renewed, what="its lease renewed")
        time.sleep(1.5)  # noqa: ASYNC251 - the point: the whole loop frozen past the lease
        frozen_at = len(renewed)
        await wait_for(lambda: contexts[0].cancelled, timeout=5, what="the job stopped")
        await wait_for(lambda: job_id not in pool.state.running or len(contexts) > 1, what="ended")
        await pool.stop()
    # Stopped before the first renewal after the thaw, which no longer asked for it; nothing
    # written by this attempt (the store still called it ours: the pool's own recovery then
    # counted it lost, and the pool ran it again).
    assert renewed[frozen_at] == []
    first_attempt = [r for r in await store.runs(job_id) if r["attempt"] == 1]
    assert [r["status"] for r in first_attempt] == ["lost"]
    event = lease_lost_events(logs)[0]
    assert event["job_id"] == job_id and event["reason"] == "not_renewed_in_time"


async def test_jobs_stop_at_the_end_of_a_lease_a_hanging_renewal_cannot_extend() -> None:
    store = MemoryStore()
    contexts: list[JobContext] = []

    async def hold(payload: Any, ctx: JobContext) -> None:
        contexts.append(ctx)
        await asyncio.Event().wait()

    (job_id,) = await store.enqueue_many([JobSpec("hold")])
    assert job_id is not None
    pool = make_pool(store, {"hold": hold}, fast_config(workers={"lease": "1s"}))
    stuck = asyncio.Event()
    renew = store.renew_leases

    async def renew_or_hang(worker_id: str, lease: float, job_ids: Sequence[int]) -> Renewal:
        if stuck.is_set():
            await asyncio.Event().wait()  # a store that no longer answers
        return await renew(worker_id, lease, job_ids)

    store.renew_leases = renew_or_hang  # type: ignore[method-assign]
    with capture_logs() as logs:
        await pool.start()
        await wait_for(lambda: contexts, what="the job running")
        stuck.set()
        hung_at = time.monotonic()
        await wait_for(lambda: contexts[0].cancelled, timeout=5, what="the job stopped")
        assert time.monotonic() - hung_at <= 1.5  # by the lease's end, not a later retry
        await wait_for(lambda: job_id not in pool.state.running, what="its task ended")
        assert pool.leases.task is not None
        pool.leases.task.cancel()  # the lease loop waits on the hung renewal forever
        await pool.stop()
    assert [r["status"] for r in await store.runs(job_id)] == []  # nothing written
    (event,) = lease_lost_events(logs)
    assert event["job_id"] == job_id and event["reason"] == "not_renewed_in_time"


async def test_rows_left_running_by_an_insert_whose_answer_was_lost_are_given_back() -> None:
    """The intake's insert of directly started jobs committed, but the connection dropped
    before the answer: rows run under this worker with no task. Told so, the pool gives
    them back (no attempt counted) and runs them, long before their lease would end."""
    store = MemoryStore()
    # Renewals every 3 s; the lease (9 s) would end only after the wait below gives up.
    pool = make_pool(store, config=fast_config(workers={"lease": "9s"}))
    await pool.start()
    (orphan,) = await store.enqueue_many(
        [JobSpec("echo", {"n": 1})], DirectStart(pool.worker_id, 30.0, [True])
    )
    assert orphan is not None and store.jobs[orphan].status == JobStatus.RUNNING
    pool.orphans_possible()
    await wait_for(
        lambda: store.jobs[orphan].status == JobStatus.SUCCEEDED, what="orphan run", timeout=8
    )
    await pool.stop()
    assert store.jobs[orphan].attempts == 1  # the attempt that never started is not counted
    assert [r["status"] for r in store.job_runs] == ["succeeded"]
