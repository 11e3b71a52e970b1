"""The Kafka output: publishes outbox rows with acks=all and the idempotent producer."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError

from jobwire.adapters.base import stop_quietly
from jobwire.adapters.kafka.client import client_options
from jobwire.adapters.kafka.config import KafkaOutput
from jobwire.config import OutputBase
from jobwire.effects import OutboxRow, Published


def _options(cfg: KafkaOutput) -> dict[str, Any]:
    return {
        **client_options(cfg),
        "acks": "all",
        # No duplicates from the producer's own retries, and a partition's order kept.
        "enable_idempotence": cfg.idempotent,
        "linger_ms": 5,
    }


# Refusals a record can never get past (its size): set aside at once, not retried.
_NEVER = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError)


class KafkaPublisher:
    """One producer per output; a row's key is the record's key (its partition)."""

    def __init__(self, name: str, cfg: KafkaOutput) -> None:
        self.name = name
        self.cfg = cfg
        self._producer: AIOKafkaProducer | None = None

    async def connect(self) -> None:
        """Start the producer (it fetches the cluster's metadata)."""
        await self.close()
        producer = AIOKafkaProducer(**_options(self.cfg))
        try:
            await asyncio.wait_for(producer.start(), 30)
        except BaseException:
            await stop_quietly(producer.stop())
            raise
        self._producer = producer

    async def publish(self, rows: Sequence[OutboxRow], timeout: float) -> Published:
        """Send every row (batched by the producer, in order per partition) and wait for
        the acknowledgements of all in-sync replicas."""
        producer = self._producer
        if producer is None:
            return Published(frozenset(), "not connected")
        futures: list[asyncio.Future[Any]] = []
        error: str | None = None
        permanent: set[int] = set()
        topic, send = self.cfg.topic, producer.send
        try:
            for row in rows:
                headers = [(k, v.encode()) for k, v in row.headers.items()] if row.headers else []
                headers.append(("jobwire-id", row.message_id_bytes))
                futures.append(
                    await send(
                        topic,
                        row.body,
                        key=None if row.key is None else row.key.encode(),
                        headers=headers,
                    )
                )
        except Exception as exc:  # noqa: BLE001 - the rows not sent are the answer
            error = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, _NEVER):
                permanent.add(rows[len(futures)].id)
        confirmed: set[int] = set()
        if futures:
            done, pending = await asyncio.wait(futures, timeout=timeout)
            for future in pending:
                future.cancel()
            for row, future in zip(rows, futures, strict=False):
                # The usual case, every future done: no lookup in ``done`` for each row.
                if (not pending or future in done) and future.exception() is None:
                    confirmed.add(row.id)
                    continue
                failure = future.exception() if future in done else None
                if isinstance(failure, _NEVER):
                    permanent.add(row.id)
                if error is None:
                    error = (
                        f"{type(failure).__name__}: {failure}"
                        if failure
                        else f"no ack in {timeout}s"
                    )
        return Published(frozenset(confirmed), error, frozenset(permanent))

    async def close(self) -> None:
        """Stop the producer, if started."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await stop_quietly(producer.stop())


def build(name: str, output: OutputBase) -> KafkaPublisher:
    """The registry's factory: a ``KafkaPublisher`` for a ``KafkaOutput``."""
    assert isinstance(output, KafkaOutput)
    return KafkaPublisher(name, output)
