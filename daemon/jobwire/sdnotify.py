"""systemd's notify protocol (sd_notify): one datagram to ``$NOTIFY_SOCKET``."""

from __future__ import annotations

import contextlib
import os
import socket


def socket_address(address: str) -> str:
    """A ``NOTIFY_SOCKET`` value as ``sendto`` takes it (``@name``: the abstract namespace)."""
    return "\0" + address[1:] if address.startswith("@") else address


def sd_notify(message: str, address: str | None = None) -> None:
    """Tell systemd (Type=notify), or a supervisor, our state; a no-op without a socket."""
    address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(message.encode(), socket_address(address))
