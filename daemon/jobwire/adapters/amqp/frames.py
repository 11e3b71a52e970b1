"""A faster frame reader for aiormq: whole socket reads split into frames, not three reads each.

aiormq's ``FrameReceiver`` reads every frame with three ``readexactly`` calls under a lock
into a ``BytesIO``; a consumed message is three frames, so nine awaits and a lock per
message. This reader takes what the socket has (up to 256 KiB), cuts every complete
frame out of it and hands them out one by one; the rest of a frame cut by the read is then
read exactly, in one go. A delivery's three frames are decoded by ``decode``, every other
frame by pamqp. ``bench/frame_reader.py`` times aiormq's reader against this one (and
pamqp's parsing against the direct decoder); ``bench/amqp_drain.py``, run once with
``JOBWIRE_AMQP_FRAME_READER=aiormq`` and once without, gives the daemon's throughput with
each.

aiormq builds its reader by the module-level name ``aiormq.connection.FrameReceiver``, so
``install_fast_path()`` replaces that name, for every aiormq connection in the process. The
daemon calls it when it builds an AMQP source (``build_adapter``, through the registry's
setup hook), not on import. It does so only for the aiormq versions this was written
against and checked with (the reader's interface is private); any other version keeps its
own reader, and so does a daemon started with ``JOBWIRE_AMQP_FRAME_READER=aiormq`` (the
operator's way back, should this reader ever be in doubt).
"""

from __future__ import annotations

import asyncio
import collections
import os
from importlib.metadata import version
from typing import Any

import aiormq.connection
import pamqp.frame
import structlog
from aiormq.exceptions import AMQPConnectionError, InvalidFrameError, ProtocolSyntaxError
from pamqp.exceptions import PAMQPException

from jobwire.adapters.amqp import decode as amqp_decode
from jobwire.adapters.amqp import lenient as amqp_lenient
from jobwire.adapters.amqp.channel import InlineDeliveryChannel

# The reader takes what one read returns, up to this; a frame cut by the end of a read
# (however large: frame_max can be raised) is completed by one exact read.
READ_SIZE = 256 * 1024
# type (1) + channel (2) + size (4) ... payload ... frame-end (1)
HEADER_SIZE = 7
# The aiormq releases whose private FrameReceiver this stands in for (checked by reading
# their connection.py); another release keeps its own reader until checked and added here.
SUPPORTED_AIORMQ = ("7.2.",)

ReceivedFrame = tuple[int, int, Any]

log = structlog.get_logger("jobwire.adapters")
_chosen: str | None = None


