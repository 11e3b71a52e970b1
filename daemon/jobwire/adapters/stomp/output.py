"""The STOMP output: SENDs outbox rows, each with a receipt; a row is confirmed by its
RECEIPT. A small asyncio client of its own (stomp.py's is threaded): CONNECT, pipelined
SENDs, RECEIPTs read back (for a moment after an ERROR too), and an ERROR ends the
connection. Frames are encoded and parsed as the source's connection does
(``aio.encode``, ``parse.parse``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from jobwire.adapters.base import tls_context
from jobwire.adapters.stomp.aio import encode
from jobwire.adapters.stomp.config import StompOutput
from jobwire.adapters.stomp.frames import FrameSplitter
from jobwire.adapters.stomp.parse import parse
from jobwire.config import OutputBase
from jobwire.effects import OutboxRow, Published

# A SEND header with a meaning to the protocol, never taken from a row's headers: a
# message's own "transaction" made the broker refuse the SEND. (The others that steer a
# SEND, destination, content-length and receipt, jobwire sets itself over the row's.)
FRAME_HEADERS = frozenset({"transaction"})
# After an ERROR, how long RECEIPTs of the other SENDs are still read.
AFTER_ERROR_S = 2.0


class StompPublisher:
    """One connection per output; receipts tell which SENDs the broker took."""

    def __init__(self, name: str, cfg: StompOutput) -> None:
        self.name = name
        self.cfg = cfg
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._splitter = FrameSplitter()
        self._frames: list[bytes] = []
        self._serial = 0

    async def connect(self) -> None:
        """Open the connection and wait for CONNECTED."""
        await self.close()
        cfg = self.cfg
        context = tls_context(cfg.tls, False)
        self._reader, writer = await asyncio.wait_for(
            asyncio.open_connection(cfg.host, cfg.port, ssl=context), 10
        )
        self._writer = writer
        self._splitter = FrameSplitter()
        self._frames = []
        headers = {"accept-version": "1.2", "host": cfg.vhost, "heart-beat": "0,0"}
        if cfg.username is not None:
            headers["login"] = cfg.username
        if cfg.password is not None:
            headers["passcode"] = cfg.password
        writer.write(encode("CONNECT", headers))
        command, answer, body = await asyncio.wait_for(self._next_frame(), 10)
        if command != "CONNECTED":
            message = answer.get("message") or body.decode("utf-8", errors="replace")
            await self.close()
            raise ConnectionError(f"STOMP {command}: {message}")

    async def _next_frame(self) -> tuple[str, dict[str, str], bytes]:
        assert self._reader is not None
        while True:
            while not self._frames:
                data = await self._reader.read(65536)
                if not data:
                    raise ConnectionError("the broker closed the connection")
                self._frames.extend(self._splitter.feed(data))
            frame = parse(self._frames.pop(0))
            if frame is not None:  # None: end-of-lines only (a heart-beat)
                return frame.cmd, frame.headers, frame.body

    async def publish(self, rows: Sequence[OutboxRow], timeout: float) -> Published:
        """SEND every row with a receipt, then read the RECEIPTs back."""
        writer = self._writer
        if writer is None:
            return Published(frozenset(), "not connected")
        waiting: dict[str, int] = {}
        for row in rows:
            self._serial += 1
            receipt = f"r{self._serial}"
            waiting[receipt] = row.id
            headers = {k: v for k, v in row.headers.items() if k not in FRAME_HEADERS}
            headers["destination"] = self.cfg.destination
            headers["jobwire-id"] = row.message_id
            # RabbitMQ sets the AMQP message_id from this: AMQP consumers see the id too.
            headers["amqp-message-id"] = row.message_id
            if row.key is not None:
                headers["jobwire-key"] = row.key
            if self.cfg.persistent:
                headers["persistent"] = "true"
            headers["content-length"] = str(len(row.body))
            headers["receipt"] = receipt
            writer.write(encode("SEND", headers, row.body))
        confirmed: set[int] = set()
        error: str | None = None
        try:
            async with asyncio.timeout(timeout) as deadline:
                await writer.drain()
                while waiting:
                    command, headers, body = await self._next_frame()
                    if command == "RECEIPT":
                        row_id = waiting.pop(headers.get("receipt-id", ""), None)
                        if row_id is not None:
                            confirmed.add(row_id)
                    elif command == "ERROR" and error is None:
                        detail = headers.get("message") or body.decode(errors="replace")
                        error = f"STOMP ERROR: {detail}"
                        # Read on a little: RabbitMQ answers an ERROR about one SEND (with no
                        # receipt-id to say which) and goes on to RECEIPT the others. Stopping
                        # here blamed the first row with no RECEIPT yet, an innocent one, and
                        # sent the rows taken already again on every retry.
                        soon = asyncio.get_running_loop().time() + AFTER_ERROR_S
                        deadline.reschedule(min(soon, deadline.when() or soon))
        except TimeoutError:
            error = error or f"no RECEIPT in {timeout}s"
        except (ConnectionError, OSError) as exc:
            error = error or f"{type(exc).__name__}: {exc}"
        return Published(frozenset(confirmed), error)

    async def close(self) -> None:
        """Close the connection, if open."""
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 5)


def build(name: str, output: OutputBase) -> StompPublisher:
    """The registry's factory: a ``StompPublisher`` for a ``StompOutput``."""
    assert isinstance(output, StompOutput)
    return StompPublisher(name, output)
