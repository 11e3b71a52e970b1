"""An aiormq channel that hands a delivery to jobwire's consumer without a task for each.

aiormq starts a task for every delivery it hands to a consumer callback (with a wrapper,
a set entry and two done callbacks). The AMQP adapter's consumer only queues the message
for the intake, so it cannot block: ``InlineDeliveryChannel`` calls it directly from the
channel's reader, in arrival order, and a callback that raises is logged as aiormq logs
it. Any other consumer (aio-pika's, for publishing code in the same process) still gets
its task. ``frames.install_fast_path()`` puts this class in place together with the frame
reader, under the same version pin and the same way back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import aiormq.channel
from aiormq.abc import DeliveredMessage

# aiormq's own logger and message for a failed consumer callback.
_aiormq_log = logging.getLogger(aiormq.channel.__name__)


class InlineConsumer:
    """A consumer callback for ``basic_consume`` whose delivery function never waits."""

    __slots__ = ("deliver",)

    def __init__(self, deliver: Callable[[DeliveredMessage], None]) -> None:
        self.deliver = deliver

    async def __call__(self, message: DeliveredMessage) -> None:
        """aiormq's own channel: run as the task it starts for each delivery."""
        self.deliver(message)


class InlineDeliveryChannel(aiormq.channel.Channel):
    """aiormq's Channel, but an ``InlineConsumer`` is called directly, not in a new task."""

    async def _on_deliver_frame(self, frame: Any) -> None:
        stored = self.consumers.get(frame.consumer_tag) if frame.consumer_tag else None
        # basic_consume keeps a callable that is not a coroutine function behind a
        # functools.wraps wrapper; the consumer itself is its __wrapped__.
        consumer = getattr(stored, "__wrapped__", stored)
        if not isinstance(consumer, InlineConsumer):
            await super()._on_deliver_frame(frame)
            return
        # As aiormq's own: the header, then the body frames, then the hand-over. One
        # difference: the consumer is looked up before the content frames are read, not
        # after; one cancelled meanwhile still gets this message (stored and acked by
        # jobwire, where aiormq would leave it unacknowledged until the channel closes).
        header = await self._Channel__get_content_header()  # type: ignore[attr-defined]
        message = await self._read_content(frame, header)
        try:
            consumer.deliver(message)
        except Exception:  # noqa: BLE001 - as aiormq: a failing callback must not end the channel
            _aiormq_log.exception("Consumer callback failed")
