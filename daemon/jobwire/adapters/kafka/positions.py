"""Where a Kafka source stands in each partition: delivered to the intake and not yet
stored, stored with the jobs, and not yet committed to Kafka (for lag tools only)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable, Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition

from jobwire.models import Message
from jobwire.waiting import wait_until


class Positions:
    """One consumer session's per-partition bookkeeping (cleared with each session)."""

    def __init__(self) -> None:
        # Delivered to the intake and not yet stored, per partition: bounds memory, and a
        # revoked partition waits for its count to reach zero.
        self.in_flight: Counter[TopicPartition] = Counter()
        # Set whenever deliveries were stored (or a resume wants the fetch loop to look).
        self.settled = asyncio.Event()
        # The next offset stored in the database, and those not yet committed to Kafka.
        self.stored: dict[TopicPartition, int] = {}
        self.to_commit: dict[TopicPartition, int] = {}
        self.commit_wanted = asyncio.Event()

    def clear(self) -> None:
        """A new session: nothing is in flight or waiting to be committed."""
        self.in_flight.clear()
        self.stored.clear()
        self.to_commit.clear()

    def delivered(self, tp: TopicPartition, count: int = 1) -> None:
        """``count`` records of ``tp`` handed to the intake."""
        self.in_flight[tp] += count

    def total_in_flight(self) -> int:
        """Records handed to the intake and not yet stored, all partitions."""
        return sum(self.in_flight.values())

    def note_stored(self, messages: Sequence[Message]) -> None:
        """These were stored with their offsets: settled, and their offsets to commit."""
        for message in messages:
            tp: TopicPartition = message.raw
            if self.in_flight[tp] > 0:
                self.in_flight[tp] -= 1
            if message.offset is not None:
                next_offset = message.offset.next_offset
                if next_offset > self.stored.get(tp, -1):
                    self.stored[tp] = next_offset
                    self.to_commit[tp] = next_offset
        self.settled.set()
        self.commit_wanted.set()

    async def wait_stored(self, partitions: Sequence[TopicPartition], timeout: float) -> bool:
        """Wait until nothing taken from ``partitions`` is in flight; False after ``timeout``
        seconds with some still in flight."""
        in_flight = self.in_flight
        return await wait_until(
            self.settled, lambda: not any(in_flight[tp] for tp in partitions), timeout
        )

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """These partitions are no longer ours."""
        for tp in partitions:
            self.to_commit.pop(tp, None)
            self.stored.pop(tp, None)
            self.in_flight.pop(tp, None)

    def lag(self, consumer: AIOKafkaConsumer) -> dict[str, int]:
        """Messages per partition between what is stored and the log's end at the last
        fetch."""
        lag: dict[str, int] = {}
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            stored = self.stored.get(tp)
            if high is not None and stored is not None:
                lag[f"{tp.topic}/{tp.partition}"] = max(0, high - stored)
        return lag


def names(partitions: Iterable[TopicPartition]) -> list[str]:
    """``topic/partition`` of each, sorted (for logs)."""
    return sorted(f"{tp.topic}/{tp.partition}" for tp in partitions)
