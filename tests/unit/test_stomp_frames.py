"""The STOMP frame splitter cuts frames as the spec does, NULs in headers or not, however the
bytes arrive; stomp.py then parses what it cuts into whole messages."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from typing import Any

import pytest
import stomp
import stomp.exception
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st
from stomp.utils import Frame

from jobwire.adapters.stomp import frames as stomp_frames
from jobwire.adapters.stomp.frames import (
    FrameSplitter,
    NulSafeConnection12,
    NulSafeTransport,
    choose,
    connection_class,
)


def _reference(stream: bytes) -> tuple[list[bytes], int]:
    """STOMP 1.2 read from the spec, on a whole stream: EOLs between frames are heart-beats;
    a frame's headers end at the first blank line; with content-length the body is that many
    octets, else it runs to the first NUL; then the NUL. Returns (frames, heart-beats)."""
    frames: list[bytes] = []
    beats = position = 0
    while position < len(stream):
        eol = re.match(rb"\r?\n", stream[position:])
        if eol:
            position += eol.end()
            beats += 1
            continue
        blank = re.compile(rb"\n\n|\r\n\r\n").search(stream, position)
        assert blank, "a frame without the blank line after its headers"
        length = None
        for line in re.split(rb"\r?\n", stream[position : blank.start()])[1:]:
            if line.startswith(b"content-length:"):
                length = int(line.removeprefix(b"content-length:"))
                break
        end = blank.end() + length if length is not None else stream.index(b"\0", blank.end())
        assert stream[end : end + 1] == b"\0", "a frame not ended by NUL"
        frames.append(stream[position:end])
        position = end + 1
    return frames, beats


def _frame(
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    with_length: bool,
    command: bytes = b"MESSAGE",
    eol: bytes = b"\n",
) -> bytes:
    """A frame without its NUL."""
    lines = [command, *(name + b":" + value for name, value in headers)]
    if with_length:
        lines.append(b"content-length:%d" % len(body))
    return eol.join(lines) + eol + eol + body


def _split(chunks: Iterator[bytes] | list[bytes]) -> tuple[list[bytes], int]:
    splitter = FrameSplitter()
    frames = [frame for chunk in chunks for frame in splitter.feed(chunk)]
    return frames, splitter.heartbeats


GOOD = _frame([(b"amqp-message-id", b"g1")], b'{"n": 1}', True)
VALUE_NUL = _frame([(b"amqp-message-id", b"h1"), (b"x-bad", b"a\0b")], b'{"n": 2}', True)
VALUE_NUL_NO_LENGTH = _frame([(b"x-bad", b"a\0b")], b'{"n": 3}', False)
NAME_NUL = _frame([(b"x\0n", b"v")], b'{"n": 4}', True)
NAME_NUL_NO_LENGTH = _frame([(b"x\0n", b"v"), (b"y", b"\0")], b'{"n": 5}', False, eol=b"\r\n")
BODY_NULS = _frame([(b"k", b"\0")], b"\0a\0\n\n\0", True)
RECEIPT = _frame([(b"receipt-id", b"r1")], b"", False, command=b"RECEIPT")
FRAMES = [GOOD, VALUE_NUL, VALUE_NUL_NO_LENGTH, NAME_NUL, NAME_NUL_NO_LENGTH, BODY_NULS, RECEIPT]
# As RabbitMQ sends them (an EOL after each NUL), with heart-beats of either EOL in between.
STREAM = b"\n".join(
    [
        GOOD + b"\0",
        VALUE_NUL + b"\0\r\n",
        VALUE_NUL_NO_LENGTH + b"\0",
        NAME_NUL + b"\0\n",
        NAME_NUL_NO_LENGTH + b"\0\r\n\r\n",
        BODY_NULS + b"\0",
        RECEIPT + b"\0",
    ]
)


def test_the_reference_cuts_the_stream_into_the_frames_it_was_made_of() -> None:
    assert _reference(STREAM) == (FRAMES, 10)


def test_several_frames_in_one_read() -> None:
    assert _split([STREAM]) == (FRAMES, 10)


@pytest.mark.parametrize("cut", range(1, len(STREAM)))
def test_a_read_cut_at_every_byte(cut: int) -> None:
    assert _split([STREAM[:cut], STREAM[cut:]]) == (FRAMES, 10)


def test_one_byte_per_read() -> None:
    assert _split(STREAM[i : i + 1] for i in range(len(STREAM))) == (FRAMES, 10)


def test_a_frame_is_handed_out_once_its_nul_is_read() -> None:
    splitter = FrameSplitter()
    assert splitter.feed(VALUE_NUL) == []  # the whole body, but not the NUL yet
    assert splitter.feed(b"\0" + GOOD[:5]) == [VALUE_NUL]
    assert splitter.feed(GOOD[5:] + b"\0") == [GOOD]


def test_heartbeats_alone() -> None:
    splitter = FrameSplitter()
    assert splitter.feed(b"\n") == []
    assert splitter.feed(b"\r") == []  # half a CRLF: not a frame's start
    assert splitter.feed(b"\n\n") == []
    assert splitter.heartbeats == 3
    assert splitter.feed(RECEIPT + b"\0") == [RECEIPT]


def test_a_wrong_content_length_keeps_the_declared_body_and_the_stream_goes_on() -> None:
    """The octet after the declared body is not the NUL: the rest up to the NUL is dropped,
    and the next frame is found whole."""
    liar = b"MESSAGE\ncontent-length:2\n\nabcd"
    with structlog.testing.capture_logs() as logs:
        assert _split([liar + b"\0\n" + GOOD + b"\0"]) == ([liar[:-2], GOOD], 1)
    assert [entry["event"] for entry in logs] == ["stomp_frame_longer_than_content_length"]


def test_a_content_length_that_is_not_a_number_is_no_content_length() -> None:
    frame = b"MESSAGE\ncontent-length:x\ncontent-length:3\n\nab"
    assert _split([frame + b"\0"]) == ([frame], 0)


_name = st.binary(min_size=1, max_size=6).map(
    lambda b: b.replace(b":", b"\0").replace(b"\n", b"\0").replace(b"\r", b"\0")
)
_value = st.binary(max_size=6).map(lambda b: b.replace(b"\n", b"\0").replace(b"\r", b"\0"))


@st.composite
def _frames(draw: st.DrawFn) -> bytes:
    with_length = draw(st.booleans())
    body = draw(st.binary(max_size=40))
    if not with_length:
        body = body.replace(b"\0", b"")
    headers = draw(st.lists(st.tuples(_name, _value), max_size=4))
    headers = [(name, value) for name, value in headers if name != b"content-length"]
    return _frame(
        headers,
        body,
        with_length,
        command=draw(st.sampled_from([b"MESSAGE", b"RECEIPT", b"ERROR"])),
        eol=draw(st.sampled_from([b"\n", b"\r\n"])),
    )


@settings(max_examples=300, deadline=None)
@given(
    frames=st.lists(st.tuples(_frames(), st.lists(st.sampled_from([b"\n", b"\r\n"]))), max_size=6),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12),
)
def test_any_frames_cut_anywhere(frames: list[tuple[bytes, list[bytes]]], cuts: list[int]) -> None:
    stream = b"".join(frame + b"\0" + b"".join(eols) for frame, eols in frames)
    expected = ([frame for frame, _ in frames], sum(len(eols) for _, eols in frames))
    assert _reference(stream) == expected
    bounds = sorted({0, len(stream), *(cut for cut in cuts if cut < len(stream))})
    assert _split([stream[a:b] for a, b in itertools.pairwise(bounds)]) == expected


def _received(chunks: list[bytes]) -> tuple[list[Frame], int]:
    """Run the chunks through NulSafeTransport's read path and stomp.py's own parsing, as
    its receiver thread does: (messages, heart-beats) as a listener is told of them."""
    messages: list[Frame] = []
    beats: list[None] = []

    class Listener(stomp.ConnectionListener):  # type: ignore[misc]
        def on_message(self, frame: Frame) -> None:
            messages.append(frame)

        def on_heartbeat(self) -> None:
            beats.append(None)

    transport = NulSafeTransport([("127.0.0.1", 1)], auto_decode=False)
    transport.set_listener("test", Listener())
    pending = iter(chunks)
    transport.receive = lambda: next(pending, b"")
    transport.running = True
    with pytest.raises(stomp.exception.ConnectionClosedException):
        for _ in range(len(chunks) + 1):
            transport._BaseTransport__read_frames()
    return messages, len(beats)


def test_stomp_py_parses_what_it_cuts_headers_as_text_with_their_nul() -> None:
    stream = GOOD + b"\0\n" + VALUE_NUL + b"\0\n" + NAME_NUL_NO_LENGTH + b"\0\n\n"
    for chunks in ([stream], [stream[i : i + 1] for i in range(len(stream))]):
        messages, _ = _received(chunks)
        assert [(m.headers, m.body) for m in messages] == [
            ({"amqp-message-id": "g1", "content-length": "8"}, b'{"n": 1}'),
            (
                {"amqp-message-id": "h1", "x-bad": "a\0b", "content-length": "8"},
                b'{"n": 2}',
            ),
            ({"x\0n": "v", "y": "\0"}, b'{"n": 5}'),
        ]


def test_a_read_of_heartbeats_alone_tells_the_listener() -> None:
    """A read that completes a frame needs no heart-beat besides: any frame is a sign of life."""
    messages, beats = _received([b"\n", b"\r\n", GOOD + b"\0\n", b"\r", b"\n"])
    assert (len(messages), beats) == (1, 3)


def test_connection_is_stomp_py_s_own_on_its_transport() -> None:
    """Built as Connection12 builds itself, only the transport differs."""
    args = {"heartbeats": (2000, 2000), "vhost": "/v", "reconnect_attempts_max": 1}
    ours = NulSafeConnection12([("broker", 61613)], timeout=10, **args)
    theirs = stomp.Connection12([("broker", 61613)], timeout=10, **args)
    assert type(ours.transport) is NulSafeTransport
    assert (ours.heartbeats, ours.version) == (theirs.heartbeats, theirs.version)
    assert ours.transport.vhost == theirs.transport.vhost
    for name in ("host_and_ports", "reconnect_attempts_max", "timeout"):
        attribute = f"_Transport__{name}"
        assert getattr(ours.transport, attribute) == getattr(theirs.transport, attribute)
    assert ours.transport.listeners.keys() == theirs.transport.listeners.keys()


def _choice(monkeypatch: pytest.MonkeyPatch, wanted: str | None) -> tuple[str, list[Any]]:
    """What ``choose`` picks with JOBWIRE_STOMP_FRAME_READER set to ``wanted`` (None:
    unset), and what it logged."""
    if wanted is None:
        monkeypatch.delenv("JOBWIRE_STOMP_FRAME_READER", raising=False)
    else:
        monkeypatch.setenv("JOBWIRE_STOMP_FRAME_READER", wanted)
    monkeypatch.setattr(stomp_frames, "_chosen", None)
    with structlog.testing.capture_logs() as logs:
        chosen = choose()
    return chosen, logs


def test_by_default_jobwire_s_own_client(monkeypatch: pytest.MonkeyPatch) -> None:
    chosen, logs = _choice(monkeypatch, None)
    assert chosen == "asyncio"
    assert [(e["log_level"], e["reader"], e["reason"]) for e in logs] == [("info", "asyncio", None)]


def test_the_environment_asks_for_stomp_py_with_this_reader(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    chosen, logs = _choice(monkeypatch, "nul-safe")
    assert chosen == "nul-safe"
    assert connection_class(chosen) is NulSafeConnection12
    assert [(e["log_level"], e["reader"]) for e in logs] == [("info", "nul-safe")]


def test_another_stomp_py_keeps_its_own_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stomp_frames, "SUPPORTED_STOMP", ("0.0.1",))
    chosen, logs = _choice(monkeypatch, "nul-safe")
    assert chosen == "stomp.py"
    assert connection_class(chosen) is stomp.Connection12
    assert [(e["log_level"], e["reader"]) for e in logs] == [("warning", "stomp.py")]
    assert "not one this reader was checked against" in logs[0]["reason"]


def test_the_environment_asks_for_stomp_py_s_own(monkeypatch: pytest.MonkeyPatch) -> None:
    chosen, logs = _choice(monkeypatch, "stomp.py")
    assert connection_class(chosen) is stomp.Connection12
    assert [(e["log_level"], e["reason"]) for e in logs] == [
        ("info", "JOBWIRE_STOMP_FRAME_READER=stomp.py")
    ]


def test_an_unknown_wish_keeps_the_default_with_a_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    chosen, logs = _choice(monkeypatch, "fast")
    assert chosen == "asyncio"
    assert [(e["log_level"], e["reader"]) for e in logs] == [("warning", "asyncio")]
    assert "none of asyncio, nul-safe, stomp.py" in logs[0]["reason"]
