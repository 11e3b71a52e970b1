"""on_invalid dead-letter needs somewhere to put poison, or the broker drops it (issue 18)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from jobwire.adapters.amqp import AmqpSource
from jobwire.adapters.stomp import StompSource
from jobwire.config import ConfigError, parse_config


def _parse(source: dict[str, Any]) -> None:
    base = {"name": "s", "route": {"handler": "noop"}, "on_invalid": "dead-letter"}
    parse_config(yaml.safe_dump({"sources": [{**base, **source}]}), "jobwire.yaml")


def _problem(source: dict[str, Any]) -> tuple[str, str]:
    with pytest.raises(ConfigError) as caught:
        _parse(source)
    [problem] = caught.value.problems
    return problem.key, problem.reason


def test_amqp_dead_letter_without_an_exchange_is_refused_naming_the_key() -> None:
    key, reason = _problem({"type": "amqp", "queue": "orders"})
    assert key == "sources[0].dead_letter_exchange"
    assert "x-dead-letter-exchange in queue_arguments" in reason


def test_amqp_dead_letter_on_an_undeclared_queue_still_needs_the_exchange_named() -> None:
    key, reason = _problem({"type": "amqp", "queue": "orders", "declare": False})
    assert key == "sources[0].dead_letter_exchange"
    assert "declare: false" in reason


@pytest.mark.parametrize(
    "target",
    [
        {"dead_letter_exchange": "orders.dlx"},
        {"dead_letter_exchange": ""},  # the default exchange, with a routing key
        {"queue_arguments": {"x-dead-letter-exchange": "orders.dlx"}},
        {"declare": False, "dead_letter_exchange": "orders.dlx"},
    ],
)
def test_amqp_dead_letter_with_a_target_is_accepted(target: dict[str, Any]) -> None:
    _parse({"type": "amqp", "queue": "orders", **target})


def test_stomp_dead_letter_without_a_destination_is_refused_naming_the_key() -> None:
    key, reason = _problem({"type": "stomp", "destination": "/queue/jobs"})
    assert key == "sources[0].dead_letter_destination"
    assert "on_invalid dead-letter needs a destination" in reason


def test_stomp_dead_letter_destination_must_be_a_destination() -> None:
    key, reason = _problem(
        {"type": "stomp", "destination": "/queue/jobs", "dead_letter_destination": "jobs.dlq"}
    )
    assert key == "sources[0].dead_letter_destination"
    assert "pattern" in reason


def test_stomp_dead_letter_with_a_destination_is_accepted() -> None:
    _parse({"type": "stomp", "destination": "/queue/jobs", "dead_letter_destination": "/queue/dlq"})


def test_fail_needs_no_dead_letter_target() -> None:
    route = {"handler": "noop"}
    assert AmqpSource(name="a", type="amqp", queue="q", route=route).dead_letter_exchange is None
    stomp = StompSource(name="b", type="stomp", destination="/queue/q", route=route)
    assert stomp.dead_letter_destination is None
