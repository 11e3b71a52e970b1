"""AMQP frame reading alone: aiormq's FrameReceiver against jobwire's BufferedFrameReceiver.

Both read the same bytes, N deliveries as RabbitMQ sends them to a consumer (method,
header and body frame each, the bench's 15-byte JSON body), from an in-memory stream;
prints microseconds per message for each, and for decoding the same frames alone: by pamqp,
and by jobwire's direct decoder (``jobwire.adapters.amqp.decode``, which the buffered
reader uses).

    .venv/bin/python bench/frame_reader.py --messages 60000
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path

import pamqp.frame
from aiormq.connection import FrameReceiver
from pamqp import body, commands, header

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script, too

from bench.common import run
from jobwire.adapters.amqp import decode as amqp_decode
from jobwire.adapters.amqp.frames import BufferedFrameReceiver

BODY = b'{"bench": true}'


def deliveries(n: int) -> bytes:
    """n deliveries as wire bytes."""
    out = bytearray()
    for tag in range(1, n + 1):
        props = commands.Basic.Properties(
            message_id=uuid.uuid4().hex, content_type="application/json", delivery_mode=2
        )
        out += pamqp.frame.marshal(
            commands.Basic.Deliver(consumer_tag="ctag1.bench", delivery_tag=tag, routing_key="q"),
            1,
        )
        out += pamqp.frame.marshal(header.ContentHeader(0, len(BODY), props), 1)
        out += pamqp.frame.marshal(body.ContentBody(BODY), 1)
    return bytes(out)


def stream(data: bytes) -> asyncio.StreamReader:
    """The bytes in 64 KiB pieces, as a socket hands them over."""
    reader = asyncio.StreamReader(limit=2**30)
    for start in range(0, len(data), 65536):
        reader.feed_data(data[start : start + 65536])
    reader.feed_eof()
    return reader


async def read_all(kind: str, data: bytes, frames: int) -> float:
    """Seconds to read every frame with aiormq's reader or ours."""
    if kind == "aiormq":
        receiver: FrameReceiver | BufferedFrameReceiver = FrameReceiver(stream(data))
        receiver.started = True
    else:
        receiver = BufferedFrameReceiver(stream(data))
    t0 = time.perf_counter()
    for _ in range(frames):
        await receiver.get_frame()
    return time.perf_counter() - t0


def parse_only(data: bytes) -> float:
    """Seconds for pamqp to parse the same frames, already cut apart."""
    pieces = [data[start:stop] for start, stop in bounds(data)]
    t0 = time.perf_counter()
    for piece in pieces:
        pamqp.frame.unmarshal(piece)
    return time.perf_counter() - t0


def decode_only(data: bytes) -> float:
    """Seconds for jobwire's direct decoding of the same frames, in place."""
    frames = bounds(data)
    t0 = time.perf_counter()
    for start, stop in frames:
        amqp_decode.decode(data, start, stop)
    return time.perf_counter() - t0


def bounds(data: bytes) -> list[tuple[int, int]]:
    """(start, stop) of every frame in the bytes."""
    out = []
    position = 0
    while position < len(data):
        stop = position + 8 + int.from_bytes(data[position + 3 : position + 7], "big")
        out.append((position, stop))
        position = stop
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=60_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    n = args.messages
    data = deliveries(n)
    names = ("aiormq", "buffered", "pamqp parsing", "direct decoding")
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.runs):  # interleaved, so both readers see the same drift
        seconds["aiormq"].append(await read_all("aiormq", data, 3 * n))
        seconds["buffered"].append(await read_all("buffered", data, 3 * n))
        seconds["pamqp parsing"].append(parse_only(data))
        seconds["direct decoding"].append(decode_only(data))
    for name, values in seconds.items():
        print(f"{name:>15}: {statistics.median(values) * 1e6 / n:5.1f} us per message")


if __name__ == "__main__":
    run(main())
