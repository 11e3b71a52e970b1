"""Handlers that misbehave end their own attempt, with a reason, and nothing else: found by a
drill in which each of these left its job running for good (its lease renewed, no run
recorded, cancel powerless) or stopped the whole daemon."""

from __future__ import annotations

import asyncio
from typing import Any, NoReturn

import pytest
import structlog

from jobwire import JobContext, Reject, Retry
from jobwire.models import JobSpec, JobStatus
from jobwire.store.memory import MemoryStore
from tests.support.pools import fast_config, make_pool
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(30)


class Stubborn(BaseException):
    """Not an Exception: a handler's own BaseException subclass."""


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no")


class UnprintableReason:
    def __str__(self) -> str:
        raise RuntimeError("no")


def stubborn_until(let_go: asyncio.Event) -> Any:
    """A handler that swallows every cancellation (its timeout's too) until ``let_go``."""

    async def stubborn(payload: Any, ctx: JobContext) -> None:
        while not let_go.is_set():
            try:
                await let_go.wait()
            except asyncio.CancelledError:
                continue

    return stubborn


def raising(exc: BaseException) -> Any:
    async def handler(payload: Any, ctx: JobContext) -> NoReturn:
        raise exc

    return handler


CASES = {
    "system_exit": (raising(SystemExit(3)), "SystemExit"),
    "keyboard_interrupt": (raising(KeyboardInterrupt()), "KeyboardInterrupt"),
    "generator_exit": (raising(GeneratorExit()), "GeneratorExit"),
    "own_base_exception": (raising(Stubborn("mine")), "Stubborn: mine"),
    "cancelled_by_itself": (raising(asyncio.CancelledError()), "CancelledError"),
    "unprintable": (raising(Unprintable()), "Unprintable: <Unprintable object"),
    "retry_empty": (raising(Retry("")), ""),
    "retry_none": (raising(Retry(None)), "None"),  # type: ignore[arg-type]
    "retry_int": (raising(Retry(123)), "123"),  # type: ignore[arg-type]
    "reject_unprintable": (raising(Reject(UnprintableReason())), "rejected: <"),  # type: ignore[arg-type]
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_the_attempt_fails_with_a_reason_and_the_pool_goes_on(case: str) -> None:
    handler, reason = CASES[case]
    store = MemoryStore()
    bad, good = await store.enqueue_many(
        [JobSpec("bad", {}, max_attempts=1), JobSpec("echo", {"n": 1})]
    )
    assert bad is not None and good is not None
    pool = make_pool(store, {"bad": handler}, fast_config())
    await pool.start()

    async def finished() -> bool:
        return store.jobs[bad].status == JobStatus.FAILED

    try:
        await wait_for(finished, timeout=10, what=f"{case}: the job failed")
        # The pool still runs jobs, and holds no lease for the failed one.
        (later,) = await store.enqueue_many([JobSpec("echo", {"n": 2})])
        assert later is not None

        async def ran() -> bool:
            return store.jobs[later].status == JobStatus.SUCCEEDED

        await wait_for(ran, what="a later job run")
        assert not pool.state.leases and bad not in pool.state.running
    finally:
        await pool.stop()
    assert store.jobs[good].status == JobStatus.SUCCEEDED
    error = store.jobs[bad].last_error or ""
    assert reason in error
    assert [r["status"] for r in await store.runs(bad)] == ["failed"]


async def test_a_handler_that_swallows_its_timeout_has_still_timed_out() -> None:
    async def swallow(payload: Any, ctx: JobContext) -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            pass  # and carries on
        await asyncio.sleep(0.3)
        return "done"

    store = MemoryStore()
    (job_id,) = await store.enqueue_many([JobSpec("swallow", queue="short", max_attempts=1)])
    assert job_id is not None
    config = fast_config(queues={"short": {"timeout": "100ms"}})
    pool = make_pool(store, {"swallow": swallow}, config)
    await pool.start()

    async def ended() -> bool:
        return store.jobs[job_id].status in (JobStatus.SUCCEEDED, JobStatus.FAILED)

    try:
        await wait_for(ended, what="the attempt's end")
    finally:
        await pool.stop()
    job = store.jobs[job_id]
    assert job.status == JobStatus.FAILED and job.result is None
    assert "timed out after 0.1s" in (job.last_error or "")


async def test_a_stop_ends_although_a_handler_swallows_its_cancellation() -> None:
    let_go = asyncio.Event()
    stubborn = stubborn_until(let_go)
    store = MemoryStore()
    bad, good = await store.enqueue_many([JobSpec("stubborn"), JobSpec("sleep", {"seconds": 60})])
    assert bad is not None and good is not None
    config = fast_config(workers={"shutdown_timeout": "100ms", "lease": "30s"})
    pool = make_pool(store, {"stubborn": stubborn}, config)
    await pool.start()

    async def both_running() -> bool:
        return len(pool.state.running) == 2

    await wait_for(both_running, what="both jobs running")
    async with asyncio.timeout(15):
        await pool.stop()
    # The well-behaved job is given back; the stubborn one is left to its lease, not
    # released for another instance to run beside this one.
    assert store.jobs[good].status == JobStatus.PENDING
    assert store.jobs[bad].status == JobStatus.RUNNING
    let_go.set()


async def test_a_result_too_large_to_store_fails_its_own_job_only() -> None:
    from jobwire.worker.outcomes import MAX_RESULT_BYTES

    async def huge(payload: Any, ctx: JobContext) -> str:
        return "x" * (MAX_RESULT_BYTES + 1)

    store = MemoryStore()
    bad, good = await store.enqueue_many([JobSpec("huge", max_attempts=1), JobSpec("echo", 1)])
    assert bad is not None and good is not None
    pool = make_pool(store, {"huge": huge}, fast_config())
    await pool.start()
    try:
        await wait_for(lambda: all_finished(store), what="both finished")
    finally:
        await pool.stop()
    assert store.jobs[good].status == JobStatus.SUCCEEDED
    job = store.jobs[bad]
    assert job.status == JobStatus.FAILED and job.result is None
    assert "more than a result may hold" in (job.last_error or "")


async def all_finished(store: MemoryStore) -> bool:
    return all(j.status in ("succeeded", "failed") for j in store.jobs.values())


async def test_a_plain_handler_past_its_timeout_never_runs_beside_its_retry() -> None:
    import threading
    import time

    lock = threading.Lock()
    running, peak, attempts = 0, 0, 0

    def slow(payload: Any, ctx: JobContext) -> None:
        nonlocal running, peak, attempts
        with lock:
            running += 1
            attempts += 1
            peak = max(peak, running)
        time.sleep(0.5)  # a thread cannot be stopped: it runs past the timeout
        with lock:
            running -= 1

    store = MemoryStore()
    (job_id,) = await store.enqueue_many([JobSpec("slow", queue="short", max_attempts=3)])
    assert job_id is not None
    config = fast_config(queues={"short": {"timeout": "100ms"}})
    pool = make_pool(store, {"slow": slow}, config)
    await pool.start()
    try:
        await wait_for(lambda: all_finished(store), timeout=15, what="three attempts")
    finally:
        await pool.stop()
    assert store.jobs[job_id].status == JobStatus.FAILED and attempts == 3
    assert peak == 1  # each retry waited for the thread before it


async def test_a_pool_loop_failing_the_same_way_logs_its_traceback_once() -> None:
    from structlog.testing import capture_logs

    from jobwire.worker.state import keep_running

    calls = 0

    async def loop() -> None:
        nonlocal calls
        calls += 1
        if calls <= 9:
            raise RuntimeError("read-only database")

    with capture_logs() as logs:
        await keep_running("claim", loop, first_delay=0.0001)
    crashed = [e for e in logs if e["event"] == "pool_loop_crashed"]
    assert calls == 10
    assert sum("exc_info" in e for e in crashed) == 1  # one traceback
    assert [e.get("repeats") for e in crashed] == [None, 1, 2, 4, 8]


async def test_a_progress_note_is_cut_to_a_line_for_a_list() -> None:
    from jobwire.handlers import MAX_PROGRESS_NOTE

    seen: list[str | None] = []

    async def chatty(payload: Any, ctx: JobContext) -> None:
        await ctx.progress(50, "n" * 10_000_000)
        seen.append(store.jobs[ctx.job_id].progress_note)

    store = MemoryStore()
    await store.enqueue_many([JobSpec("chatty")])
    pool = make_pool(store, {"chatty": chatty}, fast_config())
    await pool.start()
    try:
        await wait_for(lambda: all_finished(store), what="the job")
    finally:
        await pool.stop()
    assert seen == ["n" * MAX_PROGRESS_NOTE]


async def test_an_async_handler_that_blocks_the_loop_is_named() -> None:
    import time

    from structlog.testing import capture_logs

    async def blocker(payload: Any, ctx: JobContext) -> None:
        time.sleep(4)  # noqa: ASYNC251 - the mistake under test

    store = MemoryStore()
    await store.enqueue_many([JobSpec("blocker", max_attempts=1)])
    pool = make_pool(store, {"blocker": blocker}, fast_config(workers={"lease": "3s"}))
    with capture_logs() as logs:
        await pool.start()
        try:
            await wait_for(lambda: all_finished(store), what="the job's end")
        finally:
            await pool.stop()
    (blocked,) = [e for e in logs if e["event"] == "event_loop_blocked"]
    assert blocked["seconds"] >= 2 and blocked["handlers"] == ["blocker"]


async def test_an_async_handler_that_runs_on_past_its_timeout_is_named() -> None:
    from structlog.testing import capture_logs

    let_go = asyncio.Event()
    stubborn = stubborn_until(let_go)
    store = MemoryStore()
    (job_id,) = await store.enqueue_many([JobSpec("stubborn", queue="short", max_attempts=1)])
    assert job_id is not None
    config = fast_config(queues={"short": {"timeout": "100ms"}}, workers={"lease": "1500ms"})
    pool = make_pool(store, {"stubborn": stubborn}, config)

    def named(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [e for e in logs if e["event"] == "handler_ignoring_timeout"]

    with capture_logs() as logs:
        await pool.start()
        try:
            await wait_for(lambda: len(named(logs)) >= 2, timeout=15, what="named twice")
        finally:
            let_go.set()
            await pool.stop()
    first, second = named(logs)[:2]
    assert first["job_id"] == job_id and first["handler"] == "stubborn"
    assert first["seconds_over"] >= 2 and second["seconds_over"] >= 2 * first["seconds_over"]
    # Named, not given up on; once it returns, its attempt has timed out.
    job = store.jobs[job_id]
    assert job.status == JobStatus.FAILED and "timed out" in (job.last_error or "")


def forking(child: str, threaded: bool) -> Any:
    """A handler that forks; its child returns, raises or exits out of the handler (``child``),
    and the parent returns the child's exit status, killing it if it lingers."""
    import os
    import signal
    import time

    def in_child() -> Any:
        # Without the guard this child runs a copy of the test process on: bounded.
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.alarm(3)
        if child == "raises":
            raise RuntimeError("from the child")
        if child == "exits":
            raise SystemExit(4)
        return {"child": True}

    def reap(pid: int) -> int | None:
        # Bounded: without the guard the child runs a copy of this test process on.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.02)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return None  # it ran on

    if threaded:

        def plain(payload: Any, ctx: JobContext) -> Any:
            pid = os.fork()
            if pid == 0:
                return in_child()
            return {"child_exit": reap(pid)}

        return plain

    async def handler(payload: Any, ctx: JobContext) -> Any:
        pid = os.fork()
        if pid == 0:
            return in_child()
        return {"child_exit": await asyncio.to_thread(reap, pid)}

    return handler


@pytest.mark.parametrize("threaded", [False, True], ids=["async", "plain"])
@pytest.mark.parametrize(("child", "code"), [("returns", 0), ("raises", 1), ("exits", 4)])
async def test_a_forked_child_leaving_the_handler_ends_there(
    child: str, code: int, threaded: bool
) -> None:
    import warnings

    store = MemoryStore()
    (job_id,) = await store.enqueue_many([JobSpec("forks", max_attempts=1)])
    assert job_id is not None
    pool = make_pool(store, {"forks": forking(child, threaded)}, fast_config())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads running
        await pool.start()
        try:
            await wait_for(lambda: all_finished(store), timeout=15, what="the parent's attempt")
        finally:
            await pool.stop()
    job = store.jobs[job_id]
    # The child ended as it left the handler (not killed after running on as a second
    # pool), and only the parent's outcome was written.
    assert job.status == JobStatus.SUCCEEDED and job.result == {"child_exit": code}
    assert [r["status"] for r in await store.runs(job_id)] == ["succeeded"]


async def test_a_handler_closing_stderr_leaves_no_job_running(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from jobwire.logs import configure_logging

    log_file = (tmp_path / "stderr").open("w")
    monkeypatch.setattr(sys, "stderr", log_file)
    configure_logging("json", "info")
    # Not cached: a logger cached here would keep this test's closed stream for later tests,
    # whose capture_logs would then see nothing (the conftest's reset does not uncache).
    structlog.configure(cache_logger_on_first_use=False)

    async def closes_stderr(payload: Any, ctx: JobContext) -> None:
        sys.stderr.close()

    store = MemoryStore()
    (closer,) = await store.enqueue_many([JobSpec("closes_stderr")])
    assert closer is not None
    pool = make_pool(store, {"closes_stderr": closes_stderr}, fast_config())
    await pool.start()
    try:
        await wait_for(lambda: all_finished(store), what="the closing job")
        failing = await store.enqueue_many([JobSpec("fail", max_attempts=2) for _ in range(3)])
        # Their failures are logged: every log call raised, and the jobs stayed running.
        await wait_for(lambda: all_finished(store), timeout=10, what="the failing jobs")
    finally:
        await pool.stop()
        monkeypatch.undo()  # pytest reports on sys.stderr: not the closed one
    assert all(store.jobs[i].status == JobStatus.FAILED for i in failing if i is not None)
    assert (tmp_path / "stderr").read_text().count('"job_failed"') == 3
