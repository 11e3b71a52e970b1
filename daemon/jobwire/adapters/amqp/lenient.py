"""A content header pamqp refuses, decoded anyway, so that one message cannot end the
connection for good.

AMQP 0-9-1 short strings (message_id, correlation_id, type, app_id, a header's name) are
octets, and RabbitMQ passes any on; pamqp decodes them as UTF-8 and raises on anything else,
as it does on a timestamp past the year 9999. aiormq then closes the connection, the broker
gives the same message to the next one, and the source never gets past it. Here such a
string is kept whole as ``base64:`` and its bytes (as the Kafka source keeps header bytes),
and a timestamp no datetime can hold is left out (jobwire reads none). Only a header pamqp
refused comes here; any other broken frame still ends the connection, as before.
"""

from __future__ import annotations

import base64
import datetime
import struct
from typing import Any

from pamqp import decode as pamqp_decode
from pamqp.header import ContentHeader

from jobwire.adapters.amqp.decode import (
    FRAME_END,
    FRAME_HEADER,
    HEADER_SIZE,
    PROPERTY_FIELDS,
    Properties,
    header_of,
    header_start,
)

_LENGTH = struct.Struct(">I")
_TIMESTAMP = struct.Struct(">Q")


class Unreadable(ValueError):
    """Not even this decoder can read the header: the frame is broken."""


def text(raw: bytes) -> str:
    """Octets as text: UTF-8 as it is, anything else as ``base64:`` and its bytes."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(raw).decode("ascii")


def content_header(data: bytes, start: int, stop: int) -> tuple[int, int, ContentHeader] | None:
    """``(size, channel, header)`` as ``frames`` hands a frame on; None if not a content
    header, or one this cannot read either."""
    payload_start, end = start + HEADER_SIZE, stop - 1
    if data[start] != FRAME_HEADER or end <= payload_start or data[end] != FRAME_END:
        return None
    try:
        header = _header(data, payload_start, end)
    except (ValueError, struct.error, IndexError):  # ours, and pamqp's decoders'
        return None
    return stop - start, int.from_bytes(data[start + 1 : start + 3], "big"), header


def _header(data: bytes, position: int, end: int) -> ContentHeader:
    class_id, weight, body_size, flags, position = header_start(data, position, end)
    properties = Properties.__new__(Properties)
    value: Any
    for name, flag, kind, absent in PROPERTY_FIELDS:
        if not flags & flag:
            value = absent
        elif kind == "shortstr":
            value, position = _short_str(data, position, end)
        elif kind == "octet":
            value, position = data[position], position + 1
        elif kind == "timestamp":
            value, position = _timestamp(data, position, end)
        elif kind == "table":
            value, position = _table(data, position, end)
        else:
            raise Unreadable
        setattr(properties, name, value)
    if position != end:
        raise Unreadable
    return header_of(class_id, weight, body_size, properties)


def _short_str(data: bytes, position: int, end: int) -> tuple[str, int]:
    stop = position + 1 + data[position]
    if stop > end:
        raise Unreadable
    return text(data[position + 1 : stop]), stop


def _timestamp(data: bytes, position: int, end: int) -> tuple[datetime.datetime | None, int]:
    if position + 8 > end:
        raise Unreadable
    try:
        _, value = pamqp_decode.timestamp(data[position : position + 8])
    except (ValueError, OverflowError, OSError):
        value = None  # past what a datetime holds
    return value, position + 8


def _table(data: bytes, position: int, end: int) -> tuple[dict[str, Any], int]:
    (length,) = _LENGTH.unpack_from(data, position)
    position += 4
    stop = position + length
    if stop > end:
        raise Unreadable
    table: dict[str, Any] = {}
    while position < stop:
        key, position = _short_str(data, position, stop)
        table[key], position = _value(data, position, stop)
    return table, stop


def _array(data: bytes, position: int, end: int) -> tuple[list[Any], int]:
    (length,) = _LENGTH.unpack_from(data, position)
    position += 4
    stop = position + length
    if stop > end:
        raise Unreadable
    items: list[Any] = []
    while position < stop:
        value, position = _value(data, position, stop)
        items.append(value)
    return items, stop


def _value(data: bytes, position: int, end: int) -> tuple[Any, int]:
    """One typed value of a table or array; pamqp's decoders for all but those that hold
    names, timestamps or nested values."""
    kind = data[position : position + 1]
    position += 1
    if kind == b"F":
        return _table(data, position, end)
    if kind == b"A":
        return _array(data, position, end)
    if kind == b"T":
        return _timestamp(data, position, end)
    decoder = pamqp_decode.TABLE_MAPPING.get(kind)
    if decoder is None:
        raise Unreadable
    consumed, value = decoder(data[position:end])
    if position + consumed > end:
        raise Unreadable
    return value, position + consumed
