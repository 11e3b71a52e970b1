"""A record aiokafka cannot decode, found and stepped past, so that one record cannot stop
its partition for good.

aiokafka decodes a fetch's records as they are handed out; one it cannot decode (a header
name that is not UTF-8, a batch in a codec it lacks, a corrupt batch) raises out of every
``getmany``, before any record of that fetch is handed out, and every retry fetches it
again. After such an error the partitions are read one record at a time: a record that
raises there is the one, at the partition's position. It is handed on as a message jobwire
could not read (a failed job with the reason, its offset stored with it like any other) and
the consumer is moved past it. The records after it in the same batch cannot be read either
(aiokafka decodes a batch's records in order, the bad one included, to reach them): each
becomes such a failed job too, naming its offset, and the record stays in Kafka to replay.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CorruptRecordException, UnsupportedCodecError

from jobwire.models import Message, StreamOffset

# What aiokafka raises for a record it cannot decode (its C decoder raises the first).
UNREADABLE_ERRORS = (UnicodeDecodeError, CorruptRecordException, UnsupportedCodecError)
# Records read one at a time per partition in one pass at most: a busy partition is not
# read one by one for good.
PROBE_RECORDS = 500
PROBE_WAIT_MS = 200


@dataclass(slots=True)
class Unreadable:
    """The record at ``offset`` of a partition, which could not be decoded, and why."""

    offset: int
    reason: str


async def fetch(
    consumer: AIOKafkaConsumer, timeout_ms: int, max_records: int, log: Any
) -> dict[TopicPartition, list[Any]]:
    """``consumer.getmany``; after an error only an undecodable record raises, what
    ``step_past`` reads instead."""
    try:
        batches: dict[TopicPartition, list[Any]] = await consumer.getmany(
            timeout_ms=timeout_ms, max_records=max_records
        )
    except UNREADABLE_ERRORS as exc:
        # One record aiokafka cannot decode would fail every fetch of its partition.
        log.warning("kafka_record_unreadable", error=f"{type(exc).__name__}: {exc}")
        return await step_past(consumer)
    return batches


async def step_past(consumer: AIOKafkaConsumer) -> dict[TopicPartition, list[Any]]:
    """Read the partitions one record at a time until one raises: returns what was read, in
    order, with the unreadable record as an ``Unreadable`` in its place; the consumer is
    then past it. Nothing unreadable found: the records read (the error may have passed)."""
    found: dict[TopicPartition, list[Any]] = {}
    paused = consumer.paused()
    for tp in sorted(consumer.assignment() - paused, key=lambda t: (t.topic, t.partition)):
        items: list[Any] = []
        found[tp] = items
        for _ in range(PROBE_RECORDS):
            try:
                batch = await consumer.getmany(tp, timeout_ms=PROBE_WAIT_MS, max_records=1)
            except UNREADABLE_ERRORS as exc:
                offset = await consumer.position(tp)
                reason = (
                    "the Kafka record could not be decoded (it, or a record before it in its"
                    f" batch, which aiokafka must decode first): {type(exc).__name__}: {exc}"
                )
                items.append(Unreadable(offset, reason[:2000]))
                consumer.seek(tp, offset + 1)
                return found
            records = batch.get(tp, [])
            if not records:
                break
            items.extend(records)
    return found


def message(source: str, group_id: str, tp: TopicPartition, item: Unreadable) -> Message:
    """The message standing for an unreadable record: no body, where it was, and why."""
    headers = {
        "kafka-topic": tp.topic,
        "kafka-partition": str(tp.partition),
        "kafka-offset": str(item.offset),
    }
    return Message(
        source=source,
        body=b"",
        headers=headers,
        properties={"topic": tp.topic, "partition": tp.partition, "offset": item.offset},
        dedup_key=f"{tp.topic}/{tp.partition}/{item.offset}",
        offset=StreamOffset(group_id, tp.topic, tp.partition, item.offset + 1),
        raw=tp,
        unreadable=item.reason,
    )
