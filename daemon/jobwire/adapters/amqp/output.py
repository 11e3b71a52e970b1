"""The AMQP output: publishes outbox rows to an exchange with publisher confirms."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange
from pamqp.commands import Basic

from jobwire.adapters.amqp.config import AmqpOutput
from jobwire.adapters.base import tls_context
from jobwire.config import OutputBase
from jobwire.effects import OutboxRow, Published


class AmqpPublisher:
    """One connection and one confirming channel per output."""

    # A returned message (mandatory, no queue took it) fails its row; a subclass that drops
    # such messages instead (replies: the requester's queue is gone) says False.
    returned_fails = True

    def __init__(self, name: str, cfg: AmqpOutput) -> None:
        self.name = name
        self.cfg = cfg
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None

    async def connect(self) -> None:
        """Connect and open a channel with publisher confirms."""
        await self.close()
        context = tls_context(self.cfg.tls, self.cfg.url.startswith("amqps://"))
        kwargs: dict[str, Any] = {
            "heartbeat": int(self.cfg.heartbeat),
            "timeout": 10,
            "client_properties": {"connection_name": f"jobwire-output:{self.name}"},
        }
        if context is not None:
            kwargs["ssl"] = True
            kwargs["ssl_context"] = context
        self._connection = await aio_pika.connect(self.cfg.url, **kwargs)
        # on_return_raises: a mandatory message no queue took comes back as basic.return
        # followed by an ack; without it aiormq reports that ack as success and the row
        # would be marked sent though no queue holds the message.
        self._channel = await self._connection.channel(
            publisher_confirms=True, on_return_raises=self.returned_fails
        )
        if self.cfg.exchange:
            self._exchange = await self._channel.get_exchange(self.cfg.exchange, ensure=False)
        else:
            self._exchange = self._channel.default_exchange

    def _message(self, row: OutboxRow) -> aio_pika.Message:
        headers: dict[str, Any] = dict(row.headers)
        content_type = headers.pop("content-type", None)
        if row.key is not None:
            headers["jobwire-key"] = row.key
        return aio_pika.Message(
            row.body,
            message_id=row.message_id,
            content_type=content_type,
            headers=headers or None,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )

    def _routing_key(self, row: OutboxRow) -> str:
        """Where a row goes on the exchange (the output's routing key; a subclass may say
        per row)."""
        return self.cfg.routing_key

    async def publish(self, rows: Sequence[OutboxRow], timeout: float) -> Published:
        """Send every row at once on the channel (its frames go out in order) and wait for
        the confirms; a row is confirmed only by the broker's ack."""
        exchange = self._exchange
        if exchange is None:
            return Published(frozenset(), "not connected")
        tasks = [
            asyncio.ensure_future(
                exchange.publish(
                    self._message(row),
                    routing_key=self._routing_key(row),
                    mandatory=self.cfg.mandatory,
                )
            )
            for row in rows
        ]
        done, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        confirmed: set[int] = set()
        error: str | None = None
        returned = False
        for row, task in zip(rows, tasks, strict=True):
            if task in done and task.exception() is None:
                confirmed.add(row.id)
            elif error is None:
                exc = task.exception() if task in done else None
                # The setup's fault, not the message's, so no row is charged and none is set
                # aside: returned (no queue bound), nacked (a queue full with reject-publish)
                # or no such exchange. They wait, retried with backoff, until it is mended.
                returned = isinstance(
                    getattr(exc, "frame", None), Basic.Return | Basic.Nack
                ) or isinstance(exc, aiormq.exceptions.ChannelNotFoundEntity)
                error = (
                    f"{type(exc).__name__}: {exc}"
                    if exc is not None
                    else f"no confirm within {timeout}s"
                )
        if pending:
            await asyncio.wait(pending)
        return Published(frozenset(confirmed), error, blameless=returned)

    async def close(self) -> None:
        """Close the connection, if open."""
        connection, self._connection = self._connection, None
        self._channel = self._exchange = None
        if connection is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), 5)


def build(name: str, output: OutputBase) -> AmqpPublisher:
    """The registry's factory: an ``AmqpPublisher`` for an ``AmqpOutput``."""
    assert isinstance(output, AmqpOutput)
    return AmqpPublisher(name, output)
