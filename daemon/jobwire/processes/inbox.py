"""The supervisor's end of its children's sd_notify: a datagram socket per child process.

Each child is started with ``NOTIFY_SOCKET`` pointing here, so the daemon's own code path
(READY=1, WATCHDOG=1, STOPPING=1) is the same with and without a supervisor; only the
supervisor talks to systemd.

The sockets are in the abstract namespace (``@name``): nothing is written to the file
system, which may be read-only (Kubernetes' readOnlyRootFilesystem) and have no /tmp.
Anyone in the same network namespace could send to such a name, so each datagram carries
its sender's pid (``SO_PASSCRED``), and the supervisor takes only its child's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import struct
from collections.abc import Callable

from jobwire.sdnotify import socket_address

# handler(index, sender pid, fields)
Handler = Callable[[int, int, dict[str, str]], None]

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class NotifyInbox:
    """A bound abstract socket per child; each datagram's ``KEY=value`` lines reach
    ``handler(index, pid, fields)`` on the event loop."""

    def __init__(self, count: int, handler: Handler) -> None:
        self.handler = handler
        # Unguessable, so that a second supervisor (or anyone) never binds the same names.
        self.prefix = f"jobwire-{os.getpid()}-{secrets.token_hex(8)}"
        self._sockets: list[socket.socket] = []
        try:
            for index in range(count):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
                sock.bind(socket_address(self.address(index)))
                sock.setblocking(False)
        except OSError:
            for sock in self._sockets:
                sock.close()
            raise

    def address(self, index: int) -> str:
        """The NOTIFY_SOCKET of child ``index``."""
        return f"@{self.prefix}-{index}"

    def open(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start reading every socket on ``loop``."""
        for index, sock in enumerate(self._sockets):
            loop.add_reader(sock.fileno(), self.drain, index)

    def drain(self, index: int) -> None:
        """Handle every datagram child ``index`` has sent so far.

        Called on exit as well, before a restart: what a dead child sent is all queued by
        then (a local datagram is in our buffer when ``sendto`` returns), and must not be
        taken for its successor's.
        """
        sock = self._sockets[index]
        while True:
            try:
                data, ancillary, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(_UCRED.size))
            except (BlockingIOError, InterruptedError):
                return
            fields = dict(
                line.partition("=")[::2] for line in data.decode(errors="replace").splitlines()
            )
            self.handler(index, _sender(ancillary), fields)

    def close(self, loop: asyncio.AbstractEventLoop) -> None:
        """Stop reading and close the sockets (an abstract name goes with its socket)."""
        for sock in self._sockets:
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(sock.fileno())
            sock.close()
        self._sockets = []


def _sender(ancillary: list[tuple[int, int, bytes]]) -> int:
    """The sending process's pid from SCM_CREDENTIALS (0 if the kernel sent none)."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            return int(_UCRED.unpack(data[: _UCRED.size])[0])
    return 0
