"""A fake systemd NOTIFY_SOCKET: what a Type=notify service would tell systemd."""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from types import TracebackType

from tests.support.waiting import wait_sync


class NotifyListener:
    """A bound datagram socket, read on a thread as systemd reads its own (a sender drops
    what finds the queue full); ``until`` waits for a message containing a text."""

    def __init__(self, path: Path) -> None:
        self.address = str(path)
        self.received: list[str] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self.address)
        self._sock.settimeout(0.2)
        self._closed = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                self.received.append(self._sock.recv(4096).decode())
            except TimeoutError:
                continue
            except OSError:
                return

    def until(self, wanted: str, timeout: float = 60) -> str:
        """The first message containing ``wanted``; fail at the deadline."""
        try:
            return wait_sync(
                lambda: next((m for m in list(self.received) if wanted in m), ""),
                timeout=timeout,
                interval=0.02,
                what=f"a message containing {wanted!r}",
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}; received {self.received}") from None

    def __enter__(self) -> NotifyListener:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._closed.set()
        self._reader.join()
        self._sock.close()
