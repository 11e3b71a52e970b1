"""Plain (blocking) handlers: the pool's own threads, one per slot, held until they return."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from jobwire import JobContext
from jobwire.handlers import HandlerThreads
from jobwire.models import JobSpec, JobStatus
from jobwire.store.memory import MemoryStore
from tests.support.pools import fast_config, make_pool
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    """Blocked handler threads wait on this; set at the end whatever happens, so that no
    thread outlives its test."""
    event = threading.Event()
    yield event
    event.set()


async def test_blocking_handlers_run_as_many_at_once_as_the_pool_allows(
    gate: threading.Event,
) -> None:
    # asyncio's default executor, which adapters use for their blocking I/O, is kept small
    # here: handlers must not depend on it.
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(4))
    lock = threading.Lock()
    inside = 0
    peak = 0
    names: set[str] = set()

    def block(payload: Any, ctx: JobContext) -> None:
        nonlocal inside, peak
        with lock:
            inside += 1
            peak = max(peak, inside)
            names.add(threading.current_thread().name)
        gate.wait(20)
        with lock:
            inside -= 1

    store = MemoryStore()
    await store.enqueue_many([JobSpec("block") for _ in range(32)])
    config = fast_config(workers={"concurrency": 32})
    pool = make_pool(store, {"block": block}, config)
    await pool.start()
    try:
        await wait_for(lambda: inside == 32, timeout=10, what="32 handlers inside at once")
    finally:
        gate.set()
    await wait_for(
        lambda: all(j.status == JobStatus.SUCCEEDED for j in store.jobs.values()),
        what="all succeeded",
    )
    await pool.stop()
    assert peak == 32
    assert len(names) == 32 and all(n.startswith("jobwire-handler") for n in names)


async def test_a_timed_out_thread_keeps_its_slot_until_it_returns(gate: threading.Event) -> None:
    events: list[str] = []
    contexts: list[JobContext] = []
    cancelled_seen: list[bool] = []

    def stuck(payload: Any, ctx: JobContext) -> None:
        contexts.append(ctx)
        events.append("stuck started")
        gate.wait(20)  # ignores ctx.cancelled: a thread cannot be stopped from outside
        cancelled_seen.append(ctx.cancelled)
        events.append("stuck returned")

    def second(payload: Any, ctx: JobContext) -> None:
        events.append("second started")

    store = MemoryStore()
    first_id, second_id = await store.enqueue_many(
        [
            JobSpec("stuck", queue="short", priority=10, max_attempts=1),
            JobSpec("second", queue="short"),
        ]
    )
    assert first_id is not None and second_id is not None
    config = fast_config(workers={"concurrency": 1}, queues={"short": {"timeout": "200ms"}})
    pool = make_pool(store, {"stuck": stuck, "second": second}, config)
    await pool.start()

    async def timed_out() -> bool:
        return store.jobs[first_id].status == JobStatus.FAILED

    await wait_for(timed_out, timeout=5, what="the first job timed out")
    assert "timed out after 0.2s" in (store.jobs[first_id].last_error or "")
    assert contexts[0].cancelled
    # The attempt is over, its thread is not: no slot is free, however often the pool looks.
    assert pool.state.free_slots() == ({"default": 0, "short": 0}, 0)
    for _ in range(3):
        pool.wake()
        await wait_for(lambda: not pool.state.wake.is_set(), what="the claim loop looked")
    assert events == ["stuck started"]
    assert store.jobs[second_id].status == JobStatus.PENDING
    gate.set()

    async def second_done() -> bool:
        return store.jobs[second_id].status == JobStatus.SUCCEEDED

    await wait_for(second_done, timeout=5, what="the second job run")
    await pool.stop()
    assert events == ["stuck started", "stuck returned", "second started"]
    assert cancelled_seen == [True]


async def test_threaded_handlers_see_a_cancel_and_report_progress(gate: threading.Event) -> None:
    def poll(payload: Any, ctx: JobContext) -> None:
        ctx.progress_threadsafe(30, "working")
        while not ctx.cancelled and not gate.wait(0.01):
            pass

    store = MemoryStore()
    (job_id,) = await store.enqueue_many([JobSpec("poll")])
    assert job_id is not None
    pool = make_pool(store, {"poll": poll})
    await pool.start()

    async def progressed() -> bool:
        return store.jobs[job_id].progress == 30

    await wait_for(progressed, what="progress from the thread")
    assert await store.cancel(job_id) == "running"

    async def cancelled() -> bool:
        return store.jobs[job_id].status == JobStatus.CANCELLED

    await wait_for(cancelled, timeout=5, what="the job cancelled")
    # The thread saw the flag and returned: its slot is free again.
    await wait_for(lambda: not pool.state.lingering, timeout=5, what="the thread returned")
    await pool.stop()


def test_handler_threads_start_as_needed_up_to_the_limit(gate: threading.Event) -> None:
    threads = HandlerThreads(2)
    futures = [threads.submit(gate.wait, 20) for _ in range(3)]
    try:
        assert len({t.name for t in threading.enumerate() if t.name.startswith("jobwire-")}) >= 2
        assert not futures[2].running()  # the third waits for a thread
    finally:
        gate.set()
    assert [f.result(5) for f in futures] == [True, True, True]
    threads.shutdown(wait=True)
    with pytest.raises(RuntimeError):
        threads.submit(print)


def test_a_stop_does_not_wait_for_a_stuck_thread(gate: threading.Event) -> None:
    threads = HandlerThreads(1)
    stuck = threads.submit(gate.wait, 20)
    waiting = threads.submit(gate.wait, 20)
    threads.shutdown(wait=False, cancel_futures=True)  # returns at once
    assert waiting.cancelled() and not stuck.done()
    gate.set()
    assert stuck.result(5) is True
