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

What ``getmany`` had taken from other partitions before the raise is lost with it, their
positions already moved past (aiokafka drains partition after partition into one dict and
drops it on the error): every partition is sought back to where it stood before the call,
which also drops the spent fetch aiokafka keeps for the bad one. Found by a drill: a bad
record in any partition but the first was stepped past by no probe (the spent fetch
answered empty), and its partition stopped for good.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CorruptRecordException, IllegalStateError, UnsupportedCodecError

from jobwire.models import Message, StreamOffset

# What aiokafka raises for a record it cannot decode (its C decoder raises the first).
UNREADABLE_ERRORS = (UnicodeDecodeError, CorruptRecordException, UnsupportedCodecError)
# Records read one at a time per partition in one pass at most: a busy partition is not
# read one by one for good.
PROBE_RECORDS = 500
PROBE_WAIT_MS = 200
# How long a probe waits for a partition's records after a seek: a fetch in flight for
# other partitions (the broker holds it up to fetch_max_wait_ms) comes back first.
PROBE_PATIENCE_S = 5.0


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
    before = positions(consumer)
    unsettled = consumer.assignment() - consumer.paused() - before.keys()
    if unsettled:
        # Positions still being found (a new assignment with nothing stored: the reset
        # policy's offset): found first, or a partition drained in a call that raises
        # could not be sought back (a drill lost a whole partition's records that way).
        try:
            async with asyncio.timeout(max(timeout_ms, PROBE_WAIT_MS) / 1000):
                for tp in unsettled:
                    await consumer.position(tp)
        except (TimeoutError, IllegalStateError):
            return {}  # as a fetch that found nothing; a rebalance is handled as ever
        before = positions(consumer)
    try:
        batches: dict[TopicPartition, list[Any]] = await consumer.getmany(
            timeout_ms=timeout_ms, max_records=max_records
        )
    except UNREADABLE_ERRORS as exc:
        # One record aiokafka cannot decode would fail every fetch of its partition.
        log.warning("kafka_record_unreadable", error=f"{type(exc).__name__}: {exc}")
        assigned = consumer.assignment()  # a rebalance may have come in between
        for tp, offset in before.items():
            if tp in assigned:
                consumer.seek(tp, offset)
        return await step_past(consumer)
    return batches


def positions(consumer: AIOKafkaConsumer) -> dict[TopicPartition, int]:
    """Each assigned partition's position (the next record getmany hands out), read without
    waiting. aiokafka's own ``position()`` is a coroutine per partition; this reads the state
    it reads (proven on aiokafka 0.14), and gives nothing where that state is not found."""
    try:
        assignment = consumer._subscription.subscription.assignment
        found: dict[TopicPartition, int] = {}
        for tp in assignment.tps:
            state = assignment.state_value(tp)
            if state.has_valid_position:
                found[tp] = state.position
        return found
    except AttributeError:
        return {}


async def step_past(consumer: AIOKafkaConsumer) -> dict[TopicPartition, list[Any]]:
    """Read the partitions one record at a time until one raises: returns what was read, in
    order, with the unreadable record as an ``Unreadable`` in its place; the consumer is
    then past it. Nothing unreadable found: the records read (the error may have passed)."""
    found: dict[TopicPartition, list[Any]] = {}
    paused = consumer.paused()
    for tp in sorted(consumer.assignment() - paused, key=lambda t: (t.topic, t.partition)):
        items: list[Any] = []
        found[tp] = items
        patience = time.monotonic() + PROBE_PATIENCE_S
        for _ in range(PROBE_RECORDS):
            if not await _behind(consumer, tp):
                break
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
            if records:
                items.extend(records)
            elif time.monotonic() > patience:
                break
    return found


async def _behind(consumer: AIOKafkaConsumer, tp: TopicPartition) -> bool:
    """Whether ``tp`` has records past its position, by the log end of the last fetch
    (unknown before any fetch: assumed so)."""
    end = consumer.highwater(tp)
    return end is None or await consumer.position(tp) < end


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
