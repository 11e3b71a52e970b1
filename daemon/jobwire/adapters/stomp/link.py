"""What the STOMP source asks of a connection, and which client makes it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from stomp.utils import Frame

from jobwire.adapters.base import tls_context
from jobwire.adapters.stomp.aio import AsyncStompConnection
from jobwire.adapters.stomp.config import StompSource
from jobwire.adapters.stomp.threaded import ThreadedStompConnection


class StompConnection(Protocol):
    """One STOMP 1.2 connection, whichever client runs it (``aio`` or ``threaded``)."""

    reader: str

    async def connect(self, username: str | None, password: str | None, timeout: float) -> None:
        """Connect and wait for CONNECTED; raises if refused or not answered."""

    async def close(self) -> None:
        """End the connection, quietly."""

    async def subscribe(
        self, destination: str, sub_id: str, ack: str, headers: dict[str, str]
    ) -> None:
        """SUBSCRIBE with this ack mode (client or client-individual)."""

    async def ack(self, ack_ids: Sequence[str]) -> None:
        """ACK these deliveries."""

    async def nack(self, ack_ids: Sequence[str]) -> None:
        """NACK these deliveries (the broker redelivers them)."""

    async def send(
        self, destination: str, body: bytes, content_type: str | None, headers: dict[str, str]
    ) -> None:
        """SEND one message."""


def new_connection(
    cfg: StompSource,
    reader: str,
    on_frame: Callable[[Frame], None],
    on_lost: Callable[[str], None],
    on_error: Callable[[Frame], None],
    on_receipt: Callable[[Frame], None],
) -> StompConnection:
    """A connection for this source by the client ``reader`` names (``frames.choose``)."""
    heartbeat_ms = int(cfg.heartbeat * 1000)
    if reader == "asyncio":
        return AsyncStompConnection(
            cfg.host,
            cfg.port,
            cfg.vhost,
            heartbeat_ms,
            tls_context(cfg.tls),
            on_frame,
            on_lost,
            on_error,
            on_receipt,
        )
    return ThreadedStompConnection(
        reader,
        cfg.host,
        cfg.port,
        cfg.vhost,
        heartbeat_ms,
        cfg.tls,
        on_frame,
        on_lost,
        on_error,
        on_receipt,
    )
