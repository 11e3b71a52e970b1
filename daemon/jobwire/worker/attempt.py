"""One attempt of a job: its handler run under its timeout, and how it ended as an outcome.

Whatever the handler raises ends its own attempt, never the job's row or the daemon: a
drill found handlers (a BaseException of their own, SystemExit, a CancelledError they
raised, an exception whose ``__str__`` raises) that left their job running for good.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from jobwire.exceptions import Reject, Retry
from jobwire.handlers import JobContext
from jobwire.models import Job, JobStatus, Outcome, unreadable
from jobwire.worker.outcomes import OutcomeBuilder, describe, text_of
from jobwire.worker.state import Running, log

# A handler still running this long past its timeout is named, then at each doubling.
OVERDUE_FIRST = 2.0


class _Unrunnable(Exception):
    """The job as stored cannot be given to its handler (``models.unreadable``)."""


async def run(
    job: Job,
    ctx: JobContext,
    mine: Running,
    started: float,
    build: OutcomeBuilder,
    invoke: Callable[[], Awaitable[Any]],
    timeout: float | None,
    whose: str,
) -> Outcome | None:
    """Run the handler (``invoke``) and say how the attempt ended (None: no outcome to
    write: stopped at shutdown or with its lease lost)."""
    deadline: asyncio.Timeout | None = None
    try:
        problem = unreadable(job)
        if problem is not None:
            raise _Unrunnable(problem)
        if timeout is None:
            result = await invoke()
        else:
            mine.timeout_at = time.monotonic() + timeout
            async with asyncio.timeout(timeout) as deadline:
                result = await invoke()
            if deadline.expired():
                # The handler swallowed the timeout's cancellation and returned: the
                # attempt still timed out (it used to count as a success).
                raise TimeoutError
        return build.succeeded(job, result, time.monotonic() - started)
    except Retry as exc:
        reason = text_of(exc.reason)
        return build.retry_or_fail(job, reason, time.monotonic() - started, exc.after)
    except Reject as exc:
        return build.final(job, JobStatus.FAILED, f"rejected: {text_of(exc.reason)}", started)
    except _Unrunnable as exc:
        # No attempt can run it: failed at once, without retries.
        return build.final(job, JobStatus.FAILED, str(exc), started)
    except TimeoutError as exc:
        if deadline is not None and deadline.expired():
            ctx.cancel()
            reason = f"timed out after {timeout}s ({whose})"
        else:
            reason = describe(exc)
        return build.retry_or_fail(job, reason, time.monotonic() - started, None)
    except asyncio.CancelledError as exc:
        if mine.stop_reason == "cancelled":
            return build.final(job, JobStatus.CANCELLED, "cancelled by request", started)
        if mine.stop_reason is None:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # cancelled from outside the pool's own reasons: no outcome
            # The handler raised it itself: a failure like any other.
            return build.retry_or_fail(job, describe(exc), time.monotonic() - started, None)
        # "shutdown" and "lease_lost": no outcome; the job is released or taken back.
        return None
    except BaseException as exc:  # noqa: BLE001 - a handler's failure is data, not a crash
        # SystemExit, KeyboardInterrupt, GeneratorExit and the like from a handler are its
        # failure: they stopped the whole daemon, and left the job running for good.
        return build.retry_or_fail(job, describe(exc), time.monotonic() - started, None)


def name_overdue(running: Iterable[Running], now: float) -> None:
    """Log each async handler that swallowed its timeout's cancellation and runs on: it
    keeps its slot and its job running (lease renewed), and nothing else would say so.
    Named at 2 s past the timeout, then each time that doubles."""
    for mine in running:
        if mine.timeout_at is None or mine.stop_reason is not None:
            continue
        over = now - mine.timeout_at
        if over >= max(OVERDUE_FIRST, 2 * mine.overdue_named):
            mine.overdue_named = over
            log.warning(
                "handler_ignoring_timeout",
                job_id=mine.job.id,
                handler=mine.job.handler,
                seconds_over=round(over, 1),
            )
