"""Config durations: finite, at most ten years, and command_timeout above 0 (a drill)."""

import pytest

from jobwire.config import ConfigError, parse_config


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        # NaN passed check-config; the pool's loops then crashed forever.
        ("workers: {poll_interval: .nan}", "workers.poll_interval", "finite"),
        # These failed only at run, in PostgreSQL, naming no key.
        ("workers: {lease: .inf}", "workers.lease", "finite"),
        ("workers: {lease: 100000000000d}", "workers.lease", "at most 3650d"),
        ("retention: {finished: 3651d}", "retention.finished", "at most 3650d"),
        ("database: {command_timeout: .nan}", "database.command_timeout", "finite"),
        # 0 passed the check; run then said "database unavailable".
        ("database: {command_timeout: 0}", "database.command_timeout", "greater than 0"),
    ],
)
def test_durations_run_would_refuse_are_refused_by_the_check(
    text: str, key: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "f.yaml", {})
    (problem,) = info.value.problems
    assert problem.key == key
    assert reason in problem.reason


def test_ten_years_is_still_a_duration() -> None:
    config = parse_config("retention: {finished: 3650d}", "f.yaml", {})
    assert config.retention.finished == 3650 * 86400
