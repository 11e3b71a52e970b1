"""A Kafka source's side of a rebalance: partitions taken away wait (bounded) for what was
read from them to be stored; partitions given are sought to the offset stored with the jobs."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener

from jobwire.adapters.base import OffsetReader
from jobwire.adapters.kafka.config import KafkaSource
from jobwire.adapters.kafka.positions import Positions, names

Commit = Callable[[AIOKafkaConsumer, dict[TopicPartition, int]], Awaitable[None]]


class Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """aiokafka's rebalance listener for one Kafka source (kept across its sessions)."""

    def __init__(
        self,
        cfg: KafkaSource,
        positions: Positions,
        offset_reader: OffsetReader | None,
        consumer: Callable[[], AIOKafkaConsumer | None],
        commit: Commit,
        log: Any,
    ) -> None:
        self.cfg = cfg
        self.positions = positions
        self.offset_reader = offset_reader
        self._consumer = consumer
        self._commit = commit
        self._log = log
        self.assignments = 0  # rebalances that gave us partitions (a stable group: 1)
        self._checks: set[asyncio.Task[None]] = set()

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        """Wait (bounded) until what was taken from these partitions is stored."""
        positions = self.positions
        if not await positions.wait_stored(revoked, self.cfg.revoke_timeout):
            # Their next owner reads them again from the stored offset; if we still store
            # them later, their dedup keys make that a no-op.
            self._log.warning(
                "kafka_revoke_timeout",
                in_flight={f"{tp.topic}/{tp.partition}": positions.in_flight[tp] for tp in revoked},
            )
        consumer = self._consumer()
        if consumer is not None:
            gone = set(revoked)
            wanted = {tp: o for tp, o in positions.to_commit.items() if tp in gone}
            if wanted:
                await self._commit(consumer, wanted)
        positions.forget(revoked)
        self._log.info("kafka_partitions_revoked", partitions=names(revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        """Seek each partition to the offset stored with the jobs, where there is one."""
        stored = await self._stored_offsets(assigned)
        self.assignments += 1
        consumer = self._consumer()
        for tp in assigned:
            offset = stored.get((tp.topic, tp.partition))
            if offset is not None and consumer is not None:
                consumer.seek(tp, offset)
        self._log.info(
            "kafka_partitions_assigned",
            partitions=names(assigned),
            from_store={f"{t}/{p}": o for (t, p), o in stored.items()},
        )
        if consumer is not None and stored:
            # Beside the fetch, not in this callback: aiokafka awaits it before fetching.
            self._checks.add(
                task := asyncio.create_task(self._check_log_ends(consumer, assigned, stored))
            )
            task.add_done_callback(self._checks.discard)

    async def _check_log_ends(
        self,
        consumer: AIOKafkaConsumer,
        assigned: Sequence[TopicPartition],
        stored: dict[tuple[str, int], int],
    ) -> None:
        """Warn of stored offsets past their partition's log end: the topic was deleted and
        created again (or the broker lost its log). Kafka then starts the partition over by
        ``auto_offset_reset``, and new records whose positions match old jobs' dedup keys
        would be taken for duplicates without a word (found by a drill)."""
        ours = [tp for tp in assigned if (tp.topic, tp.partition) in stored]
        try:
            async with asyncio.timeout(5):
                ends: dict[TopicPartition, int] = await consumer.end_offsets(ours)
        except Exception:  # noqa: BLE001 - only a warning is at stake; the fetch goes on
            return
        past = {
            f"{tp.topic}/{tp.partition}": (stored[(tp.topic, tp.partition)], end)
            for tp, end in ends.items()
            if stored[(tp.topic, tp.partition)] > end
        }
        if past:
            self._log.warning(
                "kafka_stored_offset_past_log_end",
                partitions={name: {"stored": s, "log_end": e} for name, (s, e) in past.items()},
                hint=(
                    "the topic was deleted and created again, or the broker lost its log: the "
                    "partition starts over from auto_offset_reset, and a record whose "
                    "topic/partition/offset matches an old job's dedup key is taken for a "
                    "duplicate (see the Kafka page, Replaying)"
                ),
            )

    async def _stored_offsets(
        self, assigned: Sequence[TopicPartition]
    ) -> dict[tuple[str, int], int]:
        if self.offset_reader is None or not assigned:
            return {}
        try:
            return await self.offset_reader(
                self.cfg.group_id, [(tp.topic, tp.partition) for tp in assigned]
            )
        except Exception as exc:  # noqa: BLE001 - fall back to Kafka's committed offsets
            # Safe: Kafka's committed offset is never ahead of the stored one (it is
            # committed after the store), so at worst messages are read again and their
            # dedup keys absorb them.
            self._log.warning("kafka_offsets_unreadable", error=f"{type(exc).__name__}: {exc}")
            return {}
