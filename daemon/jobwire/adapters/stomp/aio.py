"""A STOMP 1.2 connection on the event loop: the consuming source's default client.

stomp.py reads its socket on a thread of its own and writes from the caller's; a source on
it pays, per message, a parse in that thread, a hand-over to the loop, and a thread trip
for every batch of ACKs, all under the one interpreter lock the pool needs. This
connection reads and writes on the loop: the bytes are cut into frames by
``frames.FrameSplitter`` (a NUL in a header keeps its frame whole), each frame is parsed
and every frame written is encoded by stomp.py's own functions (``stomp.utils``), so the
two clients agree on what a frame means; only the socket and the heart-beats are here.
``JOBWIRE_STOMP_FRAME_READER`` brings stomp.py's client back (see ``frames.choose``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable, Sequence

import structlog
from stomp.utils import Frame, calculate_heartbeats, convert_frame, pack

from jobwire.adapters.stomp.bridge import ack_frames
from jobwire.adapters.stomp.frames import FrameSplitter
from jobwire.adapters.stomp.parse import parse

log = structlog.get_logger("jobwire.adapters")
DISCONNECT_RECEIPT = "jobwire-disconnect"
CLOSE_WAIT = 2.0  # seconds a close waits for the DISCONNECT's receipt


def _retrieved(future: asyncio.Future[Frame]) -> None:
    if not future.cancelled():
        future.exception()


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


# As stomp.py's default heart_beat_receive_scale: silence for 1.5 receive intervals is a
# dead connection.
RECEIVE_SCALE = 1.5


def encode(command: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    """A frame's bytes as stomp.py's Protocol12 writes them (content-length for a body),
    with names and values escaped except in the connect frame, as STOMP 1.2 says (stomp.py
    escapes values only: a header name with a colon would end the name early)."""
    headers = dict(headers)
    if command not in ("CONNECT", "STOMP"):
        headers = {_escaped(k): _escaped(v) for k, v in headers.items()}
    if body and "content-length" not in headers:
        headers["content-length"] = str(len(body))
    packed: bytes = pack(convert_frame(Frame(command, headers, body)))
    return packed


def _escaped(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace(":", "\\c").replace("\r", "\\r")


class _Reader(asyncio.Protocol):
    """Cuts the stream into frames and hands each to the connection, on the loop."""

    def __init__(self, owner: AsyncStompConnection) -> None:
        self._owner = owner
        self._splitter = FrameSplitter()

    def data_received(self, data: bytes) -> None:
        owner = self._owner
        owner.last_read = owner.loop.time()  # any byte, heart-beats included, is a sign of life
        for raw in self._splitter.feed(data):
            try:
                frame = parse(raw)
                if frame is not None:
                    owner.dispatch(frame)
            except Exception:  # one frame must not end the connection
                # Raised out of here, it would close the connection, and a redelivered
                # message that raises again would close every one after it: the source would
                # take nothing more. Kept unacknowledged, it comes back on the next
                # connection, never lost; but with cumulative acks the next ACK would
                # settle it unseen, so then the connection ends (loud, and never a loss).
                log.exception("stomp_frame_unreadable", size=len(raw))
                if owner.cumulative:
                    owner.abort("a frame could not be read (cumulative acks)")
                    return

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner.lost("disconnected" if exc is None else f"disconnected: {exc}")


class AsyncStompConnection:
    """One STOMP connection read and written on the loop; tells its owner of MESSAGE,
    ERROR and RECEIPT frames and of its end (``on_lost``, once)."""

    reader = "asyncio"

    def __init__(
        self,
        host: str,
        port: int,
        vhost: str,
        heartbeat_ms: int,
        tls: ssl.SSLContext | None,
        on_frame: Callable[[Frame], None],
        on_lost: Callable[[str], None],
        on_error: Callable[[Frame], None],
        on_receipt: Callable[[Frame], None],
    ) -> None:
        self.host, self.port, self.vhost, self.tls = host, port, vhost, tls
        self.heartbeats = (heartbeat_ms, heartbeat_ms)
        self.on_frame, self.on_error, self.on_receipt = on_frame, on_error, on_receipt
        self._on_lost = on_lost
        self.loop = asyncio.get_running_loop()
        self.last_read = self.last_write = self.loop.time()
        self._transport: asyncio.Transport | None = None
        self.cumulative = False  # subscribed with ack: client
        self._connected: asyncio.Future[Frame] = self.loop.create_future()
        # An ERROR or a lost socket before anyone awaits it must not warn at exit.
        self._connected.add_done_callback(_retrieved)
        # Set by the DISCONNECT's receipt or the socket's end (``close`` waits for it).
        self._closed: asyncio.Future[None] = self.loop.create_future()
        self._beat: asyncio.Task[None] | None = None
        self._ended = False

    # -- the session ---------------------------------------------------------------

    async def connect(self, username: str | None, password: str | None, timeout: float) -> None:
        """Open the socket, send the connect frame and wait for CONNECTED; raises
        ConnectionError on an ERROR frame, a closed socket or no answer in ``timeout``."""
        try:
            async with asyncio.timeout(timeout):
                connected = await self._open(username, password)
        except TimeoutError:
            raise ConnectionError(f"no CONNECTED from the broker within {timeout:g}s") from None
        offered = connected.headers.get("heart-beat", "0,0").replace(" ", "").split(",")
        try:
            send_ms, receive_ms = calculate_heartbeats(offered, self.heartbeats)
        except ValueError as exc:  # not two numbers
            raise ConnectionError(f"the broker's heart-beat header is not valid: {exc}") from exc
        if send_ms or receive_ms:
            self._beat = asyncio.create_task(
                self._heartbeat(send_ms / 1000, receive_ms / 1000 * RECEIVE_SCALE),
                name="jobwire-stomp-heartbeat",
            )

    async def _open(self, username: str | None, password: str | None) -> Frame:
        """The socket and the connect frame; CONNECTED's frame (raises as ``connect``)."""
        transport, _ = await self.loop.create_connection(
            lambda: _Reader(self),
            self.host,
            self.port,
            ssl=self.tls,
            server_hostname=self.host if self.tls is not None else None,
        )
        self._transport = transport
        headers = {"accept-version": "1.2", "host": self.vhost or self.host}
        if username is not None:
            headers["login"] = username
        if password is not None:
            headers["passcode"] = password
        if self.heartbeats != (0, 0):
            headers["heart-beat"] = f"{self.heartbeats[0]},{self.heartbeats[1]}"
        self.write(encode("STOMP", headers))
        return await self._connected

    async def close(self, wait: float = CLOSE_WAIT) -> None:
        """DISCONNECT with a receipt, then close once the broker confirms it or closes (at
        most ``wait`` seconds). Closing at once would lose what was written last: with
        deliveries still unread on the socket, the kernel resets the connection and the
        broker may drop the ACKs and NACKs it had not read yet (a redelivery each)."""
        self._end()
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        try:
            transport.write(encode("DISCONNECT", {"receipt": DISCONNECT_RECEIPT}))
            async with asyncio.timeout(wait):
                await self._closed
        except Exception:  # noqa: BLE001 - closing anyway (TimeoutError included)
            pass
        transport.close()

    # -- writing ----------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Queue bytes on the socket (never blocks); ConnectionError once it is gone."""
        transport = self._transport
        if transport is None or transport.is_closing():
            raise ConnectionError("the STOMP connection is closed")
        transport.write(data)
        self.last_write = self.loop.time()

    async def subscribe(
        self, destination: str, sub_id: str, ack: str, headers: dict[str, str]
    ) -> None:
        """SUBSCRIBE with this ack mode (client or client-individual)."""
        self.cumulative = ack == "client"
        frame = {**headers, "destination": destination, "id": sub_id, "ack": ack}
        self.write(encode("SUBSCRIBE", frame))

    def abort(self, reason: str) -> None:
        """End the connection now: every unacknowledged delivery goes back to the broker."""
        self.lost(reason)  # the owner hears this reason; connection_lost's comes too late
        if self._transport is not None:
            self._transport.abort()

    async def ack(self, ack_ids: Sequence[str]) -> None:
        """ACK these deliveries, in one write."""
        self.write(ack_frames(ack_ids))

    async def nack(self, ack_ids: Sequence[str]) -> None:
        """NACK these deliveries (the broker redelivers them), in one write."""
        self.write(b"".join(encode("NACK", {"id": a}) for a in ack_ids))

    async def send(
        self, destination: str, body: bytes, content_type: str | None, headers: dict[str, str]
    ) -> None:
        """SEND one message (a ``receipt`` header asks the broker to confirm it)."""
        frame = {**headers, "destination": destination}
        if content_type:
            frame["content-type"] = content_type
        self.write(encode("SEND", frame, body))

    # -- reading ----------------------------------------------------------------------

    def dispatch(self, frame: Frame) -> None:
        """One frame read: to the handler for its command."""
        command = frame.cmd
        if command == "MESSAGE":
            if not self._ended:  # a delivery read while closing goes back to the broker
                self.on_frame(frame)
        elif command == "RECEIPT":
            if frame.headers.get("receipt-id") == DISCONNECT_RECEIPT:
                _settle(self._closed)
            else:
                self.on_receipt(frame)
        elif command == "CONNECTED":
            if not self._connected.done():
                self._connected.set_result(frame)
        elif command == "ERROR":
            if not self._connected.done():
                why = frame.headers.get("message") or "ERROR frame"
                self._connected.set_exception(ConnectionError(f"refused: {why}"))
            self.on_error(frame)

    def lost(self, reason: str) -> None:
        """The socket closed (or the heart-beats stopped): tell the owner, once."""
        _settle(self._closed)
        if not self._connected.done():
            self._connected.set_exception(ConnectionError(f"STOMP connection {reason}"))
        if self._ended:
            return
        self._end()
        self._on_lost(reason)

    def _end(self) -> None:
        self._ended = True
        if self._beat is not None and self._beat is not asyncio.current_task():
            self._beat.cancel()

    async def _heartbeat(self, send_every: float, silence_limit: float) -> None:
        """Write an EOL when nothing else went out for ``send_every``; end the connection
        when nothing came in for ``silence_limit`` (0: that direction is off)."""
        loop = self.loop
        # Checked often enough that an EOL goes out well within each send interval.
        step = min(t for t in (send_every / 4, silence_limit / 3) if t > 0)
        while not self._ended:
            await asyncio.sleep(step)
            now = loop.time()
            if silence_limit and now - self.last_read > silence_limit:
                self.lost("heart-beat timeout")
                if self._transport is not None:
                    self._transport.abort()
                return
            if send_every and now - self.last_write >= send_every / 2:
                with contextlib.suppress(ConnectionError):
                    self.write(b"\n")
