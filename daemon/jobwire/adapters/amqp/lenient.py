"""A delivery's frame pamqp refuses, decoded anyway, so that one message cannot end the
connection for good.

AMQP 0-9-1 short strings (message_id, correlation_id, type, app_id, a header's name, the
exchange and routing key) are octets, and RabbitMQ passes any on; pamqp decodes them as
UTF-8 and raises on anything else, as it does on a timestamp past the year 9999 or a header
nested past Python's recursion limit. aiormq then closes the connection, the broker gives
the same message to the next one, and the source never gets past it. Here such a string is
decoded with ``surrogateescape`` (the adapter keeps its bytes whole, ``storable.whole_text``),
a timestamp no datetime can hold is left out, and tables nested past ``MAX_DEPTH`` are
skipped by their length. Only a Basic.Deliver or content header pamqp refused comes here;
any other broken frame still ends the connection, as before.
"""

from __future__ import annotations

import datetime
import struct
from typing import Any

from pamqp import decode as pamqp_decode

from jobwire.adapters.amqp.decode import (
    DELIVER_INDEX,
    FRAME_END,
    FRAME_HEADER,
    FRAME_METHOD,
    HEADER_SIZE,
    content_header_at,
    deliver_at,
    short_str,
)

_LENGTH = struct.Struct(">I")
# Deeper tables and arrays are kept as this text: no broker client nests headers this far,
# and each level is a Python call.
MAX_DEPTH = 32
TOO_DEEP = "[jobwire: nested deeper than 32 levels, left out]"


class Unreadable(ValueError):
    """Not even this decoder can read the frame: it is broken."""


def frame(data: bytes, start: int, stop: int) -> tuple[int, int, Any] | None:
    """``(size, channel, frame)`` as the frame reader hands a frame on, for a Basic.Deliver
    or a content header; None for any other frame, or one this cannot read either."""
    payload_start, end = start + HEADER_SIZE, stop - 1
    if end <= payload_start or data[end] != FRAME_END:
        return None
    kind = data[start]
    try:
        if kind == FRAME_HEADER:
            decoded: Any = content_header_at(data, payload_start, end, _short_str, _field)
        elif kind == FRAME_METHOD and data[payload_start : payload_start + 4] == DELIVER_INDEX:
            decoded = deliver_at(data, payload_start + 4, end, _short_str)
        else:
            return None
    except (ValueError, struct.error, IndexError):  # ours, and pamqp's decoders'
        return None
    return stop - start, int.from_bytes(data[start + 1 : start + 3], "big"), decoded


def _short_str(data: bytes, position: int, end: int) -> tuple[str, int]:
    return short_str(data, position, end, "surrogateescape")


def _field(data: bytes, position: int, end: int, kind: str) -> tuple[Any, int]:
    if kind == "timestamp":
        return _timestamp(data, position, end)
    if kind == "table":
        return _table(data, position, end, 0)
    raise Unreadable


def _timestamp(data: bytes, position: int, end: int) -> tuple[datetime.datetime | None, int]:
    if position + 8 > end:
        raise Unreadable
    try:
        _, value = pamqp_decode.timestamp(data[position : position + 8])
    except (ValueError, OverflowError, OSError):
        value = None  # past what a datetime holds
    return value, position + 8


def _span(data: bytes, position: int, end: int) -> tuple[int, int]:
    """Where a table's or array's items begin and end (after its length)."""
    (length,) = _LENGTH.unpack_from(data, position)
    stop = position + 4 + length
    if stop > end:
        raise Unreadable
    return position + 4, stop


def _table(data: bytes, position: int, end: int, depth: int) -> tuple[Any, int]:
    position, stop = _span(data, position, end)
    if depth >= MAX_DEPTH:
        return TOO_DEEP, stop
    table: dict[str, Any] = {}
    while position < stop:
        key, position = _short_str(data, position, stop)
        table[key], position = _value(data, position, stop, depth + 1)
    return table, stop


def _array(data: bytes, position: int, end: int, depth: int) -> tuple[Any, int]:
    position, stop = _span(data, position, end)
    if depth >= MAX_DEPTH:
        return TOO_DEEP, stop
    items: list[Any] = []
    while position < stop:
        value, position = _value(data, position, stop, depth + 1)
        items.append(value)
    return items, stop


def _value(data: bytes, position: int, end: int, depth: int) -> tuple[Any, int]:
    """One typed value of a table or array; pamqp's decoders for all but those that hold
    names, timestamps or nested values."""
    kind = data[position : position + 1]
    position += 1
    if kind == b"F":
        return _table(data, position, end, depth)
    if kind == b"A":
        return _array(data, position, end, depth)
    if kind == b"T":
        return _timestamp(data, position, end)
    decoder = pamqp_decode.TABLE_MAPPING.get(kind)
    if decoder is None:
        raise Unreadable
    consumed, value = decoder(data[position:end])
    if position + consumed > end:
        raise Unreadable
    return value, position + consumed
