"""Per-handler defaults: the merge over retry: and the precedence job > handler > queue."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from jobwire.config import Config, ConfigError, parse_config
from jobwire.models import Job, JobStatus
from jobwire.retry import HandlerDefaults
from jobwire.store.memory import MemoryStore
from jobwire.worker.executor import Executor
from jobwire.worker.outcomes import OutcomeBuilder
from jobwire.worker.state import PoolState

YAML = """
queues: {default: {timeout: 30s}, long: {}}
retry: {max_attempts: 5, base: 2s, factor: 2, max: 10m, jitter: false}
handler_defaults:
  mail: {timeout: 5s, retry: {max_attempts: 8, base: 30s}}
  report: {retry: {factor: 3}}
"""


def config() -> Config:
    return parse_config(YAML, "jobwire.yaml")


def job(handler: str, max_attempts: int = 5, timeout: float | None = None, **kw: Any) -> Job:
    now = datetime.now(UTC)
    return Job(
        id=1,
        handler=handler,
        queue=kw.get("queue", "default"),
        status=JobStatus.RUNNING,
        priority=0,
        attempts=kw.get("attempts", 1),
        max_attempts=max_attempts,
        payload=None,
        run_at=now,
        created_at=now,
        timeout=timeout,
    )


def test_policy_merges_over_global_retry() -> None:
    defaults = HandlerDefaults.from_config(config())
    assert defaults.policy("mail").delay(1) == 30.0  # own base
    assert defaults.policy("mail").delay(2) == 60.0  # global factor 2
    assert defaults.policy("report").delay(2) == 6.0  # global base 2s, own factor 3
    assert defaults.policy("other").delay(2) == 4.0  # global policy


def test_max_attempts_precedence() -> None:
    defaults = HandlerDefaults.from_config(config())
    assert defaults.max_attempts("mail", 5) == 8  # stored = global default: the handler's
    assert defaults.max_attempts("mail", 3) == 3  # the job's own
    assert defaults.max_attempts("report", 5) == 5  # handler sets none: the stored value
    assert defaults.max_attempts("other", 5) == 5


def test_retry_outcome_uses_the_handlers_backoff() -> None:
    cfg = config()
    builder = OutcomeBuilder(HandlerDefaults(cfg.retry).default, HandlerDefaults.from_config(cfg))
    outcome = builder.retry_or_fail(job("mail", attempts=1, max_attempts=8), "x", 0.1, None)
    assert outcome.status == JobStatus.RETRYING and outcome.retry_in == 30.0
    outcome = builder.retry_or_fail(job("other", attempts=1), "x", 0.1, None)
    assert outcome.retry_in == 2.0


@pytest.mark.parametrize(
    ("the_job", "expected"),
    [
        (job("mail", timeout=60), (60, "the job's timeout")),
        (job("mail"), (5.0, "handler 'mail' timeout")),
        (job("report"), (30.0, "queue 'default' timeout")),
        (job("report", queue="long"), (None, "queue 'long' timeout")),
    ],
)
def test_timeout_precedence(the_job: Job, expected: tuple[float | None, str]) -> None:
    cfg = config()
    state = PoolState(cfg, "w1")
    outcomes = OutcomeBuilder(HandlerDefaults(cfg.retry).default, HandlerDefaults.from_config(cfg))
    executor = Executor(state, MemoryStore(), None, outcomes, lambda j, o: None)  # type: ignore[arg-type]
    assert executor._timeout_of(the_job) == expected


def test_bad_handler_defaults_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"handler_defaults\.mail\.retry\.max_attempts"):
        parse_config("handler_defaults: {mail: {retry: {max_attempts: 0}}}", "f.yaml")
    with pytest.raises(ConfigError, match=r"handler_defaults\.mail\.tiemout: unknown key"):
        parse_config("handler_defaults: {mail: {tiemout: 5s}}", "f.yaml")
