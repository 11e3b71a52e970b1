"""The direct decoder gives pamqp's frames for deliveries, and leaves every other frame to it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pamqp.frame
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import body, commands, header, heartbeat
from pamqp.exceptions import PAMQPException

from jobwire.adapters.amqp import decode as amqp_decode

short_text = st.text(max_size=40).filter(lambda s: len(s.encode()) <= 255)
# pamqp will only write exchange names AMQP allows (a broker sends no others).
exchange_names = st.from_regex(r"[a-zA-Z0-9_.:-]{0,127}", fullmatch=True)
header_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(width=32, allow_nan=False, allow_infinity=False)  # pamqp writes single floats
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(short_text, inner, max_size=3),
    max_leaves=6,
)
timestamps = st.integers(0, 2**32).map(lambda s: datetime.fromtimestamp(s, UTC))
properties = st.fixed_dictionaries(
    {},
    optional={
        "content_type": short_text,
        "content_encoding": short_text,
        "headers": st.dictionaries(short_text, header_values, max_size=4),
        "delivery_mode": st.sampled_from([1, 2]),
        "priority": st.integers(0, 255),
        "correlation_id": short_text,
        "reply_to": short_text,
        "expiration": st.integers(0, 10**9).map(str),
        "message_id": short_text,
        "timestamp": timestamps,
        "message_type": short_text,
        "user_id": short_text,
        "app_id": short_text,
    },
)


def _fields(frame: Any) -> tuple[type, dict[str, Any]]:
    """A frame as its type and attribute values (pamqp's frames do not all compare)."""
    if isinstance(frame, header.ContentHeader):
        values = {k: getattr(frame, k) for k in ("class_id", "weight", "body_size")}
        props = frame.properties
        values.update({f"p.{k}": getattr(props, k) for k in props.__slots__})
        return type(frame), values
    if isinstance(frame, body.ContentBody):
        return type(frame), {"value": frame.value}
    return type(frame), {k: getattr(frame, k) for k in frame.__slots__}


def _same_as_pamqp(data: bytes) -> None:
    """decode() of one whole frame (placed mid-buffer) is None or exactly pamqp's result."""
    buffer = b"\x01\x02\x03" + data + b"\x04"
    ours = amqp_decode.decode(buffer, 3, 3 + len(data))
    try:
        theirs = pamqp.frame.unmarshal(data)
    except (PAMQPException, ValueError):  # a method index cut short: pamqp's ValueError
        assert ours is None, "pamqp refuses this frame; the decoder must leave it to pamqp"
        return
    if ours is not None:
        assert ours[:2] == theirs[:2]
        assert _fields(ours[2]) == _fields(theirs[2])


@settings(max_examples=400)
@given(
    consumer_tag=short_text,
    delivery_tag=st.integers(0, 2**63 - 1),  # what pamqp writes; above: the next test
    redelivered=st.booleans(),
    exchange=exchange_names,
    routing_key=short_text,
    channel=st.integers(1, 65535),
)
def test_a_deliver_frame_decodes_as_pamqp_does(
    consumer_tag: str,
    delivery_tag: int,
    redelivered: bool,
    exchange: str,
    routing_key: str,
    channel: int,
) -> None:
    method = commands.Basic.Deliver(consumer_tag, delivery_tag, redelivered, exchange, routing_key)
    data = pamqp.frame.marshal(method, channel)
    _same_as_pamqp(data)
    assert amqp_decode.decode(data, 0, len(data)) is not None  # well formed: taken directly


def test_a_delivery_tag_past_pamqps_signed_range_reads_as_pamqp_reads_it() -> None:
    deliver = pamqp.frame.marshal(commands.Basic.Deliver("c", 1, routing_key="q"), 1)
    tag_at = 7 + 4 + 2  # frame header, method index, "c" as a short string
    data = deliver[:tag_at] + b"\xff" * 8 + deliver[tag_at + 8 :]
    _same_as_pamqp(data)
    decoded = amqp_decode.decode(data, 0, len(data))
    assert decoded is not None and decoded[2].delivery_tag == -1


@settings(max_examples=400)
@given(props=properties, body_size=st.integers(0, 2**40), channel=st.integers(1, 65535))
def test_a_content_header_decodes_as_pamqp_does(
    props: dict[str, Any], body_size: int, channel: int
) -> None:
    data = pamqp.frame.marshal(
        header.ContentHeader(0, body_size, commands.Basic.Properties(**props)), channel
    )
    _same_as_pamqp(data)
    assert amqp_decode.decode(data, 0, len(data)) is not None


@given(content=st.binary(min_size=1, max_size=300), channel=st.integers(1, 65535))
def test_a_body_frame_decodes_as_pamqp_does(content: bytes, channel: int) -> None:
    data = pamqp.frame.marshal(body.ContentBody(content), channel)
    _same_as_pamqp(data)
    assert amqp_decode.decode(data, 0, len(data)) is not None


@settings(max_examples=600)
@given(
    props=properties,
    cut=st.integers(0, 400),
    flips=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=3),
    kind=st.sampled_from(["deliver", "header"]),
)
def test_a_damaged_frame_is_left_to_pamqp_or_read_as_pamqp_reads_it(
    props: dict[str, Any], cut: int, flips: list[tuple[int, int]], kind: str
) -> None:
    """Truncated payloads (the size field fixed to match) and bytes changed anywhere after
    the frame header: never a frame pamqp would not give, never an exception."""
    if kind == "deliver":
        frame: Any = commands.Basic.Deliver("ctag", 7, False, "ex", props.get("message_id", "k"))
    else:
        frame = header.ContentHeader(0, 15, commands.Basic.Properties(**props))
    whole = pamqp.frame.marshal(frame, 1)
    payload = bytearray(whole[7:-1])
    for position, value in flips:
        if payload:
            payload[position % len(payload)] = value
    payload = payload[: max(1, len(payload) - cut)]
    data = whole[:3] + len(payload).to_bytes(4, "big") + bytes(payload) + b"\xce"
    _same_as_pamqp(data)


def test_frames_it_does_not_take_go_to_pamqp() -> None:
    others = [
        pamqp.frame.marshal(heartbeat.Heartbeat(), 0),
        pamqp.frame.marshal(commands.Basic.Ack(5, multiple=True), 1),
        pamqp.frame.marshal(commands.Basic.ConsumeOk("ctag"), 1),
        pamqp.frame.marshal(commands.Channel.Close(404, "NOT_FOUND", 60, 40), 1),
    ]
    for data in others:
        assert amqp_decode.decode(data, 0, len(data)) is None
        _same_as_pamqp(data)


def test_a_second_flag_word_and_a_broken_frame_end_go_to_pamqp() -> None:
    props = commands.Basic.Properties(message_id="m")
    data = bytearray(pamqp.frame.marshal(header.ContentHeader(0, 3, props), 1))
    data[7 + 12 + 1] |= 1  # the first flag word's last bit: another word follows
    assert amqp_decode.decode(bytes(data), 0, len(data)) is None
    deliver = bytearray(pamqp.frame.marshal(commands.Basic.Deliver("c", 1, routing_key="q"), 1))
    deliver[-1] = 0
    assert amqp_decode.decode(bytes(deliver), 0, len(deliver)) is None
    with pytest.raises(PAMQPException):
        pamqp.frame.unmarshal(bytes(deliver))
