"""Reply-to at intake and completion: which reply addresses a request may name (one no reply
can be sent to fails the job, saying why), and the relay's wake once a reply is written."""

from __future__ import annotations

from typing import Any

import pytest

from jobwire.config import Config
from jobwire.handlers import HandlerRegistry, JobContext
from jobwire.models import JobSpec, JobStatus
from jobwire.reply import MAX_TOPIC_LEVELS, ReplyRefused, reply_address
from jobwire.routing import Poison, Router
from jobwire.store.memory import MemoryStore
from jobwire.worker import WorkerPool
from tests.support.fake_adapter import FakeAdapter
from tests.support.pools import fast_config
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(30)

OUT = "reply:rpc"


def test_usable_addresses_and_their_correlation() -> None:
    amqp = {"reply_to": "amq.gen-1", "correlation_id": "c-1"}
    assert reply_address(OUT, amqp) == {"output": OUT, "to": "amq.gen-1", "correlation": "c-1"}
    mqtt = {"response_topic": "a/b", "correlation_data": b"\x00\xff"}
    assert reply_address(OUT, mqtt) == {"output": OUT, "to": "a/b", "correlation": "AP8="}
    deep = "/".join(["x"] * MAX_TOPIC_LEVELS)
    assert reply_address(OUT, {"response_topic": deep}) == {"output": OUT, "to": deep}
    long_topic = "é" * 32_767  # 65,534 bytes
    assert reply_address(OUT, {"response_topic": long_topic}) is not None
    assert reply_address(OUT, {"reply_to": "q" * 255}) is not None


@pytest.mark.parametrize("properties", [{}, {"reply_to": None}, {"reply_to": ""}])
def test_no_address_is_no_reply(properties: dict[str, Any]) -> None:
    assert reply_address(OUT, properties) is None


@pytest.mark.parametrize(
    ("properties", "why"),
    [
        ({"response_topic": "replies/+/x"}, "wildcard"),
        ({"response_topic": "replies/#"}, "wildcard"),
        ({"response_topic": ""}, "empty"),
        ({"response_topic": "é" * 32_768}, "longer than 65535 bytes"),
        ({"response_topic": "/".join(["x"] * (MAX_TOPIC_LEVELS + 1))}, "deeper than 128"),
        ({"response_topic": "a/\x01b"}, "control character"),
        ({"response_topic": "a/\x85b"}, "control character"),
        ({"response_topic": "a/\ud800"}, "lone surrogate"),
        ({"reply_to": "q" * 256}, "longer than 255 bytes"),
        ({"reply_to": "amq.gen\x00-1"}, "NUL"),
        ({"reply_to": "amq.gen-1", "correlation_id": "c\x00-1"}, "correlation_id"),
        ({"reply_to": "amq.gen-1", "correlation_id": "c-\udc80"}, "lone surrogate"),
        ({"response_topic": 7}, "not text"),
    ],
)
def test_an_address_no_reply_can_go_to_is_refused(properties: dict[str, Any], why: str) -> None:
    with pytest.raises(ReplyRefused, match=why):
        reply_address(OUT, properties)


def mqtt_router() -> Router:
    """A reply: true MQTT 5 source's router."""
    config = Config.model_validate(
        {
            "sources": [
                {
                    "name": "rpc",
                    "type": "mqtt",
                    "url": "mqtt://127.0.0.1",
                    "topics": ["rpc"],
                    "protocol": "5",
                    "reply": True,
                    "route": {"handler": "email"},
                }
            ]
        }
    )
    return Router(config.sources[0], {"email"}, "header:id")


def request(body: bytes, topic: str, ct: str | None = "application/json") -> Any:
    """An MQTT request with this response topic and a message id header."""
    props = {"response_topic": topic, "correlation_data": b"c"}
    return FakeAdapter("rpc").message(body, {"id": "m-1"}, ct, props)


def test_a_request_with_a_wildcard_response_topic_becomes_a_failed_job() -> None:
    routed = mqtt_router().route_message(request(b'{"n": 1}', "replies/+"))
    assert routed.kind == Poison.BAD_REPLY
    assert routed.invalid is not None and "wildcard" in routed.invalid
    spec = routed.spec
    assert spec.failed_reason == routed.invalid and "'replies/+'" in spec.failed_reason
    assert spec.reply is None  # no reply row: it could never be sent
    assert spec.dedup_key == "rpc:m-1"  # its redelivery is the same failed job
    assert spec.body == b'{"n": 1}'


def test_a_poison_request_keeps_its_reason_and_its_reply() -> None:
    router = mqtt_router()
    both = router.route_message(request(b"{nope", "replies/#"))
    assert both.kind == Poison.NOT_JSON and both.spec.reply is None
    poison = router.route_message(request(b"{nope", "replies/1"))
    assert poison.kind == Poison.NOT_JSON
    assert poison.spec.reply == {"output": OUT, "to": "replies/1", "correlation": "Yw=="}


def test_a_good_request_carries_its_reply_address() -> None:
    routed = mqtt_router().route_message(request(b'{"n": 1}', "replies/1"))
    assert routed.invalid is None
    assert routed.spec.reply == {"output": OUT, "to": "replies/1", "correlation": "Yw=="}


async def test_a_written_batch_tells_the_outputs_it_wrote_rows_for() -> None:
    """Once the outcomes (and so the outbox rows) are in the store: a replying source's
    reply output for each finished job, not for a retry; a succeeded job's published
    messages' outputs; nothing for a job of a source that does not reply. (The daemon
    wakes those outputs' relays with it.)"""
    store = MemoryStore()
    told: list[tuple[frozenset[str], set[int | None]]] = []

    def on_written(outputs: set[str]) -> None:
        told.append((frozenset(outputs), {r.job_id for r in store.outbox}))  # rows by then

    async def publish(payload: dict[str, Any], ctx: JobContext) -> None:
        await ctx.publish("billing", payload)

    replies = {"a": "reply:a", "b": "reply:b"}
    registry = HandlerRegistry({"publish": publish})
    registry.outputs = frozenset({"billing"})
    pool = WorkerPool(store, registry, fast_config(), on_written=on_written, replies=replies)
    ids = await store.enqueue_many(
        [
            JobSpec("echo", {"n": 1}, source="a", reply={"output": "reply:a", "to": "q"}),
            JobSpec(
                "fail",
                {"message": "no"},
                max_attempts=2,
                source="b",
                reply={"output": "reply:b", "to": "q"},
            ),
            JobSpec("echo", {"n": 3}, source="c"),
            JobSpec("publish", {"n": 4}, source="c"),
        ]
    )
    await pool.start()
    try:
        every = {"billing", "reply:a", "reply:b"}
        await wait_for(
            lambda: every <= {o for outputs, _ in told for o in outputs}, what="three outputs told"
        )
    finally:
        await pool.stop()
    assert [j.status for j in store.jobs.values()] == [
        JobStatus.SUCCEEDED,
        JobStatus.FAILED,
        JobStatus.SUCCEEDED,
        JobStatus.SUCCEEDED,
    ]
    seen: dict[str, set[int | None]] = {}
    for outputs, rows in told:
        for output in outputs:
            assert output not in seen, f"{output} told twice (b's retry wrote no reply)"
            seen[output] = rows
    assert sorted(seen) == ["billing", "reply:a", "reply:b"]
    assert ids[0] in seen["reply:a"] and ids[1] in seen["reply:b"]
    assert ids[3] in seen["billing"]
