"""stomp.py's client behind the same methods as ``aio.AsyncStompConnection``.

stomp.py reads on its own receiver thread (``bridge.Bridge`` hands each event to the loop)
and its socket writes block, so every frame is written from a worker thread, never on the
loop. Chosen with ``JOBWIRE_STOMP_FRAME_READER=nul-safe`` or ``stomp.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

from stomp.utils import Frame

from jobwire.adapters.stomp import frames as stomp_frames
from jobwire.adapters.stomp.bridge import Bridge, ack_frames, quiet_disconnect
from jobwire.config import TlsConfig


class ThreadedStompConnection:
    """One stomp.py connection; the owner hears of frames and of its end on the loop."""

    def __init__(
        self,
        reader: str,
        host: str,
        port: int,
        vhost: str,
        heartbeat_ms: int,
        tls: TlsConfig | None,
        on_frame: Callable[[Frame], None],
        on_lost: Callable[[str], None],
        on_error: Callable[[Frame], None],
        on_receipt: Callable[[Frame], None],
    ) -> None:
        self.reader = reader
        conn = stomp_py_connection(reader, host, port, vhost, heartbeat_ms, tls)
        loop = asyncio.get_running_loop()
        conn.set_listener("jobwire", Bridge(loop, on_frame, on_lost, on_error, on_receipt))
        self._conn: Any = conn

    async def connect(self, username: str | None, password: str | None, timeout: float) -> None:
        """Connect and wait for CONNECTED, at most ``timeout`` seconds: ConnectionError else.

        Not ``connect(wait=True)``: stomp.py then waits for CONNECTED with no deadline, and a
        broker that accepts the socket but never answers would hold the source (and the
        thread, and so the daemon's exit) for good."""
        conn = self._conn

        def connect() -> None:
            conn.connect(username, password, wait=False)
            transport = conn.transport
            # (stomp.py's wait_for_connection takes a timeout, but only as its poll step.)
            deadline = time.monotonic() + timeout
            while transport.running and not transport.is_connected():
                if transport.connection_error:
                    raise ConnectionError("the broker refused the connection (ERROR frame)")
                if time.monotonic() > deadline:
                    with contextlib.suppress(Exception):
                        transport.disconnect_socket()  # its receiver thread ends with it
                    raise ConnectionError(f"no CONNECTED from the broker within {timeout:g}s")
                time.sleep(0.02)
            if not transport.is_connected():
                raise ConnectionError("the STOMP connection closed before CONNECTED")

        await asyncio.to_thread(connect)

    async def close(self) -> None:
        """Disconnect and stop the receiver thread, whatever is already broken."""
        await asyncio.to_thread(quiet_disconnect, self._conn)

    async def subscribe(
        self, destination: str, sub_id: str, ack: str, headers: dict[str, str]
    ) -> None:
        """SUBSCRIBE with this ack mode (client or client-individual)."""
        await asyncio.to_thread(self._conn.subscribe, destination, sub_id, ack=ack, headers=headers)

    async def ack(self, ack_ids: Sequence[str]) -> None:
        """ACK these deliveries in one trip to a worker thread."""
        conn = self._conn

        def send() -> None:
            if conn.transport.blocking:
                # One write for the batch: stomp.py writes (and locks the socket) per frame.
                # Not over TLS: there stomp.py's socket does not block, and its receiver
                # thread writes every frame from a queue.
                conn.transport.send(ack_frames(ack_ids))
                return
            for ack_id in ack_ids:
                conn.ack(ack_id)

        await asyncio.to_thread(send)

    async def nack(self, ack_ids: Sequence[str]) -> None:
        """NACK these deliveries (the broker redelivers them) in one trip."""
        conn = self._conn

        def send() -> None:
            for ack_id in ack_ids:
                conn.nack(ack_id)

        await asyncio.to_thread(send)

    async def send(
        self, destination: str, body: bytes, content_type: str | None, headers: dict[str, str]
    ) -> None:
        """SEND one message (a ``receipt`` header asks the broker to confirm it)."""
        await asyncio.to_thread(
            self._conn.send, destination, body, content_type=content_type, headers=headers
        )


def stomp_py_connection(
    reader: str, host: str, port: int, vhost: str, heartbeat_ms: int, tls: TlsConfig | None
) -> Any:
    """A stomp.py ``Connection12`` (with the NUL-safe reader for ``nul-safe``), not yet
    connected; one attempt, no reconnecting of its own."""
    conn = stomp_frames.connection_class(reader)(
        [(host, port)],
        heartbeats=(heartbeat_ms, heartbeat_ms),
        vhost=vhost,
        auto_decode=False,
        reconnect_attempts_max=1,
        timeout=10,
    )
    if tls is not None:
        conn.set_ssl(
            [(host, port)],
            ca_certs=str(tls.ca_file) if tls.ca_file else None,
            cert_file=str(tls.cert_file) if tls.cert_file else None,
            key_file=str(tls.key_file) if tls.key_file else None,
            verify=tls.verify,
        )
    return conn
