"""AMQP 0-9-1 (RabbitMQ) adapter on aio-pika: manual acks, prefetch, our own reconnects.

Why not ``connect_robust``: its restore of consumers after a broker restart has had
several bugs (aio-pika issues #231, #626) and it does not come back from a consumer
cancelled by the broker (#334). A plain connection inside the shared supervisor always
comes back the same way: connect, declare, consume; and a closed connection or channel
simply ends the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence
from typing import Any

import aio_pika
import aiormq.abc
import aiormq.exceptions
from aio_pika.abc import AbstractConnection

from jobwire.adapters.amqp.channel import InlineConsumer
from jobwire.adapters.amqp.config import AmqpSource
from jobwire.adapters.amqp.frames import fast_path_reader
from jobwire.adapters.amqp.queue import check_dead_letter_exchange, declare, publish_confirmed
from jobwire.adapters.base import (
    Adapter,
    Message,
    OffsetReader,
    SourceState,
    tls_context,
)
from jobwire.config import SourceBase
from jobwire.storable import octets_text, whole_text

DEFAULT_DEDUP = "property:message_id"


def _header_value(value: Any) -> str:
    # Whole, not with replacement characters: two values must not become one dedup key.
    # (pika sends bytes as a byte array, 'x'; pamqp gives a long string that is not UTF-8
    # as bytes, and a name frames.lenient read as surrogate-escaped text.)
    if isinstance(value, bytes | bytearray):
        return octets_text(bytes(value))
    if isinstance(value, str):
        return whole_text(value)
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    return str(value)


def _short(value: str | None) -> str | None:
    """A short-string property, its bytes kept whole (see ``storable.whole_text``)."""
    return None if value is None else whole_text(value)


class ConsumerCancelled(ConnectionError):
    """The broker cancelled our consumer (its queue was deleted, or moved in a cluster)."""


class AmqpAdapter(Adapter):
    """Consumes one RabbitMQ queue."""

    kind = "amqp"
    default_dedup = DEFAULT_DEDUP

    def __init__(self, cfg: AmqpSource) -> None:
        super().__init__(cfg.name)
        self.cfg = cfg
        # The current connection's consuming channel; a delivery records the connection's
        # generation (the base's), and only the live one's deliveries can be settled.
        self._underlay: aiormq.abc.AbstractChannel | None = None
        self._consumer_tag: str | None = None
        # Unsettled delivery tags of the current channel, in arrival order: a cumulative ack
        # (multiple=True) is only safe when it covers nothing that is still in flight.
        self._outstanding: dict[int, None] = {}

    def describe(self) -> dict[str, Any]:
        """State for stats, with the frame reader in use ("jobwire": the fast path)."""
        return {**super().describe(), "frame_reader": fast_path_reader()}

    async def _connect(self) -> AbstractConnection:
        context = tls_context(self.cfg.tls, self.cfg.url.startswith("amqps://"))
        kwargs: dict[str, Any] = {
            "heartbeat": int(self.cfg.heartbeat),
            "timeout": 10,
            "client_properties": {"connection_name": f"jobwire:{self.name}"},
        }
        if context is not None:
            kwargs["ssl"] = True
            kwargs["ssl_context"] = context
        connection: AbstractConnection = await aio_pika.connect(self.cfg.url, **kwargs)
        return connection

    async def _session(self) -> None:
        """Connect, declare, consume until the connection or channel closes."""
        connection = await self._connect()
        ended = asyncio.Event()
        why: list[BaseException] = []  # what ended it, when the broker said

        def end(_sender: object = None, reason: object = None, *_: object) -> None:
            if isinstance(reason, BaseException) and not why:
                why.append(reason)
            ended.set()

        connection.close_callbacks.add(end)
        try:
            channel = await connection.channel()
            channel.close_callbacks.add(end)
            await channel.set_qos(prefetch_count=self.cfg.prefetch)
            await declare(self.cfg, channel)
            # Consume on aio-pika's underlying aiormq channel: its deliveries skip aio-pika's
            # per-message IncomingMessage and second task (together about 15% of the daemon's
            # CPU in a py-spy profile of bench/amqp_drain.py).
            underlay = await channel.get_underlay_channel()

            # The broker cancels a consumer whose queue is deleted (or moves, in a cluster)
            # and keeps the channel open: without this the source said "up" and consumed
            # nothing until a restart (found by a drill). Ending the session reconnects,
            # declares the queue again where configured, and consumes.
            def cancelled(frame: Any) -> None:  # ours only, not a pause's own cancel
                if frame.consumer_tag is not None and frame.consumer_tag == self._consumer_tag:
                    end(None, ConsumerCancelled("the broker cancelled the consumer"))

            underlay.on_consumer_cancel_callbacks.add(cancelled)
            if self.cfg.on_invalid == "dead-letter":
                await check_dead_letter_exchange(self.cfg, connection, self._log)
            # The underlay is set only after the generation moves on: a live generation is
            # one with a channel, exactly as when deliveries compared channels.
            self._new_generation()
            self._underlay = underlay
            self._outstanding = {}
            if self.paused:
                self.set_state(SourceState.PAUSED)
            else:
                await self._consume()
            await ended.wait()
            if why:
                raise why[0]  # the broker's reason, in the source's state and log
        finally:
            self._outstanding = {}
            self._underlay = None
            self._consumer_tag = None
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await connection.close()

    async def _consume(self) -> None:
        assert self._underlay is not None
        ok = await self._underlay.basic_consume(
            self.cfg.queue, InlineConsumer(self._on_delivery), no_ack=False
        )
        self._consumer_tag = ok.consumer_tag
        self.set_state(SourceState.UP)

    def _on_delivery(self, delivery: aiormq.abc.DeliveredMessage) -> None:
        # Called by the channel's reader (InlineDeliveryChannel), or in a task per delivery
        # on aiormq's own channel; it never waits, so deliveries reach the intake in order.
        channel = delivery.channel
        tag = int(delivery.delivery_tag or 0)
        # Which connection it came on: the current one's if on its channel, else none.
        generation = self._generation if channel is self._underlay else -1
        if generation >= 0:
            self._outstanding[tag] = None
        props = delivery.header.properties
        properties = {
            "message_id": _short(props.message_id),
            # As they came: a reply goes back to them, and one that is not UTF-8 makes the
            # request a failed job with its reason (reply.reply_address checks them).
            "correlation_id": props.correlation_id,
            "reply_to": props.reply_to,
            "type": _short(props.message_type),
            "app_id": _short(props.app_id),
            "routing_key": _short(delivery.routing_key),
            "exchange": _short(delivery.exchange),
            "redelivered": delivery.redelivered,
        }
        headers = {whole_text(str(k)): _header_value(v) for k, v in (props.headers or {}).items()}
        message = Message(
            source=self.name,
            body=delivery.body,
            headers=headers,
            properties={k: v for k, v in properties.items() if v is not None},
            content_type=props.content_type,
            ack=lambda: self._settle_one(channel, generation, tag, "ack"),
            nack=lambda requeue: self._settle_one(channel, generation, tag, "nack", requeue),
            reject=lambda reason=None: self._reject(channel, generation, tag),
            raw=(generation, tag),
        )
        assert self._sink is not None
        self._sink(message)

    def _live(self, generation: int) -> bool:
        """Whether a delivery of ``generation`` came on the channel still open."""
        return self._underlay is not None and self.is_current(generation)

    async def _settle_one(
        self,
        channel: aiormq.abc.AbstractChannel,
        generation: int,
        tag: int,
        action: str,
        requeue: bool = True,
    ) -> None:
        if self._live(generation):
            self._outstanding.pop(tag, None)
        try:
            if action == "ack":
                await channel.basic_ack(tag)
            else:
                await channel.basic_nack(tag, requeue=requeue)
        except Exception as exc:  # noqa: BLE001 - a dead channel: the broker redelivers
            self._dropped(1, f"{type(exc).__name__}: {exc}", action=action)

    async def _reject(self, channel: aiormq.abc.AbstractChannel, generation: int, tag: int) -> None:
        """basic.reject without requeue: the queue's dead-letter exchange (required by the
        config for on_invalid dead-letter) gets it. Raises when it cannot be sent, so the
        intake never reports as dead-lettered a delivery the broker still holds."""
        if not self._live(generation):
            raise ConnectionError("the channel it came on is closed; the broker redelivers it")
        self._outstanding.pop(tag, None)
        await channel.basic_reject(tag, requeue=False)

    async def ack_many(self, messages: Sequence[Message]) -> None:
        """One cumulative ack when it covers only this batch, else one ack each."""
        channel = self._underlay
        # No channel: no generation is live (-2 matches no delivery's, not even a stale -1).
        generation = self._generation if channel is not None else -2
        current = [m.raw[1] for m in messages if m.raw[0] == generation]
        # Delivered on a channel that has since died: these acks cannot be sent.
        self._dropped(len(messages) - len(current), "channel closed")
        if not current or channel is None:
            return
        tags, top = set(current), max(current)
        covered = [t for t in self._outstanding if t <= top]
        if all(t in tags for t in covered):
            for t in covered:
                del self._outstanding[t]
            try:
                await channel.basic_ack(top, multiple=True)
            except Exception as exc:  # noqa: BLE001 - same as a closed channel
                self._dropped(len(current), f"{type(exc).__name__}: {exc}")
        else:
            for t in current:
                await self._settle_one(channel, generation, t, "ack")

    async def _on_pause(self) -> None:
        """Cancel the consumer; the broker keeps the rest of the queue."""
        if self._underlay is not None and self._consumer_tag is not None:
            tag, self._consumer_tag = self._consumer_tag, None
            with contextlib.suppress(Exception):
                await self._underlay.basic_cancel(tag)

    async def _on_resume(self) -> bool:
        """Consume again at once if connected; else the session does when it reconnects."""
        if self._underlay is None:
            return False
        if self._consumer_tag is None:
            try:
                await self._consume()
            except Exception as exc:  # noqa: BLE001 - the session notices and reconnects
                self._log.warning("resume_failed", error=f"{type(exc).__name__}: {exc}")
        return True

    async def publish(
        self,
        body: bytes,
        headers: dict[str, str],
        count: int = 1,
        content_type: str | None = "application/json",
        topic: str | None = None,
    ) -> int:
        """Publish persistent messages with publisher confirms; returns how many were confirmed."""
        connection = await self._connect()
        try:
            return await publish_confirmed(
                connection, self.cfg, body, headers, count, content_type, topic
            )
        finally:
            await connection.close()


def build(source: SourceBase, offset_reader: OffsetReader | None = None) -> AmqpAdapter:
    """The registry's factory: an ``AmqpAdapter`` for an ``AmqpSource``."""
    assert isinstance(source, AmqpSource)
    return AmqpAdapter(source)
