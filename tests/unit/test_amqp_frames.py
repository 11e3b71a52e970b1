"""The bulk frame reader yields exactly aiormq's frames, however the bytes arrive."""

from __future__ import annotations

import asyncio
import random

import aiormq.connection
import pamqp.frame
import pytest
from aiormq.connection import FrameReceiver as AiormqFrameReceiver
from aiormq.exceptions import AMQPConnectionError, InvalidFrameError, ProtocolSyntaxError
from pamqp import body, commands, header, heartbeat

from jobwire.adapters.amqp import frames as amqp_frames
from jobwire.adapters.amqp.frames import READ_SIZE, BufferedFrameReceiver, install_fast_path


def _deliveries(count: int, body_size: int = 15) -> bytes:
    out = bytearray()
    for tag in range(1, count + 1):
        content = bytes(random.randrange(256) for _ in range(body_size))
        props = commands.Basic.Properties(
            message_id=f"m{tag}", content_type="application/json", headers={"k": "v"}
        )
        out += pamqp.frame.marshal(
            commands.Basic.Deliver(consumer_tag="ctag", delivery_tag=tag, routing_key="q"), 1
        )
        out += pamqp.frame.marshal(header.ContentHeader(0, len(content), props), 1)
        out += pamqp.frame.marshal(body.ContentBody(content), 1)
        if tag % 7 == 0:
            out += pamqp.frame.marshal(heartbeat.Heartbeat(), 0)
    return bytes(out)


async def _frames(receiver: object, expected: int) -> list[tuple[int, int, object]]:
    get_frame = receiver.get_frame  # type: ignore[attr-defined]
    return [await get_frame() for _ in range(expected)]


def _reader(data: bytes, chunk_sizes: list[int] | None = None) -> asyncio.StreamReader:
    """A stream that receives ``data`` in these pieces, one per turn of the loop (as a socket
    would), so reads see frames cut anywhere; all at once without sizes."""
    reader = asyncio.StreamReader(limit=2**24)
    if chunk_sizes is None:
        reader.feed_data(data)
        reader.feed_eof()
        return reader

    async def feed() -> None:
        position = 0
        for size in chunk_sizes:
            reader.feed_data(data[position : position + size])
            position += size
            await asyncio.sleep(0)
        reader.feed_data(data[position:])
        reader.feed_eof()

    _feeding.add(asyncio.get_running_loop().create_task(feed()))
    return reader


_feeding: set[asyncio.Task[None]] = set()


def _same(ours: list[tuple[int, int, object]], theirs: list[tuple[int, int, object]]) -> None:
    assert len(ours) == len(theirs)
    for (w1, c1, f1), (w2, c2, f2) in zip(ours, theirs, strict=True):
        assert (w1, c1, type(f1)) == (w2, c2, type(f2))
        assert vars(f1) == vars(f2) if hasattr(f1, "__dict__") else f1 == f2


@pytest.mark.parametrize("chunking", ["whole", "one byte", "random"])
async def test_frames_match_aiormq_whatever_the_chunking(chunking: str) -> None:
    rng = random.Random(7)
    if chunking == "one byte":
        data, expected = _deliveries(10), 10 * 3 + 1
        sizes: list[int] | None = [1] * len(data)
    else:
        # Bodies of 100 kB, and one frame larger than a whole read (READ_SIZE).
        data = _deliveries(40) + _deliveries(3, body_size=100_000)
        data += _deliveries(1, body_size=READ_SIZE + 1000)
        expected = 44 * 3 + 40 // 7
        sizes = None if chunking == "whole" else [rng.randrange(1, 3000) for _ in range(400)]
    stock = AiormqFrameReceiver(_reader(data))
    stock.started = True
    ours = BufferedFrameReceiver(_reader(data, sizes))
    _same(await _frames(ours, expected), await _frames(stock, expected))
    with pytest.raises(StopAsyncIteration):
        await ours.get_frame()


@pytest.mark.parametrize("cut", ["in the payload", "in the header"])
async def test_a_connection_closed_mid_frame_is_a_connection_error(cut: str) -> None:
    data = _deliveries(2)
    data = data[:-5] if cut == "in the payload" else data + b"\x01\x00"
    receiver = BufferedFrameReceiver(_reader(data))
    await _frames(receiver, 5 if cut == "in the payload" else 6)
    with pytest.raises(AMQPConnectionError, match="unexpectedly closed"):
        await receiver.get_frame()


async def test_a_broken_frame_end_is_an_invalid_frame() -> None:
    frame = bytearray(_deliveries(1))
    frame[-1] = 0  # the last frame-end octet (0xCE)
    receiver = BufferedFrameReceiver(_reader(bytes(frame)))
    await _frames(receiver, 2)
    with pytest.raises(InvalidFrameError):
        await receiver.get_frame()


async def test_a_protocol_header_from_the_broker_is_a_version_mismatch() -> None:
    receiver = BufferedFrameReceiver(_reader(b"AMQP\x00\x00\x09\x01"))
    with pytest.raises(ProtocolSyntaxError):
        await receiver.get_frame()


async def test_a_read_error_is_a_connection_error() -> None:
    reader = asyncio.StreamReader()
    reader.set_exception(ConnectionResetError("reset by peer"))
    with pytest.raises(AMQPConnectionError, match="reset"):
        await BufferedFrameReceiver(reader).get_frame()


def test_the_environment_can_keep_aiormqs_own_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aiormq.connection, "FrameReceiver", AiormqFrameReceiver)
    monkeypatch.setenv("JOBWIRE_AMQP_FRAME_READER", "aiormq")
    assert install_fast_path() is False
    assert aiormq.connection.FrameReceiver is AiormqFrameReceiver
    monkeypatch.delenv("JOBWIRE_AMQP_FRAME_READER")
    assert install_fast_path() is True
    assert aiormq.connection.FrameReceiver is BufferedFrameReceiver


def test_an_aiormq_it_was_not_checked_against_keeps_its_own_reader(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(aiormq.connection, "FrameReceiver", AiormqFrameReceiver)
    monkeypatch.setattr(amqp_frames, "version", lambda _name: "8.0.0")
    assert install_fast_path() is False
    assert aiormq.connection.FrameReceiver is AiormqFrameReceiver


async def test_a_content_header_pamqp_refuses_is_read_and_the_frames_after_it_too() -> None:
    """A message id that is not UTF-8 (AMQP allows any octets) once broke the connection."""
    props = commands.Basic.Properties(message_id="AAAA")
    odd = pamqp.frame.marshal(header.ContentHeader(0, 0, props), 1).replace(b"AAAA", b"\xff-1\xfe")
    data = _deliveries(1) + odd + _deliveries(2)
    receiver = BufferedFrameReceiver(_reader(data))
    got = await _frames(receiver, 10)
    message_id = got[3][2].properties.message_id
    assert message_id.encode("utf-8", "surrogateescape") == b"\xff-1\xfe"
    tags = [frame.delivery_tag for _, _, frame in got if isinstance(frame, commands.Basic.Deliver)]
    assert tags == [1, 1, 2]