class BufferedFrameReceiver:
    """aiormq's FrameReceiver interface (``get_frame``, async iteration, ``started``)."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        self.started = False
        self._buffer = b""
        self._ready: collections.deque[ReceivedFrame] = collections.deque()
        # A frame that would not parse: raised once the good frames before it are handed out.
        self._broken: InvalidFrameError | None = None

    def __aiter__(self) -> BufferedFrameReceiver:
        return self

    async def __anext__(self) -> ReceivedFrame:
        return await self.get_frame()

    async def get_frame(self) -> ReceivedFrame:
        """The next frame: from what was read already, else from the next read."""
        while not self._ready:
            if self._broken is not None:
                raise self._broken
            pending = self._buffer
            if len(pending) >= HEADER_SIZE:
                # A frame is partly here: read exactly its rest (one await, one join, however
                # large the frame), then go back to taking whatever the socket has.
                rest = HEADER_SIZE + _payload_size(pending, 0) + 1 - len(pending)
                self._split(pending + await self._read(rest, exactly=True))
                continue
            chunk = await self._read(READ_SIZE)
            if not chunk:
                if pending:
                    raise AMQPConnectionError(
                        "Server connection unexpectedly closed. "
                        f"{len(pending)} bytes of a frame were read"
                    )
                raise StopAsyncIteration
            self._split(pending + chunk if pending else chunk)
        return self._ready.popleft()

    async def _read(self, size: int, exactly: bool = False) -> bytes:
        # The same errors as aiormq's reader, so its callers see what they expect.
        try:
            if exactly:
                return await self.reader.readexactly(size)
            return await self.reader.read(size)
        except asyncio.IncompleteReadError as exc:
            raise AMQPConnectionError(
                "Server connection unexpectedly closed. "
                f"Read {len(exc.partial)} bytes but {exc.expected} bytes expected"
            ) from exc
        except ConnectionRefusedError as exc:
            raise AMQPConnectionError(f"Server connection refused: {exc!r}") from exc
        except ConnectionResetError as exc:
            raise AMQPConnectionError(f"Server connection reset: {exc!r}") from exc
        except ConnectionError as exc:
            raise AMQPConnectionError(f"Server connection error: {exc!r}") from exc
        except OSError as exc:
            raise AMQPConnectionError(f"Server communication error: {exc!r}") from exc

    def _split(self, data: bytes) -> None:
        """Parse every complete frame in ``data``; keep the incomplete rest for the next read."""
        if not self.started and len(data) >= 4:
            if data.startswith(b"AMQP"):
                # The broker answered our protocol header with its own: version mismatch.
                raise ProtocolSyntaxError("Unexpected AMQP protocol header")
            self.started = True
        position, end = 0, len(data)
        while end - position > HEADER_SIZE:
            stop = position + HEADER_SIZE + _payload_size(data, position) + 1
            if stop > end:
                break
            try:
                self._ready.append(
                    amqp_decode.decode(data, position, stop)
                    or pamqp.frame.unmarshal(data[position:stop])
                )
            except (PAMQPException, RecursionError) as exc:
                # A delivery's frame pamqp refuses (a name that is not UTF-8, a timestamp
                # out of range, headers nested too deep) would end the connection, and every
                # next one at the same message.
                lenient = amqp_lenient.frame(data, position, stop)
                if lenient is None:
                    self._broken = InvalidFrameError(str(exc))
                    self._broken.__cause__ = exc
                    break
                log.warning("amqp_frame_decoded_leniently", error=str(exc))
                self._ready.append(lenient)
            position = stop
        self._buffer = data[position:]


def _payload_size(data: bytes, position: int) -> int:
    return int.from_bytes(data[position + 3 : position + HEADER_SIZE], "big")


def fast_path_reader() -> str:
    """Which frame reader aiormq connections use now: "jobwire" (this one) or "aiormq"."""
    current = getattr(aiormq.connection, "FrameReceiver", None)
    return "jobwire" if current is BufferedFrameReceiver else "aiormq"


def install_fast_path() -> bool:
    """Make aiormq read frames with ``BufferedFrameReceiver`` and open channels as
    ``InlineDeliveryChannel``; False if this aiormq is not one they were checked against,
    or the environment asks for aiormq's own. Idempotent (once in place, it stays); says
    which it chose in the log, once per process."""
    global _chosen
    aiormq_version = version("aiormq")
    if fast_path_reader() == "jobwire":
        reason = None
    elif os.environ.get("JOBWIRE_AMQP_FRAME_READER") == "aiormq":
        reason = "JOBWIRE_AMQP_FRAME_READER=aiormq"
    elif not aiormq_version.startswith(SUPPORTED_AIORMQ) or not (
        hasattr(aiormq.connection, "FrameReceiver") and hasattr(aiormq.connection, "Channel")
    ):
        reason = f"aiormq {aiormq_version} is not one this reader was checked against"
    else:
        aiormq.connection.FrameReceiver = BufferedFrameReceiver  # type: ignore[misc,assignment]
        aiormq.connection.Channel = InlineDeliveryChannel  # type: ignore[attr-defined]
        reason = None
    chosen = "aiormq" if reason else "jobwire"
    if chosen != _chosen:
        _chosen = chosen
        log.info("amqp_frame_reader", reader=chosen, aiormq=aiormq_version, reason=reason)
    return reason is None
