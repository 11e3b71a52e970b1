"""A STOMP frame splitter that keeps a frame whole when a header holds a NUL octet.

STOMP 1.2's header grammar allows NUL in a header name or value, and RabbitMQ forwards such
a header raw. stomp.py's receiver (``BaseTransport.__read``) cuts the byte stream at the
first NUL and only honours ``content-length`` when the blank line ending the headers comes
before that NUL: a NUL in a header cuts the frame there, so the message arrives with part
of its headers and no body, and the rest is logged as an "unknown response frame type".

``FrameSplitter`` cuts frames as the spec says: the headers end at the first blank line;
with a ``content-length`` header the body is exactly that many octets (NULs included),
then the NUL terminator; without one the body runs to the first NUL after the blank line.
EOLs between frames are heart-beats (or the optional EOLs after a frame's NUL).

The splitter reads for jobwire's own client (``aio``), the default. For stomp.py's client
(``JOBWIRE_STOMP_FRAME_READER=nul-safe``), ``NulSafeTransport`` is stomp.py's ``Transport``
with its private ``__read`` replaced by one that uses the splitter, and
``NulSafeConnection12`` builds its transport so, only for the stomp.py releases this was
checked against (the method is private, and its caller and buffer handling could change in
any release); any other release gets stomp.py's own reader, as
``JOBWIRE_STOMP_FRAME_READER=stomp.py`` asks for (the operator's way back, should either of
jobwire's ever be in doubt).
"""

from __future__ import annotations

import os
import ssl
from importlib.metadata import version
from typing import Any

import stomp
import stomp.connect
import stomp.exception
import stomp.log
import stomp.protocol
import stomp.transport
import structlog
from stomp.utils import PREAMBLE_END_RE

# The stomp.py releases whose private ``BaseTransport.__read`` (and its caller
# ``__read_frames``) this stands in for, checked by reading their transport.py; another
# release keeps its own reader until checked and added here.
SUPPORTED_STOMP = ("9.0.0",)
# What the transport hands stomp.py's ``__read_frames`` for a heart-beat: it treats a lone
# EOL as one (``is_eol_default``).
HEARTBEAT = b"\n"
# The headers end at the first blank line. The same pattern as stomp.py's ``parse_frame``
# uses to split the body off, so both agree on where the body starts.
HEADERS_END = PREAMBLE_END_RE
CONTENT_LENGTH = b"content-length"

log = structlog.get_logger("jobwire.adapters")
_chosen: str | None = None


class FrameSplitter:
    """Cuts a STOMP byte stream into frames (without their NUL), whatever the reads' sizes."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        # The current frame, once its headers are complete: where its body starts, and its
        # content-length (None: the body ends at the next NUL).
        self._body_start: int | None = None
        self._length: int | None = None
        # Where to go on searching (for the blank line or the NUL): nothing is scanned twice.
        self._scan = 0
        self.heartbeats = 0  # EOLs seen between frames, in all

    def feed(self, data: bytes) -> list[bytes]:
        """Take the next bytes read; return every frame they complete, in order."""
        buffer = self._buffer
        buffer += data
        frames: list[bytes] = []
        start = 0
        while True:
            if self._body_start is None:
                start = self._skip_eols(start)
                rest = len(buffer) - start
                if rest == 0 or (rest == 1 and buffer[start] == 0x0D):
                    break  # nothing of a frame yet (a lone CR may be half a CRLF)
                end = HEADERS_END.search(buffer, max(start, self._scan - 3))
                if end is None:
                    self._scan = len(buffer)
                    break
                self._body_start = end.end()
                self._scan = self._body_start
                self._length = _content_length(bytes(buffer[start : end.start()]))
            stop = self._frame_end(start)
            if stop is None:
                break
            frames.append(bytes(buffer[start:stop]))
            nul = stop if buffer[stop] == 0 else buffer.index(0, stop)
            if nul != stop:
                log.warning(
                    "stomp_frame_longer_than_content_length",
                    content_length=self._length,
                    skipped=nul - stop,
                )
            start = nul + 1
            self._body_start = self._length = None
            self._scan = start
        del buffer[:start]
        self._scan = max(0, self._scan - start)
        if self._body_start is not None:
            self._body_start -= start
        return frames

    def _skip_eols(self, position: int) -> int:
        buffer = self._buffer
        while True:
            if buffer[position : position + 1] == b"\n":
                position += 1
            elif buffer[position : position + 2] == b"\r\n":
                position += 2
            else:
                return position
            self.heartbeats += 1

    def _frame_end(self, start: int) -> int | None:
        """Where the current frame's content ends (its NUL, or what stands in its place);
        None until enough is read, including the terminator."""
        assert self._body_start is not None
        buffer = self._buffer
        if self._length is not None:
            stop = self._body_start + self._length
            if len(buffer) <= stop:
                return None
            # The octet after the body should be the NUL. Anything else means the length was
            # wrong: the frame keeps the declared body and the stream resumes after the next
            # NUL (searched for from here on, below).
            if buffer[stop] != 0 and buffer.find(0, max(stop, self._scan)) < 0:
                self._scan = len(buffer)
                return None
            return stop
        nul = buffer.find(0, max(self._body_start, self._scan))
        if nul < 0:
            self._scan = len(buffer)
            return None
        return nul


def _content_length(headers: bytes) -> int | None:
    """The first content-length header's value (the first of a repeated header counts);
    None if there is none or it is not a number."""
    for line in headers.split(b"\n")[1:]:  # the first line is the command
        name, colon, value = line.partition(b":")
        if colon and name == CONTENT_LENGTH:
            value = value.strip()
            return int(value) if value.isdigit() else None
    return None


class NulSafeTransport(stomp.transport.Transport):  # type: ignore[misc]
    """stomp.py's Transport, reading frames with ``FrameSplitter``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._splitter = FrameSplitter()

    def start(self) -> None:
        """Start on a fresh stream: nothing left over from an earlier connection."""
        self._splitter = FrameSplitter()
        super().start()

    # Replaces ``BaseTransport.__read`` (called by name from ``__read_frames``): the same
    # reads, errors and end-of-stream handling, with the frames cut by the splitter.
    def _BaseTransport__read(self) -> list[bytes]:
        splitter = self._splitter
        while self.running:
            try:
                try:
                    data = self.receive()
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    break
                except stomp.exception.InterruptedException:
                    stomp.log.debug("socket read interrupted, restarting")
                    continue
            except Exception:  # noqa: BLE001 - as stomp.py: a failed read is the end
                stomp.log.debug("socket read error", exc_info=stomp.log.verbose)
                data = b""
            if not data:
                if not self.blocking:
                    break  # a TLS socket's recv() returns nothing while still open
                raise stomp.exception.ConnectionClosedException()
            heartbeats = splitter.heartbeats
            frames = splitter.feed(data)
            if frames:
                return frames  # any frame also counts as a sign of life
            if splitter.heartbeats != heartbeats:
                return [HEARTBEAT]
        return []


