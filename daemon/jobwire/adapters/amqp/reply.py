"""The AMQP reply publisher: a finished job's reply to the request's ``reply_to`` queue
(through the default exchange) with its ``correlation_id``."""

from __future__ import annotations

from collections.abc import Sequence

import aio_pika
import structlog
from aio_pika.abc import AbstractIncomingMessage

from jobwire.adapters.amqp.config import AmqpOutput
from jobwire.adapters.amqp.output import AmqpPublisher
from jobwire.config import OutputBase
from jobwire.effects import OutboxRow, Published
from jobwire.reply import protocol_headers, queue_problem, reply_to, set_aside

log = structlog.get_logger("jobwire.reply")


class AmqpReplyPublisher(AmqpPublisher):
    """Each row to the queue its ``jobwire-reply-to`` header names (a row written before
    migration 0015: its key), with the request's correlation id.

    Published mandatory, but a returned reply is not retried: the reply queue is gone (an
    exclusive queue ends with its requester's connection) and never comes back, so waiting
    for it would only hold up the replies behind it. The broker's ack after the return
    marks the row sent; the drop is counted (``dropped``) and logged (``reply_dropped``).
    A row whose address no queue can have (longer than 255 bytes: written by hand, the
    intake refuses such a request) is set aside at once rather than tried again, logged
    as ``reply_dropped`` and counted by the relay (``parked``), not in ``dropped``.
    """

    returned_fails = False

    def __init__(self, name: str, cfg: AmqpOutput) -> None:
        super().__init__(name, cfg)
        self.dropped = 0

    async def connect(self) -> None:
        """Connect, and hear of replies no queue took."""
        await super().connect()
        assert self._channel is not None
        self._channel.return_callbacks.add(self._returned)

    async def publish(self, rows: Sequence[OutboxRow], timeout: float) -> Published:
        """Send the rows that can be sent; those that never can are set aside at once."""
        refused = {
            r.id: f"reply_to {why}" for r in rows if (why := queue_problem(reply_to(r) or ""))
        }
        sendable = [r for r in rows if r.id not in refused]
        result = await super().publish(sendable, timeout) if sendable else Published(frozenset())
        return set_aside(result, refused, self.name)

    def _returned(self, _channel: object, message: AbstractIncomingMessage) -> None:
        self.dropped += 1
        log.warning(
            "reply_dropped",
            output=self.name,
            message_id=message.message_id,
            reply_to=message.routing_key,
            reason="no queue took it (the requester's reply queue is gone)",
        )

    def _message(self, row: OutboxRow) -> aio_pika.Message:
        headers, correlation = protocol_headers(row)
        # No key: a row written before migration 0015 has its address there, which is the
        # routing key already, not worth a jobwire-key header.
        message = super()._message(row._replace(key=None, headers=headers))
        message.correlation_id = correlation
        return message

    def _routing_key(self, row: OutboxRow) -> str:
        """The reply queue the request named (through the default exchange)."""
        return reply_to(row) or ""


def build(name: str, output: OutputBase) -> AmqpReplyPublisher:
    """The registry's factory: an ``AmqpReplyPublisher`` for a source's reply output."""
    assert isinstance(output, AmqpOutput)
    return AmqpReplyPublisher(name, output)
