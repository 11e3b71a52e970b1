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
import ssl
import uuid
from collections.abc import Sequence
from typing import Any

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractIncomingMessage,
    AbstractQueue,
)

from jobwire.adapters.base import Adapter, Message, MessageSink, SourceState, supervise
from jobwire.config import AmqpSource

DEFAULT_DEDUP = "property:message_id"


def _header_value(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        return value
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    return str(value)


def _ssl_context(cfg: AmqpSource) -> ssl.SSLContext | None:
    if cfg.tls is None:
        return None
    context = ssl.create_default_context(cafile=str(cfg.tls.ca_file) if cfg.tls.ca_file else None)
    if cfg.tls.cert_file:
        context.load_cert_chain(
            str(cfg.tls.cert_file), str(cfg.tls.key_file) if cfg.tls.key_file else None
        )
    if not cfg.tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _channel_key(delivery: AbstractIncomingMessage) -> int | None:
    """Identity of the channel a delivery came on; None once that channel is closed."""
    try:
        return id(delivery.channel)  # aio-pika raises here when the channel is closed
    except Exception:
        return None


class AmqpAdapter(Adapter):
    """Consumes one RabbitMQ queue."""

    kind = "amqp"
    default_dedup = DEFAULT_DEDUP

    def __init__(self, cfg: AmqpSource) -> None:
        super().__init__(cfg.name)
        self.cfg = cfg
        self._sink: MessageSink | None = None
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None
        self._paused = False
        # Unsettled delivery tags per channel, in arrival order: a cumulative ack
        # (multiple=True) is only safe when it covers nothing that is still in flight.
        self._outstanding: dict[int, dict[int, None]] = {}
        self.dropped_acks = 0

    async def _connect(self) -> AbstractConnection:
        context = _ssl_context(self.cfg)
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

    async def _declare(self, channel: AbstractChannel) -> AbstractQueue:
        cfg = self.cfg
        if not cfg.declare:
            return await channel.declare_queue(cfg.queue, passive=True)
        arguments: dict[str, Any] = dict(cfg.queue_arguments)
        if cfg.queue_type == "quorum":
            arguments["x-queue-type"] = "quorum"
        if cfg.dead_letter_exchange is not None:
            arguments["x-dead-letter-exchange"] = cfg.dead_letter_exchange
        if cfg.dead_letter_routing_key is not None:
            arguments["x-dead-letter-routing-key"] = cfg.dead_letter_routing_key
        queue = await channel.declare_queue(cfg.queue, durable=True, arguments=arguments or None)
        if cfg.exchange:
            exchange = await channel.declare_exchange(cfg.exchange, cfg.exchange_type, durable=True)
            for key in cfg.routing_keys or [cfg.queue]:
                await queue.bind(exchange, routing_key=key)
        return queue

    async def run(self, sink: MessageSink) -> None:
        """Connect, declare, consume; reconnect with backoff whenever the connection ends."""
        self._sink = sink
        await supervise(self, self._session)

    async def _session(self) -> None:
        connection = await self._connect()
        ended = asyncio.Event()
        connection.close_callbacks.add(lambda *_: ended.set())
        try:
            channel = await connection.channel()
            channel.close_callbacks.add(lambda *_: ended.set())
            await channel.set_qos(prefetch_count=self.cfg.prefetch)
            queue = await self._declare(channel)
            self._channel, self._queue = channel, queue
            # Deliveries carry the underlying aiormq channel: key the bookkeeping by that.
            underlay = await channel.get_underlay_channel()
            self._outstanding[id(underlay)] = {}
            if self._paused:
                self.set_state(SourceState.PAUSED)
            else:
                self._consumer_tag = await queue.consume(self._on_message)
                self.set_state(SourceState.UP)
            await ended.wait()
        finally:
            self._outstanding.clear()
            self._channel = self._queue = None
            self._consumer_tag = None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), 5)

    async def _on_message(self, delivery: AbstractIncomingMessage) -> None:
        # Runs as one task per delivery (aiormq); nothing here may wait before the hand-off,
        # so deliveries reach the intake in arrival order.
        outstanding = self._outstanding.get(_channel_key(delivery) or 0)
        if outstanding is not None and delivery.delivery_tag is not None:
            outstanding[delivery.delivery_tag] = None
        properties = {
            "message_id": delivery.message_id,
            "correlation_id": delivery.correlation_id,
            "type": delivery.type,
            "app_id": delivery.app_id,
            "routing_key": delivery.routing_key,
            "exchange": delivery.exchange,
            "redelivered": delivery.redelivered,
        }
        headers = {str(k): _header_value(v) for k, v in (delivery.headers or {}).items()}
        message = Message(
            source=self.name,
            body=delivery.body,
            headers=headers,
            properties={k: v for k, v in properties.items() if v is not None},
            content_type=delivery.content_type,
            ack=lambda: self._settle_one(delivery, "ack"),
            nack=lambda requeue: self._settle_one(delivery, "nack", requeue),
            reject=lambda: self._settle_one(delivery, "reject"),
            raw=delivery,
        )
        assert self._sink is not None
        await self._sink(message)

    def _forget(self, delivery: AbstractIncomingMessage) -> None:
        outstanding = self._outstanding.get(_channel_key(delivery) or 0)
        if outstanding is not None and delivery.delivery_tag is not None:
            outstanding.pop(delivery.delivery_tag, None)

    async def _settle_one(
        self, delivery: AbstractIncomingMessage, action: str, requeue: bool = True
    ) -> None:
        self._forget(delivery)
        try:
            if action == "ack":
                await delivery.ack()
            elif action == "nack":
                await delivery.nack(requeue=requeue)
            else:
                await delivery.reject(requeue=False)
        except Exception as exc:
            self.dropped_acks += 1
            self._log.warning("settle_dropped", action=action, error=f"{type(exc).__name__}: {exc}")

    async def ack_many(self, messages: Sequence[Message]) -> None:
        """One cumulative ack per channel when it covers only this batch, else one each."""
        by_channel: dict[int | None, list[AbstractIncomingMessage]] = {}
        for message in messages:
            delivery: AbstractIncomingMessage = message.raw
            by_channel.setdefault(_channel_key(delivery), []).append(delivery)
        for channel_id, deliveries in by_channel.items():
            outstanding = None if channel_id is None else self._outstanding.get(channel_id)
            if outstanding is None:
                # The channel died after delivery: these acks cannot be sent. The broker
                # redelivers; the dedup key turns the redelivery into no new job.
                self.dropped_acks += len(deliveries)
                self._log.warning("acks_dropped", count=len(deliveries), reason="channel closed")
                continue
            tags = {d.delivery_tag for d in deliveries}
            top = max(deliveries, key=lambda d: d.delivery_tag or 0)
            covered = [t for t in outstanding if t <= (top.delivery_tag or 0)]
            if all(t in tags for t in covered):
                for tag in covered:
                    del outstanding[tag]
                try:
                    await top.ack(multiple=True)
                except Exception as exc:
                    self.dropped_acks += len(deliveries)
                    self._log.warning(
                        "acks_dropped", count=len(deliveries), reason=f"{type(exc).__name__}: {exc}"
                    )
            else:
                for delivery in deliveries:
                    await self._settle_one(delivery, "ack")

    async def pause(self) -> None:
        """Cancel the consumer; the broker keeps the rest of the queue."""
        self._paused = True
        if self._queue is not None and self._consumer_tag is not None:
            tag, self._consumer_tag = self._consumer_tag, None
            with contextlib.suppress(Exception):
                await self._queue.cancel(tag)
        self.set_state(SourceState.PAUSED)

    async def resume(self) -> None:
        """Consume again (at once if connected, else when the session reconnects)."""
        self._paused = False
        if self._queue is not None and self._consumer_tag is None:
            try:
                self._consumer_tag = await self._queue.consume(self._on_message)
                self.set_state(SourceState.UP)
            except Exception as exc:
                self._log.warning("resume_failed", error=f"{type(exc).__name__}: {exc}")

    async def publish(
        self,
        body: bytes,
        headers: dict[str, str],
        count: int = 1,
        content_type: str | None = "application/json",
    ) -> int:
        """Publish persistent messages with publisher confirms; returns how many were confirmed."""
        connection = await self._connect()
        try:
            channel = await connection.channel(publisher_confirms=True)
            if self.cfg.exchange:
                exchange = await channel.get_exchange(self.cfg.exchange)
                routing_key = (self.cfg.routing_keys or [self.cfg.queue])[0]
            else:
                if self.cfg.declare:
                    await self._declare(channel)
                exchange = channel.default_exchange
                routing_key = self.cfg.queue
            confirmed = 0
            for start in range(0, count, 500):
                sends = [
                    exchange.publish(
                        aio_pika.Message(
                            body,
                            headers=dict(headers),
                            message_id=uuid.uuid4().hex,
                            content_type=content_type,
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        ),
                        routing_key=routing_key,
                    )
                    for _ in range(min(500, count - start))
                ]
                results = await asyncio.gather(*sends)
                confirmed += len(results)
            return confirmed
        finally:
            await connection.close()
