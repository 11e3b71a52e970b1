"""The AMQP source's queue: declared as the config says (or checked, when it must exist
already) and bound; its dead-letter exchange checked; and the operator's confirmed publish
to it (``jobwire publish``)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractQueue

from jobwire.adapters.amqp.config import AmqpSource


async def declare(cfg: AmqpSource, channel: AbstractChannel) -> AbstractQueue:
    """The source's queue, durable, with its arguments and bindings (passive without
    ``declare``)."""
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


async def check_dead_letter_exchange(
    cfg: AmqpSource, connection: AbstractConnection, log: Any
) -> None:
    """Warn when the dead-letter exchange does not exist: RabbitMQ then drops what is
    rejected, without a word. A warning, not a failure: good messages still flow."""
    name = cfg.dead_letter_exchange
    if name is None:
        name = cfg.queue_arguments.get("x-dead-letter-exchange")
    if not name:
        return  # "" is the default exchange, which always exists
    # A channel of its own: a failed passive declare closes the channel it ran on.
    channel = await connection.channel()
    try:
        await channel.get_exchange(str(name), ensure=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        log.warning(
            "dead_letter_exchange_missing",
            exchange=name,
            note="RabbitMQ drops dead-lettered messages until it is declared",
        )
    finally:
        with contextlib.suppress(Exception):
            await channel.close()


async def publish_confirmed(
    connection: AbstractConnection,
    cfg: AmqpSource,
    body: bytes,
    headers: dict[str, str],
    count: int,
    content_type: str | None,
    topic: str | None,
) -> int:
    """Publish ``count`` persistent copies to the source's exchange (``topic``: the routing
    key) or queue, with publisher confirms; returns how many were confirmed."""
    channel = await connection.channel(publisher_confirms=True)
    if cfg.exchange:
        exchange = await channel.get_exchange(cfg.exchange)
        routing_key = topic or (cfg.routing_keys or [cfg.queue])[0]
    else:
        if cfg.declare:
            await declare(cfg, channel)
        exchange = channel.default_exchange
        routing_key = cfg.queue
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
        confirmed += len(await asyncio.gather(*sends))
    return confirmed
