"""systemd's notify protocol (sd_notify): one datagram to ``$NOTIFY_SOCKET``."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Mapping


def socket_address(address: str) -> str:
    """A ``NOTIFY_SOCKET`` value as ``sendto`` takes it (``@name``: the abstract namespace)."""
    return "\0" + address[1:] if address.startswith("@") else address


def sd_notify(message: str, address: str | None = None) -> None:
    """Tell systemd (Type=notify), or a supervisor, our state; a no-op without a socket.

    Never blocks: a message the receiver has no room for (its queue holds
    ``net.unix.max_dgram_qlen`` datagrams) is dropped rather than stall the event loop.
    """
    address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.sendto(message.encode(), socket_address(address))


def watchdog_interval(environ: Mapping[str, str] = os.environ) -> float | None:
    """systemd's WatchdogSec in seconds (``WATCHDOG_USEC``) if it watches this process.

    None for anything but a positive count of microseconds in ASCII digits: ``isdigit()``
    alone takes "³", which ``int()`` refuses, and 0 would make a ping loop spin.
    """
    usec = environ.get("WATCHDOG_USEC", "")
    if not (usec.isascii() and usec.isdigit()) or int(usec) <= 0:
        return None
    if environ.get("WATCHDOG_PID", str(os.getpid())) != str(os.getpid()):
        return None
    return int(usec) / 1_000_000
