"""The lenient decoder: what pamqp refuses in a delivery's frames (octets that are not UTF-8,
a timestamp no datetime holds, headers nested too deep) decoded anyway; what pamqp reads,
read the same; a broken frame still None."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pamqp.frame
from hypothesis import given
from hypothesis import strategies as st
from pamqp import commands, header

from jobwire.adapters.amqp import lenient
from tests.unit.test_amqp_decode import _fields, properties


def _frame(props: commands.Basic.Properties) -> bytes:
    return pamqp.frame.marshal(header.ContentHeader(0, 5, props), 1)


def _swap(data: bytes, old: bytes, new: bytes) -> bytes:
    """The same frame with one run of bytes replaced by another of the same length."""
    assert len(old) == len(new) and data.count(old) == 1
    return data.replace(old, new)


def _decoded(data: bytes) -> Any:
    result = lenient.frame(data, 0, len(data))
    assert result is not None
    size, channel, frame = result
    assert (size, channel) == (len(data), 1)
    return frame.properties


@given(properties)
def test_a_header_pamqp_reads_is_read_the_same(props: dict[str, Any]) -> None:
    data = _frame(commands.Basic.Properties(**props))
    ours = lenient.frame(data, 0, len(data))
    assert ours is not None
    assert _fields(ours[2]) == _fields(pamqp.frame.unmarshal(data)[2])


def test_short_strings_that_are_not_utf8_keep_their_bytes() -> None:
    props = commands.Basic.Properties(
        message_id="AAAA", correlation_id="BB", app_id="ok", headers={"kCC": "v"}
    )
    data = _frame(props)
    data = _swap(data, b"AAAA", b"\xff\xfe-1")
    data = _swap(data, b"\x02BB", b"\x02\xff\xfd")
    data = _swap(data, b"kCC", b"k\xff\xff")
    got = _decoded(data)
    # surrogateescape: the adapter spells these as their bytes (storable.whole_text)
    assert got.message_id.encode("utf-8", "surrogateescape") == b"\xff\xfe-1"
    assert got.correlation_id.encode("utf-8", "surrogateescape") == b"\xff\xfd"
    assert got.app_id == "ok"
    assert {k.encode("utf-8", "surrogateescape"): v for k, v in got.headers.items()} == {
        b"k\xff\xff": "v"
    }


def test_a_deliver_whose_routing_key_is_not_utf8_is_read() -> None:
    data = pamqp.frame.marshal(commands.Basic.Deliver("c", 9, routing_key="RK"), 1)
    data = _swap(data, b"\x02RK", b"\x02\xff\xfe")
    result = lenient.frame(data, 0, len(data))
    assert result is not None
    deliver = result[2]
    assert deliver.delivery_tag == 9 and deliver.consumer_tag == "c"
    assert deliver.routing_key.encode("utf-8", "surrogateescape") == b"\xff\xfe"


def test_headers_nested_past_the_limit_are_skipped_by_their_length() -> None:
    nested: dict[str, Any] = {"x": 1}
    for _ in range(lenient.MAX_DEPTH + 5):
        nested = {"n": nested}
    data = _frame(commands.Basic.Properties(message_id="m", headers={"deep": nested, "z": 2}))
    got = _decoded(data)
    assert got.message_id == "m" and got.headers["z"] == 2
    level = got.headers["deep"]
    depth = 1
    while isinstance(level, dict):
        level, depth = level["n"], depth + 1
    assert level == lenient.TOO_DEEP and depth == lenient.MAX_DEPTH


def test_a_timestamp_no_datetime_holds_is_left_out() -> None:
    # pamqp will not write a timestamp past year 9999: one is written, then overwritten
    # (with only these two set, the timestamp is the last eight bytes of the payload).
    props = commands.Basic.Properties(message_id="m", timestamp=datetime.fromtimestamp(1, UTC))
    whole = _frame(props)
    data = whole[:-9] + (2**63 - 1).to_bytes(8, "big") + whole[-1:]
    got = _decoded(data)
    assert got.timestamp is None and got.message_id == "m"


@given(st.binary(max_size=60), st.integers(0, 80))
def test_broken_frames_are_none_never_an_exception(noise: bytes, cut: int) -> None:
    whole = _frame(commands.Basic.Properties(message_id="m", headers={"a": {"b": [1, "x"]}}))
    payload = (whole[7:-1] + noise)[: max(1, len(whole) - 8 - cut)]
    data = whole[:3] + len(payload).to_bytes(4, "big") + payload + b"\xce"
    result = lenient.frame(data, 0, len(data))
    assert result is None or isinstance(result[2], header.ContentHeader)


def test_other_frames_are_not_taken() -> None:
    for other in (commands.Basic.Ack(5, multiple=True), commands.Basic.ConsumeOk("ctag")):
        data = pamqp.frame.marshal(other, 1)
        assert lenient.frame(data, 0, len(data)) is None
