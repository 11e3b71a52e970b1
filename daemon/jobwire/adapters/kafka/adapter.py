"""Kafka adapter on aiokafka: a consumer group whose offsets live in PostgreSQL with the jobs.

Kafka has no per-message ack: a consumer's progress is an offset. Each batch's offsets are
written by the intake in the same transaction as its job rows (``Message.offset``), so jobs
and offsets can never disagree, whatever crashes when. On assignment a partition is sought to
the stored offset; without one the group's committed offset applies, then
``auto_offset_reset``. Offsets are also committed to Kafka after each store commit, only so
that lag tools see progress: the database is the truth.

Ordering is the rule that keeps this exact: a partition's messages are stored in the order
they were read, and a batch the store could not take is kept and stored again by the intake
(``requeue_redelivers = False``), never skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from jobwire.adapters.base import (
    Adapter,
    Message,
    OffsetReader,
    SourceState,
    stop_quietly,
)
from jobwire.adapters.kafka import records, unreadable
from jobwire.adapters.kafka.client import client_options
from jobwire.adapters.kafka.config import KafkaSource
from jobwire.adapters.kafka.positions import Positions, names
from jobwire.adapters.kafka.rebalance import Rebalance
from jobwire.config import SourceBase

# Metadata probes (one per heart-beat interval) that fail in a row before the session is
# ended and started afresh; the first failure already marks the source down.
_PROBES_BEFORE_RECONNECT = 3


class KafkaAdapter(Adapter):
    """Consumes Kafka topics in a consumer group, offsets kept with the job rows."""

    kind = "kafka"
    default_dedup = None  # each message carries topic/partition/offset as its key
    requeue_redelivers = False

    def __init__(self, cfg: KafkaSource, offset_reader: OffsetReader | None = None) -> None:
        super().__init__(cfg.name)
        self.cfg = cfg
        self._consumer: AIOKafkaConsumer | None = None
        self._positions = Positions()
        self._rebalance = Rebalance(
            cfg, self._positions, offset_reader, lambda: self._consumer, self._commit, self._log
        )
        self.lag: dict[str, int] = {}

    @property
    def assignments(self) -> int:
        """Rebalances that gave this source partitions (a stable group: 1)."""
        return self._rebalance.assignments

    @property
    def partitions(self) -> frozenset[str]:
        """``topic/partition`` of each partition assigned to this session now."""
        consumer = self._consumer
        return frozenset(names(consumer.assignment())) if consumer is not None else frozenset()

    # -- consuming ------------------------------------------------------------------

    def _new_consumer(self) -> AIOKafkaConsumer:
        cfg = self.cfg
        return AIOKafkaConsumer(
            group_id=cfg.group_id,
            enable_auto_commit=False,
            auto_offset_reset=cfg.auto_offset_reset,
            isolation_level=cfg.isolation_level,
            max_poll_records=cfg.max_records,
            session_timeout_ms=int(cfg.session_timeout * 1000),
            heartbeat_interval_ms=int(cfg.heartbeat_interval * 1000),
            max_poll_interval_ms=int(cfg.max_poll_interval * 1000),
            **client_options(cfg),
        )

    async def _session(self) -> None:
        """Join the group and consume until a fetch, commit or probe loop ends."""
        consumer = self._new_consumer()
        consumer.subscribe(topics=list(self.cfg.topics), listener=self._rebalance)
        await consumer.start()
        self._consumer = consumer
        # Offsets, not per-connection acks, settle Kafka deliveries: the generation is kept
        # only so that every adapter counts its connections the same way.
        self._new_generation()
        self._positions.clear()
        self.set_state(SourceState.PAUSED if self.paused else SourceState.UP)
        tasks = [
            asyncio.create_task(loop(consumer), name=f"jobwire-kafka-{self.name}")
            for loop in (self._fetch_loop, self._commit_loop, self._probe_loop)
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # a loop that ended raises its error here; the supervisor reconnects
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._consumer = None
            await stop_quietly(consumer.stop())

    async def _fetch_loop(self, consumer: AIOKafkaConsumer) -> None:
        assert self._sink is not None
        positions = self._positions
        while True:
            self._apply_pause(consumer)
            if consumer.assignment() and consumer.paused() == consumer.assignment():
                # Full (or held): wait for the intake to store something, or for a resume,
                # instead of a fetch that can only time out (found by the flood drill: a
                # 200 ms getmany per refill held intake to max_in_flight per 200 ms). Poll
                # anyway now and then: a consumer silent for max_poll_interval leaves its group.
                positions.settled.clear()
                self._apply_pause(consumer)  # an ack just before the clear made room?
                if consumer.paused() == consumer.assignment():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(1.0):
                            await positions.settled.wait()
                self._apply_pause(consumer)  # a rebalance may have assigned new partitions
                # Whatever this returns is delivered below: a record handed out by getmany
                # has moved the position past it and must not be dropped.
                batches = await unreadable.fetch(consumer, 0, self.cfg.max_records, self._log)
            else:
                batches = await unreadable.fetch(consumer, 200, self.cfg.max_records, self._log)
            group = self.cfg.group_id
            for tp, fetched in batches.items():
                # Counted before the first is handed over: the sink never waits, so none is
                # stored before all of them are counted.
                positions.delivered(tp, len(fetched))
                for record in fetched:
                    if isinstance(record, unreadable.Unreadable):
                        self._sink(unreadable.message(self.name, group, tp, record))
                    else:
                        self._sink(records.message(self.name, group, tp, record))

    def _apply_pause(self, consumer: AIOKafkaConsumer) -> None:
        assigned = consumer.assignment()
        if not assigned:
            return
        full = self._positions.total_in_flight() >= self.cfg.max_in_flight
        paused = consumer.paused()
        if self.paused or full:
            if paused != assigned:
                consumer.pause(*assigned)
        elif paused:
            consumer.resume(*paused)

    # -- settling -------------------------------------------------------------------

    async def ack_many(self, messages: Sequence[Message]) -> None:
        """The batch is stored with its offsets: count it settled, commit to Kafka later."""
        self._positions.note_stored(messages)

    async def _commit_loop(self, consumer: AIOKafkaConsumer) -> None:
        """Commit stored offsets to Kafka, coalesced: one request however many batches."""
        positions = self._positions
        while True:
            await positions.commit_wanted.wait()
            positions.commit_wanted.clear()
            await self._commit(consumer, positions.to_commit)

    async def _commit(self, consumer: AIOKafkaConsumer, wanted: dict[TopicPartition, int]) -> None:
        assigned = consumer.assignment()
        offsets = {tp: o for tp, o in wanted.items() if tp in assigned}
        for tp in list(wanted):
            if tp not in assigned:
                del wanted[tp]  # no longer ours: its owner commits; the database has it
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except KafkaError as exc:
            # Harmless: the offsets are in the database, which is what a restart reads.
            self._log.info("kafka_commit_skipped", error=f"{type(exc).__name__}: {exc}")
            return
        for tp, offset in offsets.items():
            if wanted.get(tp) == offset:
                del wanted[tp]

    async def _probe_loop(self, consumer: AIOKafkaConsumer) -> None:
        """Notice a broker that went away or went silent (aiokafka retries without a word).

        One metadata request per heart-beat interval, answered within one: a half-open
        connection is noticed within two heart-beats, not after aiokafka's 40 s request
        timeout.
        """
        failures = 0
        every = self.cfg.heartbeat_interval
        while True:
            await asyncio.sleep(every)
            try:
                async with asyncio.timeout(every):
                    await consumer.topics()
            except (KafkaError, TimeoutError, OSError) as exc:
                failures += 1
                self.set_state(SourceState.DOWN, f"{type(exc).__name__}: {exc}")
                if failures >= _PROBES_BEFORE_RECONNECT:
                    raise ConnectionError(f"broker unreachable for {failures} probes") from exc
                continue
            failures = 0
            self.set_state(SourceState.PAUSED if self.paused else SourceState.UP)
            self.lag = self._positions.lag(consumer)

    # -- flow control and state -----------------------------------------------------

    async def _on_pause(self) -> None:
        """Pause every assigned partition; polling goes on so the group keeps us."""
        if self._consumer is not None:
            self._apply_pause(self._consumer)

    async def _on_resume(self) -> bool:
        """Fetch again."""
        self._positions.settled.set()  # wake a fetch loop waiting for room
        if self._consumer is None:
            return False
        self._apply_pause(self._consumer)
        self.set_state(SourceState.UP)
        return True

    def describe(self) -> dict[str, Any]:
        """State for stats, with the lag per partition seen at the last probe."""
        return {**super().describe(), "lag": dict(self.lag)}

    # -- publishing -----------------------------------------------------------------

    async def publish(
        self,
        body: bytes,
        headers: dict[str, str],
        count: int = 1,
        content_type: str | None = "application/json",
        topic: str | None = None,
    ) -> int:
        """Produce to ``topic`` (default: the source's first) with acks=all; returns how many
        were acked."""
        producer = AIOKafkaProducer(acks="all", linger_ms=5, **client_options(self.cfg))
        await producer.start()
        try:
            kafka_headers = [(k, v.encode()) for k, v in headers.items()]
            if content_type and "content-type" not in headers:
                kafka_headers.append(("content-type", content_type.encode()))
            topic = topic or self.cfg.topics[0]
            confirmed = 0
            for start in range(0, count, 1000):
                futures = [
                    await producer.send(topic, body, headers=kafka_headers)
                    for _ in range(min(1000, count - start))
                ]
                confirmed += len(await asyncio.gather(*futures))
            return confirmed
        finally:
            await producer.stop()


def build(source: SourceBase, offset_reader: OffsetReader | None = None) -> KafkaAdapter:
    """The registry's factory: a ``KafkaAdapter`` for a ``KafkaSource``, reading its stored
    offsets through ``offset_reader``."""
    assert isinstance(source, KafkaSource)
    return KafkaAdapter(source, offset_reader)
