"""Generated hostile messages through routing, the intake and the real PostgreSQL store.

The promise: every message makes exactly one row (a runnable job, or a failed one holding
the raw body and the reason), every delivery is acked, and nothing raises or holds the
source: only a store outage may do that.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobwire.config import Config
from jobwire.intake import Intake
from jobwire.routing import Router
from jobwire.store.postgres import PostgresStore
from tests.support.fake_adapter import FakeAdapter
from tests.unit.test_intake import FakePool

# Any code point, surrogates included, with the ones stores and protocols trip on made common.
ANY_CHAR = st.characters(min_codepoint=0, max_codepoint=0x10FFFF, categories=None)
NASTY = st.sampled_from(["\x00", "\ud800", "\udfff", "\\u0000", "'", '"', "\\", "\n", "é", "😀"])
TEXT = st.lists(st.one_of(ANY_CHAR, NASTY), max_size=40).map("".join)
HUGE_TEXT = st.builds(lambda c, n: c * n, st.one_of(ANY_CHAR, NASTY), st.integers(2_000, 40_000))

JSON_SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    TEXT,
)
JSON_VALUE = st.recursive(
    JSON_SCALAR,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)),
    max_leaves=12,
)
PRIORITY = st.one_of(
    st.integers(),
    st.sampled_from(["Infinity", "-Infinity", "NaN", "99999999999", "1e400", "", "²", "0x10"]),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    TEXT,
)


def _json_body(value: Any, kind: str, handler: str) -> bytes:
    document = {"type": handler, "v": value}
    if kind == "deep":
        return b'{"type": "noop", "v": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    text = json.dumps(document, ensure_ascii=(kind == "ascii"), allow_nan=True)
    return text.encode("utf-8", "surrogatepass")


BODY = st.one_of(
    st.binary(max_size=200),
    st.builds(
        _json_body,
        JSON_VALUE,
        st.sampled_from(["ascii", "utf8", "deep"]),
        st.sampled_from(["noop", "echo", "os:system", "", "nope\x00"]),
    ),
)


@st.composite
def messages(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Between 1 and 12 deliveries, each as its parts."""
    out = []
    for _ in range(draw(st.integers(1, 12))):
        headers = draw(st.dictionaries(TEXT, st.one_of(TEXT, HUGE_TEXT), max_size=5))
        if draw(st.booleans()):
            headers["priority"] = str(draw(PRIORITY))
        out.append(
            {
                "body": draw(BODY),
                "headers": headers,
                "message_id": draw(st.one_of(TEXT, HUGE_TEXT)),
                "content_type": draw(
                    st.sampled_from([None, "application/json", "text/plain", "a\x00b"])
                ),
            }
        )
    return out


@pytest.fixture
def runner(database_url: str) -> Iterator[tuple[asyncio.AbstractEventLoop, PostgresStore]]:
    """One event loop and one store for every generated example of a test."""
    loop = asyncio.new_event_loop()
    store = loop.run_until_complete(PostgresStore.connect(database_url, min_size=1, max_size=4))
    yield loop, store
    loop.run_until_complete(store.close())
    loop.close()


async def _drive(
    store: PostgresStore, deliveries: list[dict[str, Any]], route: dict[str, Any]
) -> str:
    name = f"s{uuid.uuid4().hex[:12]}"
    config = Config.model_validate(
        {"sources": [{"name": name, "type": "amqp", "queue": "q", "route": route}]}
    )
    adapter = FakeAdapter(name)
    pool = FakePool(free=3)
    router = Router(config.sources[0], {"noop", "echo"}, "property:message_id")
    intake = Intake(config.sources[0], adapter, router, store, pool)
    batch = []
    for index, parts in enumerate(deliveries):
        message = adapter.message(
            parts["body"],
            headers=parts["headers"],
            content_type=parts["content_type"],
            # A distinct prefix: each delivery is its own message, never a redelivery.
            properties={"message_id": f"{index}:{parts['message_id']}"},
        )
        batch.append(message)
    await intake.process(batch)
    assert adapter.pauses == 0, "held for the store by a message's content"
    assert len(adapter.settled) == len(batch)
    assert set(adapter.settled.values()) == {"ack"}
    return name


async def _rows(store: PostgresStore, source: str) -> list[dict[str, Any]]:
    async with store._pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT status, body, last_error, payload FROM jobs WHERE source = $1", source
        )
    return [dict(r) for r in rows]


ROUTES = [
    {"handler": "noop", "priority": "header:priority"},
    {"handler_from": "json:$.type", "priority": "json:$.v"},
]


@pytest.mark.slow
@pytest.mark.parametrize("route", ROUTES, ids=["static", "from-json"])
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(deliveries=messages())
def test_every_generated_message_makes_exactly_one_row(
    runner: tuple[asyncio.AbstractEventLoop, PostgresStore],
    route: dict[str, Any],
    deliveries: list[dict[str, Any]],
) -> None:
    loop, store = runner
    source = loop.run_until_complete(_drive(store, deliveries, route))
    rows = loop.run_until_complete(_rows(store, source))
    assert len(rows) == len(deliveries)
    for row in rows:
        if row["status"] == "failed":
            assert row["last_error"], "a failed job says why"
            assert row["body"] is not None, "a failed job keeps the raw body"
        else:
            assert row["status"] in ("pending", "running")
