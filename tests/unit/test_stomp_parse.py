"""jobwire's STOMP frame parser gives what stomp.py's ``parse_frame`` gives, for any frame;
only header bytes that are not UTF-8 (and text that reads as such, ``base64:``) are kept
whole (``storable.whole_text``), not replaced."""

from __future__ import annotations

from unittest import mock

import pytest
import stomp.utils
from hypothesis import given, settings
from hypothesis import strategies as st
from stomp.utils import Frame, parse_frame

from jobwire.adapters.stomp.aio import encode
from jobwire.adapters.stomp.parse import parse
from jobwire.storable import whole_text


def _reference(raw: bytes) -> Frame | None:
    """stomp.py's ``parse_frame``, its headers decoded without losing a byte."""

    def lossless(data: bytes | None, encoding: str = "utf-8") -> str | None:
        return None if data is None else data.decode(encoding, "surrogateescape")

    with mock.patch.object(stomp.utils, "decode", lossless):
        frame = parse_frame(raw)
    if frame is None:
        return None
    headers = {whole_text(k): whole_text(v) for k, v in frame.headers.items()}
    return Frame(whole_text(frame.cmd), headers, frame.body)


def _same(raw: bytes) -> Frame | None:
    ours, theirs = parse(raw), _reference(raw)
    if theirs is None:
        assert ours is None
        return None
    assert ours is not None
    assert (ours.cmd, ours.headers, ours.body) == (theirs.cmd, theirs.headers, theirs.body)
    return ours


def test_a_message_as_rabbitmq_sends_it() -> None:
    # A MESSAGE as RabbitMQ 3.10's STOMP plugin sent it for a queue read over STOMP.
    raw = (
        b"MESSAGE\nsubscription:1\ndestination:/queue/jw-cap-946cc8\n"
        b"message-id:T_1@@session-fg1_Jxco5AtttEi8r0fgUg@@1\nredelivered:false\n"
        b"ack:T_1@@session-fg1_Jxco5AtttEi8r0fgUg@@1\n"
        b"amqp-message-id:503532087ad742b5aa08e4254981a4e1\npriority:0\npersistent:true\n"
        b'content-type:application/json\ncontent-length:15\n\n{"bench": true}'
    )
    frame = _same(raw)
    assert frame is not None and frame.cmd == "MESSAGE" and len(frame.headers) == 10
    assert frame.headers["amqp-message-id"] == "503532087ad742b5aa08e4254981a4e1"
    assert frame.body == b'{"bench": true}'


# Escapes, CRLF lines and a CRLF blank line before an LF one (stomp.py reads these), then
# heart-beats only, no blank line, repeated and malformed header lines, NUL and bad UTF-8.
SHAPES = [
    b"MESSAGE\nx-key:a\\cb\\nc\\\\d\n\nbody",
    b"MESSAGE\r\nx-key:v\r\n\r\nbody\n\nmore",
    b"MESSAGE\nx-key:v\r\n\r\nbody\n\nmore",
    b"ERROR\nmessage:bad\\rthing\n\n",
    b"",
    b"\n",
    b"\n\n",
    b"\n\nMESSAGE\na:1\n\nbody",
    b"\nMESSAGE\na:1\n\nbody",
    b"MESSAGE",
    b"MESSAGE\na:1",
    b"MESSAGE\na:1\na:2\n\n",
    b"MESSAGE\n:nokey\nnocolon\nk:v:w\nk2:\n\n",
    b"MESSAGE\nk:\x00nul\xff\xfe\n\n\x00body\n\n",
    b"RECEIPT\nreceipt-id:7\n\n",
]


@pytest.mark.parametrize("raw", SHAPES)
def test_each_shape(raw: bytes) -> None:
    _same(raw)


_text = st.text(
    alphabet=st.sampled_from(["a", "b", ":", "\\", "\n", "\r", "c", "n", "\x00", "é", " "]),
    max_size=12,
)


@settings(max_examples=400)
@given(
    command=st.sampled_from(["MESSAGE", "RECEIPT", "ERROR", "CONNECTED"]),
    headers=st.dictionaries(_text, _text, max_size=5),
    body=st.binary(max_size=20),
    lead=st.sampled_from([b"", b"\n", b"\r\n", b"\n\n"]),
)
def test_any_encoded_frame(command: str, headers: dict[str, str], body: bytes, lead: bytes) -> None:
    raw = lead + encode(command, headers, body)[:-1]
    _same(raw)


@settings(max_examples=400)
@given(st.binary(max_size=60))
def test_any_bytes(raw: bytes) -> None:
    _same(raw)


@settings(max_examples=400)
@given(
    st.lists(
        st.sampled_from([b"MESSAGE", b"\n", b"\r", b"\\", b":", b"k", b"v", b"\xff", b"base64:"])
    )
)
def test_any_arrangement_of_the_bytes_that_matter(parts: list[bytes]) -> None:
    _same(b"".join(parts))


def test_ids_that_differ_only_in_bytes_that_are_not_utf8_stay_different() -> None:
    """stomp.py reads both as the same replacement character: one dedup key for two
    messages, and the second acknowledged as a duplicate of the first."""
    frames = [
        b"MESSAGE\namqp-message-id:bin-\xff\nk\\c\xfe:v\n\nbody",
        b"MESSAGE\namqp-message-id:bin-\xfe\nk\\c\xfe:v\n\nbody",
    ]
    ids = []
    for raw in frames:
        frame = _same(raw)
        assert frame is not None and frame.body == b"body"
        ids.append(frame.headers["amqp-message-id"])
        assert frame.headers["base64:azr+"] == "v"  # k, an escaped colon, 0xfe
    assert ids == ["base64:YmluLf8=", "base64:YmluLf4="]
    # Text that spells one of those as it is: a third id, not the first again.
    typed = _same(b"MESSAGE\namqp-message-id:base64:YmluLf8=\n\nbody")
    assert typed is not None and typed.headers["amqp-message-id"] not in ids
    assert parse_frame(frames[0]).headers == parse_frame(frames[1]).headers  # stomp.py: one
