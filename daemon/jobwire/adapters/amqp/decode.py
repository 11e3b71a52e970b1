"""The three frames of every delivery (Basic.Deliver, content header, body), decoded directly.

pamqp decodes a frame by walking its field list and slicing off the rest of the payload
after every field; for consumed messages that was most of the frame reader's time
(``bench/frame_reader.py``). ``decode`` builds the same pamqp objects from the same bytes
with offsets into the buffer. It takes only well-formed frames of these three kinds; for
anything else (another method, a field running past the frame, bad UTF-8, a second flag
word, trailing bytes) it returns None and the caller hands the frame to pamqp, so every
malformed frame meets pamqp's own checks and errors, exactly as before.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from pamqp import commands
from pamqp import decode as pamqp_decode
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

FRAME_METHOD, FRAME_HEADER, FRAME_BODY = 1, 2, 3
FRAME_END = 0xCE
# type (1) + channel (2) + size (4)
HEADER_SIZE = 7
DELIVER_INDEX = struct.pack(">I", commands.Basic.Deliver.index)
# class id, weight, body size, first flag word
CONTENT_HEADER = struct.Struct(">HHQH")

Deliver = commands.Basic.Deliver
Properties = commands.Basic.Properties
# (name, flag, AMQP type, value when absent) in pamqp's order, read from pamqp's own class
# and a default instance (absent is None for most, "" for cluster_id): no transcription.
_DEFAULT_PROPERTIES = Properties()
PROPERTY_FIELDS: tuple[tuple[str, int, str, Any], ...] = tuple(
    (
        name,
        Properties.flags[name],
        getattr(Properties, f"_{name}"),
        getattr(_DEFAULT_PROPERTIES, name),
    )
    for name in Properties.__slots__
)


class _Unusual(ValueError):
    """Not a frame this decoder takes: pamqp decodes it (or raises its own error)."""


def decode(data: bytes, start: int, stop: int) -> tuple[int, int, Any] | None:
    """``pamqp.frame.unmarshal(data[start:stop])`` for a delivery's frames; None for others."""
    payload_start, payload_end = start + HEADER_SIZE, stop - 1
    if payload_end <= payload_start or data[payload_end] != FRAME_END:
        return None  # empty (heartbeat, or pamqp's "no frame size") or a broken frame end
    kind = data[start]
    try:
        if kind == FRAME_BODY:
            frame: Any = ContentBody(data[payload_start:payload_end])
        elif kind == FRAME_HEADER:
            frame = content_header_at(data, payload_start, payload_end)
        elif kind == FRAME_METHOD and data[payload_start : payload_start + 4] == DELIVER_INDEX:
            frame = deliver_at(data, payload_start + 4, payload_end)
        else:
            return None
    except (_Unusual, ValueError, struct.error):  # UnicodeDecodeError is a ValueError
        return None
    return stop - start, int.from_bytes(data[start + 1 : start + 3], "big"), frame


ShortStr = Callable[[bytes, int, int], tuple[str, int]]
Field = Callable[[bytes, int, int, str], tuple[Any, int]]


def short_str(data: bytes, position: int, end: int, errors: str = "strict") -> tuple[str, int]:
    """A short string at ``position`` and where it ends; ValueError past ``end`` or (with
    ``errors`` strict) when it is not UTF-8."""
    if position >= end:
        raise _Unusual
    stop = position + 1 + data[position]
    if stop > end:
        raise _Unusual
    return data[position + 1 : stop].decode("utf-8", errors), stop


def _by_type(data: bytes, position: int, end: int, kind: str) -> tuple[Any, int]:
    """A table or timestamp: pamqp's decoder, on the same bytes it would see."""
    consumed, value = pamqp_decode.by_type(data[position:end], kind)
    return value, position + consumed


def deliver_at(data: bytes, position: int, end: int, read_str: ShortStr = short_str) -> Any:
    """Basic.Deliver's fields from ``position`` (after its method index) to ``end``."""
    consumer_tag, position = read_str(data, position, end)
    if position + 9 > end:
        raise _Unusual
    # pamqp reads a longlong as signed; so does this, to hand aiormq the same tag.
    delivery_tag = int.from_bytes(data[position : position + 8], "big", signed=True)
    redelivered = data[position + 8] & 1 == 1
    exchange, position = read_str(data, position + 9, end)
    routing_key, position = read_str(data, position, end)
    if position != end:
        raise _Unusual
    # pamqp's own unmarshal path does not validate either: it fills a default instance.
    frame = Deliver.__new__(Deliver)
    frame.consumer_tag = consumer_tag
    frame.delivery_tag = delivery_tag
    frame.redelivered = redelivered
    frame.exchange = exchange
    frame.routing_key = routing_key
    return frame


def header_start(data: bytes, position: int, end: int) -> tuple[int, int, int, int, int]:
    """A content header's class id, weight, body size and flag word, and where its
    properties begin; ValueError when too short, or when a second flag word follows (rare:
    pamqp reads it)."""
    if end - position < CONTENT_HEADER.size:
        raise _Unusual
    class_id, weight, body_size, flags = CONTENT_HEADER.unpack_from(data, position)
    if flags & 1:
        raise _Unusual
    return class_id, weight, body_size, flags, position + CONTENT_HEADER.size


def content_header_at(
    data: bytes,
    position: int,
    end: int,
    read_str: ShortStr = short_str,
    field: Field = _by_type,
) -> ContentHeader:
    """A content header's fields from ``position`` to ``end``; ``read_str`` reads the
    short strings, ``field`` the tables and timestamps."""
    class_id, weight, body_size, flags, position = header_start(data, position, end)
    properties = Properties.__new__(Properties)
    value: Any
    for name, flag, kind, absent in PROPERTY_FIELDS:
        if not flags & flag:
            value = absent
        elif kind == "shortstr":
            value, position = read_str(data, position, end)
        elif kind == "octet":
            if position >= end:
                raise _Unusual
            value = data[position]
            position += 1
        else:  # tables and timestamps
            value, position = field(data, position, end, kind)
        setattr(properties, name, value)
    if position != end:
        raise _Unusual
    return header_of(class_id, weight, body_size, properties)


def header_of(class_id: int, weight: int, body_size: int, properties: Any) -> ContentHeader:
    """The ContentHeader pamqp's unmarshal would give for these fields."""
    header = ContentHeader(weight, body_size, properties)
    # As pamqp's unmarshal sets it: its __init__ sets (and its stubs type) None.
    header.class_id = class_id  # type: ignore[assignment]
    return header
