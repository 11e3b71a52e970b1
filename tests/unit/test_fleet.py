"""Which queues may pace beside other instances: those whose other consumers get the same
competing sources' messages, or cannot run the queue at all."""

from __future__ import annotations

from typing import Any

from jobwire.config import Config
from jobwire.worker import fleet

AMQP = {"name": "orders", "type": "amqp", "queue": "q", "route": {"handler": "h"}}
STOMP = {"name": "events", "type": "stomp", "destination": "/queue/e", "route": {"handler": "h"}}
KAFKA = {"name": "clicks", "type": "kafka", "topics": ["t"], "route": {"handler": "h"}}


def config(*sources: dict[str, Any]) -> Config:
    return Config.model_validate({"sources": list(sources)})


def to(source: dict[str, Any], queue: str) -> dict[str, Any]:
    return {**source, "route": {**source["route"], "queue": queue}}


def test_a_twin_fed_by_the_same_competing_sources_leaves_pacing_on() -> None:
    mine = config(AMQP, to(STOMP, "other"))
    twin = fleet.describe(mine, ["default", "other"])
    assert fleet.paced_beside(mine, ["default", "other"], [twin, twin]) == {"default", "other"}


def test_an_instance_that_only_claims_turns_it_off() -> None:
    mine = config(AMQP)
    workers_only = fleet.describe(config(), ["default"])
    assert fleet.paced_beside(mine, ["default"], [fleet.describe(mine, ["default"])]) == {"default"}
    assert fleet.paced_beside(mine, ["default"], [workers_only]) == frozenset()


def test_an_instance_that_does_not_serve_the_queue_does_not_count() -> None:
    mine = config(AMQP)
    assert fleet.paced_beside(mine, ["default"], [fleet.describe(config(), ["elsewhere"])]) == {
        "default"
    }


def test_a_source_whose_share_the_broker_fixes_never_paces_beside_others() -> None:
    mine = config(KAFKA)
    assert fleet.paced_beside(mine, ["default"], [fleet.describe(mine, ["default"])]) == set()
    mixed = config(AMQP, KAFKA)  # both feed "default": the Kafka one's intake would wait too
    assert fleet.paced_beside(mixed, ["default"], [fleet.describe(mixed, ["default"])]) == set()


def test_a_row_that_says_nothing_is_taken_for_one_that_only_claims() -> None:
    mine = config(AMQP)
    for silent in ({}, {"serves": "default"}, {"serves": ["default"], "competing_sources": None}):
        assert fleet.paced_beside(mine, ["default"], [silent]) == frozenset()


def test_what_an_instance_writes() -> None:
    assert fleet.describe(config(KAFKA, to(AMQP, "b"), STOMP), ["b", "default"]) == {
        "serves": ["b", "default"],
        "competing_sources": ["events", "orders"],
    }


def test_a_row_with_entries_of_other_types_neither_matches_nor_breaks() -> None:
    mine = config(AMQP)
    odd = [
        {"serves": ["default"], "competing_sources": [{"orders": 1}, ["orders"], None, 7]},
        {"serves": [None, {"q": 1}], "competing_sources": []},  # does not serve "default"
    ]
    assert fleet.paced_beside(mine, ["default"], odd[:1]) == frozenset()
    assert fleet.paced_beside(mine, ["default"], odd[1:]) == {"default"}
