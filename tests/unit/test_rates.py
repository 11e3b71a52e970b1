"""Rates as operators write them, the token bucket arithmetic, and the flow settings the
config accepts or refuses (with the key path named)."""

from __future__ import annotations

import pytest

from jobwire.config import Config
from jobwire.limits import (
    Buckets,
    Rate,
    check_queue_name,
    default_burst,
    make_rate,
    parse_rate,
)
from jobwire.models import JobSpec
from jobwire.routing import Router
from jobwire.store.base import ClaimFlow, ClaimRequest, QueueFlow
from jobwire.store.memory import MemoryStore
from tests.support.fake_adapter import FakeAdapter


@pytest.mark.parametrize(
    ("text", "per_second"),
    [
        ("50/s", 50.0),
        ("10/m", 10 / 60),
        ("1000/h", 1000 / 3600),
        ("2/d", 2 / 86400),
        (" 0.5 / second ", 0.5),
        ("3/MIN", 3 / 60),
    ],
)
def test_parse_rate(text: str, per_second: float) -> None:
    assert parse_rate(text) == pytest.approx(per_second)


@pytest.mark.parametrize("text", ["", "50", "50/", "/s", "50/x", "-1/s", "0/s", "1e3/s", "fast"])
def test_parse_rate_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="rate"):
        parse_rate(text)


@pytest.mark.parametrize("value", [50, None, 1.5, ["50/s"]])
def test_parse_rate_refuses_non_text(value: object) -> None:
    with pytest.raises(ValueError, match="rate"):
        parse_rate(value)


def test_default_burst_is_a_tenth_of_a_second_at_least_one() -> None:
    assert default_burst(20.0) == 2
    assert default_burst(1000.0) == 100
    assert default_burst(1 / 3600) == 1
    assert make_rate("50/s", None) == Rate(50.0, 5)
    assert make_rate("50/s", 7) == Rate(50.0, 7)


def test_refill_caps_at_burst_and_ignores_clock_going_back() -> None:
    rate = Rate(10.0, 3)
    assert rate.refill(0.0, 0.15) == pytest.approx(1.5)
    assert rate.refill(2.0, 100.0) == 3.0
    assert rate.refill(1.0, -5.0) == 1.0
    assert rate.wait_for_one(0.25) == pytest.approx(0.075)
    assert rate.wait_for_one(1.5) == 0.0


def test_buckets_allow_spend_and_say_when_to_claim_again() -> None:
    rates = {"queue:a": Rate(10.0, 5), "handler:h": Rate(1.0, 1)}
    buckets = Buckets(rates, {"queue:a": (0.5, 0.1)})  # 0.5 + 1.0 flowed in
    assert buckets.tokens == {"queue:a": pytest.approx(1.5), "handler:h": 1.0}
    assert buckets.allow("queue:a", 8) == 1
    assert buckets.allow("handler:h", 8) == 1
    due = buckets.spend({"queue:a": 1, "handler:h": 1})
    assert buckets.tokens["queue:a"] == pytest.approx(0.5)
    assert due == pytest.approx(0.05)  # queue:a's next token, the sooner of the two
    # A bucket that did not bind asks for no early claim.
    loose = Buckets({"queue:a": Rate(10.0, 5)}, {})
    assert loose.allow("queue:a", 3) == 3
    assert loose.spend({"queue:a": 3}) is None


def test_queue_names_an_operator_may_pause() -> None:
    assert check_queue_name("mail") is None
    assert check_queue_name("") is not None
    assert check_queue_name("  ") is not None
    assert check_queue_name("a\x00b") is not None
    assert check_queue_name("x" * 201) is not None
    assert check_queue_name("\udcff") is not None


def test_config_accepts_flow_settings() -> None:
    config = Config.model_validate(
        {
            "queues": {
                "slow": {"rate": "50/s", "burst": 10, "key_concurrency": 2, "ordered": True}
            },
            "handler_limits": {"email": {"rate": "1000/h"}},
            "sources": [],
        }
    )
    assert config.queue("slow").rate == "50/s"
    assert config.queue("slow").ordered is True
    assert config.queue("default").key_concurrency == 1
    assert config.handler_limits["email"].burst is None


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"queues": {"slow": {"rate": "50 per second"}}}, "rate"),
        ({"queues": {"slow": {"rate": "50/s", "burst": 0}}}, "burst"),
        ({"queues": {"slow": {"key_concurrency": 0}}}, "key_concurrency"),
        ({"handler_limits": {"email": {}}}, "rate"),
        ({"handler_limits": {"email": {"rate": "5/s", "extra": 1}}}, "extra"),
    ],
)
def test_config_refuses_bad_flow_settings(data: dict[str, object], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        Config.model_validate(data)


async def test_memory_store_flow_claim_keeps_key_and_handler_limits() -> None:
    store = MemoryStore()
    specs = [JobSpec("h", {"i": i}, concurrency_key=f"k{i % 2}") for i in range(6)]
    specs += [JobSpec("capped", {"i": 10 + i}) for i in range(4)]
    specs += [JobSpec("free", {"i": 20 + i}) for i in range(2)]
    await store.enqueue_many(specs)
    flow = ClaimFlow(
        {"default": QueueFlow(key_limit=1, only_special=True)}, {"capped": Rate(0.001, 2)}
    )
    jobs = await store.claim(ClaimRequest({"default": 20}, 20, "w", 30, flow))
    by_handler = sorted(j.handler for j in jobs)
    # One job per key, two of the capped handler (its burst), both free ones.
    assert by_handler == ["capped", "capped", "free", "free", "h", "h"]
    assert sorted(j.concurrency_key or "" for j in jobs if j.handler == "h") == ["k0", "k1"]
    again = await store.claim(ClaimRequest({"default": 20}, 20, "w", 30, flow))
    assert again == []  # keys busy, no capped tokens left


def _router(route: dict[str, object]) -> Router:
    config = Config.model_validate(
        {"sources": [{"name": "orders", "type": "amqp", "queue": "q", "route": route}]}
    )
    return Router(config.sources[0], {"email"}, "property:message_id")


@pytest.mark.parametrize(
    ("selector", "body", "headers", "props", "key"),
    [
        ("json:$.tenant", b'{"tenant": "acme"}', {}, {}, "acme"),
        ("json:$.tenant", b'{"tenant": 42}', {}, {}, "42"),
        ("json:$.tenant", b'{"other": 1}', {}, {}, None),  # absent: not keyed
        ("header:x-tenant", b"{}", {"x-tenant": "t1"}, {}, "t1"),
        ("property:key", b"{}", {}, {"key": "kafka-key"}, "kafka-key"),
        ("none", b'{"tenant": "acme"}', {}, {}, None),
    ],
)
def test_a_route_selects_the_concurrency_key(
    selector: str, body: bytes, headers: dict[str, str], props: dict[str, object], key: str | None
) -> None:
    router = _router({"handler": "email", "concurrency_key": selector})
    routed = router.route_message(FakeAdapter("orders").message(body, headers, None, props))
    assert routed.invalid is None
    assert routed.spec.concurrency_key == key


def test_a_bad_concurrency_key_selector_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="selector"):
        _router({"handler": "email", "concurrency_key": "tenant"})
