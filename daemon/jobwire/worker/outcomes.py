"""What one attempt's end becomes: an Outcome to write, built from a result or an error."""

from __future__ import annotations

import json
import time
import traceback
from typing import Any

from jobwire.effects import EffectfulOutcome, Recorded
from jobwire.models import Job, JobStatus, Outcome
from jobwire.retry import Backoff, HandlerDefaults
from jobwire.storable import json_problem, storable_text

_MAX_ERROR_CHARS = 8000
# A result past this is refused by the builder: jsonb holds at most 255 MiB, and one result
# the server refuses costs its completion batch a second, one-by-one write.
MAX_RESULT_BYTES = 64 * 1024 * 1024
# A Retry(after=...) beyond this waits this long: PostgreSQL's interval has limits.
_MAX_RETRY_IN = 10 * 365 * 86400.0


class OutcomeBuilder:
    """Builds outcomes: success, a retry after the backoff (or failure at the last
    attempt), or a final status."""

    def __init__(self, backoff: Backoff, defaults: HandlerDefaults | None = None) -> None:
        self.backoff = backoff
        # Per-handler timeout and retry policy (handler_defaults:); None: ``backoff`` for all.
        self.defaults = defaults

    def succeeded(self, job: Job, result: Any, duration: float) -> Outcome:
        """Success, with the result as JSON; a result that is not JSON fails the job. A
        handler's recorded effects (``Recorded``) ride on the outcome, written with it."""
        effects = None
        if isinstance(result, Recorded):
            result, effects = result.value, result.effects
        try:
            # A result jsonb would refuse (NaN, a NUL, a lone surrogate) must not reach the
            # completion statement: it would refuse the whole batch with it.
            problem = json_problem(result, "result")
            result_json = None if result is None else json.dumps(result, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as exc:
            problem = f"not JSON serialisable: {exc}"
        else:
            if result_json is not None and len(result_json) > MAX_RESULT_BYTES // 4:
                size = len(result_json.encode("utf-8", "surrogatepass"))
                if size > MAX_RESULT_BYTES:
                    problem = (
                        f"{size} bytes of JSON, more than a result may hold ({MAX_RESULT_BYTES})"
                    )
        if problem is not None:
            return Outcome(
                job.id,
                job.attempts,
                JobStatus.FAILED,
                duration,
                error=storable_text(f"result cannot be stored: {problem}", _MAX_ERROR_CHARS),
            )
        if effects:
            return EffectfulOutcome(
                job.id,
                job.attempts,
                JobStatus.SUCCEEDED,
                duration,
                result_json=result_json,
                effects=effects,
            )
        return Outcome(job.id, job.attempts, JobStatus.SUCCEEDED, duration, result_json=result_json)

    def retry_or_fail(self, job: Job, error: str, duration: float, after: float | None) -> Outcome:
        """Retry after ``after`` (or the backoff), or fail if that was the last attempt."""
        # An error may quote message data (a NUL, a lone surrogate): stored as text anyway.
        error = storable_text(error, _MAX_ERROR_CHARS) or ""
        if job.attempts >= job.max_attempts:
            return Outcome(
                job.id,
                job.attempts,
                JobStatus.FAILED,
                duration,
                error=f"{error} (attempt {job.attempts} of {job.max_attempts})",
            )
        policy = self.backoff if self.defaults is None else self.defaults.policy(job.handler)
        delay = after if after is not None else policy.delay(job.attempts)
        if not 0.0 <= delay <= _MAX_RETRY_IN:  # NaN fails both tests
            delay = _MAX_RETRY_IN if delay > 0 else 0.0
        return Outcome(
            job.id, job.attempts, JobStatus.RETRYING, duration, error=error, retry_in=delay
        )

    def final(self, job: Job, status: JobStatus, error: str, started: float) -> Outcome:
        """A final status (failed, cancelled) for an attempt begun at ``started``."""
        clean = storable_text(error, _MAX_ERROR_CHARS)
        return Outcome(job.id, job.attempts, status, time.monotonic() - started, error=clean)


def describe(exc: BaseException) -> str:
    """``Type: message`` on the first line (for logs and lists), the traceback below it."""
    trace = "".join(traceback.format_exception(exc, limit=-8))
    return f"{type(exc).__name__}: {text_of(exc)}\n{trace[-_MAX_ERROR_CHARS:]}".rstrip()


def text_of(value: object) -> str:
    """``str(value)``, or a stand-in when that raises: a handler's exception (or a reason it
    passed to Retry or Reject) whose ``__str__`` raises left its job running for good."""
    if isinstance(value, str):
        return value
    try:
        return str(value)
    except BaseException:  # noqa: BLE001 - a handler's object: anything can come out
        return f"<{type(value).__name__} object that cannot be shown>"
