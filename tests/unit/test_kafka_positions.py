"""A Kafka source's per-partition bookkeeping: what is in flight, stored and to commit."""

from __future__ import annotations

import asyncio

from aiokafka import TopicPartition

from jobwire.adapters.kafka.positions import Positions, names
from jobwire.models import Message, StreamOffset

A, B = TopicPartition("t", 0), TopicPartition("t", 1)


def stored(tp: TopicPartition, offset: int) -> Message:
    """The message at ``offset`` of ``tp``, as the adapter makes it."""
    return Message(
        source="s",
        body=b"{}",
        offset=StreamOffset("g", tp.topic, tp.partition, offset + 1),
        raw=tp,
    )


def test_stored_offsets_only_move_forward_and_settle_what_was_in_flight() -> None:
    p = Positions()
    for _ in range(3):
        p.delivered(A)
    p.delivered(B)
    assert p.total_in_flight() == 4
    p.note_stored([stored(A, 5), stored(A, 6)])
    p.note_stored([stored(A, 4)])  # an older batch answered late: no step back
    assert p.stored == {A: 7} and p.to_commit == {A: 7}
    assert p.in_flight[A] == 0 and p.total_in_flight() == 1
    assert p.settled.is_set() and p.commit_wanted.is_set()


async def test_a_revoked_partition_waits_for_its_deliveries_and_no_longer() -> None:
    p = Positions()
    p.delivered(A)
    p.delivered(B)

    async def store_a_soon() -> None:
        await asyncio.sleep(0.01)
        p.note_stored([stored(A, 0)])

    task = asyncio.create_task(store_a_soon())
    assert await p.wait_stored([A], timeout=5.0)  # B's delivery does not hold A's revoke
    await task
    assert not await p.wait_stored([B], timeout=0.05)  # never stored: gives up in time


def test_forget_drops_a_partition_and_lag_counts_from_what_is_stored() -> None:
    p = Positions()
    p.delivered(A)
    p.note_stored([stored(A, 9), stored(B, 2)])
    p.forget([A])
    assert A not in p.stored and A not in p.to_commit and A not in p.in_flight

    class Consumer:
        def assignment(self) -> set[TopicPartition]:
            return {A, B}

        def highwater(self, tp: TopicPartition) -> int | None:
            return {A: 50, B: 10}[tp]

    assert p.lag(Consumer()) == {"t/1": 7}  # A: nothing stored here, no figure
    assert names([B, A]) == ["t/0", "t/1"]