class NulSafeConnection12(stomp.Connection12):  # type: ignore[misc]
    """``stomp.Connection12`` on a ``NulSafeTransport``; the same arguments."""

    def __init__(
        self,
        host_and_ports: list[tuple[str, int]] | None = None,
        prefer_localhost: bool = True,
        try_loopback_connect: bool = True,
        reconnect_sleep_initial: float = 0.1,
        reconnect_sleep_increase: float = 0.5,
        reconnect_sleep_jitter: float = 0.1,
        reconnect_sleep_max: float = 60.0,
        reconnect_attempts_max: int = 3,
        timeout: float | None = None,
        heartbeats: tuple[int, int] = (0, 0),
        keepalive: Any = None,
        vhost: str | None = None,
        auto_decode: bool = True,
        encoding: str = "utf-8",
        auto_content_length: bool = True,
        heart_beat_receive_scale: float = 1.5,
        bind_host_port: tuple[str, int] | None = None,
    ) -> None:
        # What StompConnection12.__init__ does, with this transport in place of its own.
        transport = NulSafeTransport(
            host_and_ports,
            prefer_localhost,
            try_loopback_connect,
            reconnect_sleep_initial,
            reconnect_sleep_increase,
            reconnect_sleep_jitter,
            reconnect_sleep_max,
            reconnect_attempts_max,
            timeout,
            keepalive,
            vhost,
            auto_decode,
            encoding,
            bind_host_port=bind_host_port,
        )
        stomp.connect.BaseConnection.__init__(self, transport)
        stomp.protocol.Protocol12.__init__(
            self,
            transport,
            heartbeats,
            auto_content_length,
            heart_beat_receive_scale=heart_beat_receive_scale,
        )


ENV = "JOBWIRE_STOMP_FRAME_READER"


def choose() -> str:
    """The client a STOMP source connects with: ``asyncio`` (module ``aio``, the default), or
    stomp.py's with this module's reader (``nul-safe``) or with its own (``stomp.py``), as
    ``JOBWIRE_STOMP_FRAME_READER`` asks. Says which in the log once per process (a warning
    when the wish could not be met: an unknown value, or a stomp.py release this reader was
    not checked against)."""
    global _chosen
    wanted = os.environ.get(ENV, "asyncio")
    stomp_version = version("stomp.py")
    emit = log.info
    reason: str | None = f"{ENV}={wanted}"
    if wanted == "stomp.py":
        chosen = "stomp.py"
    elif wanted == "nul-safe":
        chosen = "nul-safe"
        if stomp_version not in SUPPORTED_STOMP or not (
            hasattr(stomp.transport.BaseTransport, "_BaseTransport__read")
            and hasattr(stomp.transport.BaseTransport, "_BaseTransport__read_frames")
        ):
            # A header with a NUL loses its message's body again.
            chosen, emit = "stomp.py", log.warning
            reason = f"stomp.py {stomp_version} is not one this reader was checked against"
    else:
        chosen = "asyncio"
        if wanted == "asyncio":
            reason = None
        else:
            emit, reason = log.warning, f"{ENV}={wanted!r} is none of asyncio, nul-safe, stomp.py"
    if chosen != _chosen:
        _chosen = chosen
        emit("stomp_frame_reader", reader=chosen, stomp=stomp_version, reason=reason)
    return chosen


def connection_class(reader: str) -> type[Any]:
    """stomp.py's connection class for a reader ``choose`` gave: ``NulSafeConnection12``
    for nul-safe, ``stomp.Connection12`` for stomp.py."""
    return NulSafeConnection12 if reader == "nul-safe" else stomp.Connection12
