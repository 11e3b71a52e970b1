"""What a Kafka record becomes: a Message keyed and positioned by its offset."""

from __future__ import annotations

from typing import Any

from aiokafka import ConsumerRecord, TopicPartition

from jobwire.adapters.base import Message
from jobwire.models import StreamOffset
from jobwire.storable import octets_text


def _text(value: bytes | None) -> str:
    """Header and key bytes as text, kept whole (``storable.octets_text``)."""
    return "" if value is None else octets_text(value)


def message(
    source: str, group_id: str, tp: TopicPartition, record: ConsumerRecord[bytes, bytes]
) -> Message:
    """The record as a message of ``source``; its offset is stored with its job."""
    # Where the message came from travels with the job, first: the store keeps a message's
    # first headers only, and a producer's 1,000 headers must not push it out. A producer's
    # header of the same name replaces it (the producer's header wins, as for every broker).
    headers = {
        "kafka-topic": record.topic,
        "kafka-partition": str(record.partition),
        "kafka-offset": str(record.offset),
    }
    if record.key is not None:
        headers["kafka-key"] = _text(record.key)
    for name, value in record.headers or ():
        headers[str(name)] = _text(value)
    properties: dict[str, Any] = {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": record.timestamp,
    }
    if record.key is not None:
        properties["key"] = _text(record.key)
    return Message(
        source=source,
        body=record.value or b"",
        headers=headers,
        properties=properties,
        content_type=headers.get("content-type") or headers.get("content_type"),
        dedup_key=f"{record.topic}/{record.partition}/{record.offset}",
        offset=StreamOffset(group_id, record.topic, record.partition, record.offset + 1),
        raw=tp,
    )
