from __future__ import annotations

from typing import Any

import pytest

from jobwire.config import Config, parse_config
from jobwire.routing import Router, route_problems
from jobwire.selectors import parse_selector
from tests.support.fake_adapter import FakeAdapter

ALLOWED = {"email", "reindex", "noop"}


def router(
    route: dict[str, Any], default_dedup: str | None = "property:message_id", **source: Any
) -> Router:
    config = Config.model_validate(
        {"sources": [{"name": "orders", "type": "amqp", "queue": "q", "route": route, **source}]}
    )
    return Router(config.sources[0], ALLOWED, default_dedup)


def msg(
    body: bytes,
    headers: dict[str, str] | None = None,
    ct: str | None = "application/json",
    props: dict[str, Any] | None = None,
) -> Any:
    return FakeAdapter("orders").message(body, headers, ct, props)


def test_static_handler_json_payload_and_default_dedup() -> None:
    r = router(
        {"handler": "email", "queue": "short", "priority": 3, "max_attempts": 2, "delay": "5s"}
    )
    result = r.route_message(msg(b'{"to": "a"}', {"h": "1"}, props={"message_id": "m-1"}))
    assert result.invalid is None
    spec = result.spec
    assert (spec.handler, spec.queue, spec.priority, spec.max_attempts, spec.delay) == (
        "email",
        "short",
        3,
        2,
        5.0,
    )
    assert spec.payload == {"to": "a"} and spec.body is None
    assert spec.dedup_key == "orders:m-1"  # prefixed with the source name
    assert spec.headers == {"h": "1"} and spec.source == "orders"


def test_handler_priority_and_dedup_from_selectors() -> None:
    r = router(
        {
            "handler_from": "json:$.type",
            "priority": "header:prio",
            "dedup_key": "json:$.meta.ids[1]",
        }
    )
    result = r.route_message(msg(b'{"type": "reindex", "meta": {"ids": [1, "b"]}}', {"prio": "7"}))
    assert result.invalid is None
    assert (result.spec.handler, result.spec.priority, result.spec.dedup_key) == (
        "reindex",
        7,
        "orders:b",
    )


def test_raw_body_kept_with_content_type() -> None:
    result = router({"handler": "email"}).route_message(msg(b"\x00\x01raw", ct="application/pdf"))
    assert result.invalid is None
    assert result.spec.payload is None and result.spec.body == b"\x00\x01raw"
    assert result.spec.content_type == "application/pdf"


def test_no_content_type_and_not_json_is_kept_raw_unless_json_is_needed() -> None:
    assert router({"handler": "email"}).route_message(msg(b"plain text", ct=None)).invalid is None
    result = router({"handler_from": "json:$.type"}).route_message(msg(b"plain text", ct=None))
    assert result.invalid is not None and "not valid JSON" in result.invalid


@pytest.mark.parametrize(
    ("route", "message", "reason"),
    [
        ({"handler": "email"}, msg(b"{broken", ct="application/json"), "body is not valid JSON"),
        ({"handler_from": "json:$.type"}, msg(b'{"x": 1}'), "no handler: json:$.type is missing"),
        (
            {"handler_from": "header:type"},
            msg(b"{}", {"type": "os.system"}),
            "handler 'os.system' (from header:type) is not in the allow-list",
        ),
        (
            {"handler_from": "json:$.type"},
            msg(b"abc", ct="text/plain"),
            "route reads json:$.type but the body is text/plain, not JSON",
        ),
        (
            {"handler": "email", "priority": "json:$.p"},
            msg(b'{"p": "high"}'),
            "priority from json:$.p is not an integer: 'high'",
        ),
        (
            {"handler": "email"},
            msg(b"x" * 2000, ct="text/plain"),
            "body of 2000 bytes exceeds max_body_bytes 1000",
        ),
    ],
)
def test_poison_messages_become_failed_specs_with_reasons(
    route: dict[str, Any], message: Any, reason: str
) -> None:
    result = router(route, max_body_bytes=1000).route_message(message)
    assert result.invalid is not None and result.invalid.startswith(reason)
    assert result.spec.failed_reason == result.invalid
    assert result.spec.body == message.body  # the raw body is kept
    assert result.spec.payload is None


def test_poison_message_keeps_its_dedup_key() -> None:
    result = router({"handler": "email"}).route_message(
        msg(b"{broken", props={"message_id": "p-1"})
    )
    assert result.invalid and result.spec.dedup_key == "orders:p-1"


def test_dedup_none_and_missing_key() -> None:
    assert (
        router({"handler": "email", "dedup_key": "none"})
        .route_message(msg(b"{}", props={"message_id": "x"}))
        .spec.dedup_key
        is None
    )
    assert router({"handler": "email"}).route_message(msg(b"{}")).spec.dedup_key is None


def test_static_handler_outside_allow_list_is_a_config_problem() -> None:
    config = parse_config(
        "sources: [{name: s, type: amqp, queue: q, route: {handler: nope}}]", "f.yaml", {}
    )
    (problem,) = route_problems(config, ALLOWED, "f.yaml")
    assert str(problem).startswith("f.yaml: sources[0].route.handler: 'nope' is not in handlers")


def test_selector_parsing() -> None:
    assert parse_selector("json:$.a.b[2]['c d']").steps == ("a", "b", 2, "c d")
    assert parse_selector("header:type").select({"type": "x"}, {}, None) == "x"
    for bad in ("json:a.b", "cookie:x", "header:", "json:$.a..b"):
        with pytest.raises(ValueError):
            parse_selector(bad)


@pytest.mark.parametrize(
    ("body", "stored_text"),
    [
        (b'{"n": 1, "s": "\xc3\xa9"}', '{"n": 1, "s": "\u00e9"}'),  # UTF-8: stored as it came
        (b'\xef\xbb\xbf{"n": 1, "s": "\xc3\xa9"}', '{"n": 1, "s": "\u00e9"}'),  # mark dropped
        ('{"n": 1, "s": "\u00e9"}'.encode("utf-16"), None),  # parsed, stored re-serialised
    ],
)
def test_json_bodies_in_each_encoding_json_reads(body: bytes, stored_text: str | None) -> None:
    result = router({"handler": "email"}).route_message(msg(body))
    assert result.invalid is None
    assert result.spec.payload == {"n": 1, "s": "\u00e9"}
    assert result.spec.payload_json == stored_text


@pytest.mark.parametrize("body", [b"\xef\xbb\xbf\xef\xbb\xbf{}", b"{\xff}", b"{"])
def test_broken_json_bodies_are_invalid(body: bytes) -> None:
    result = router({"handler": "email"}).route_message(msg(body))
    assert result.invalid is not None and "not valid JSON" in result.invalid
