"""The ports the intake owns: what it needs of a source, and of the worker pool."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from jobwire.models import Job, Message


class Settler(Protocol):
    """What the intake needs of a source: settle deliveries, and stop or go on taking them.

    Every broker adapter fills it.
    """

    # True: a requeued delivery comes back from the broker (AMQP, STOMP, MQTT). False: the
    # source is a log read in order (Kafka), and the intake keeps what it could not store.
    requeue_redelivers: bool
    # True: a delivery may wait unacknowledged for a free slot in the pool (see Pacer).
    may_wait: bool

    async def ack_many(self, messages: Sequence[Message]) -> None:
        """Acknowledge deliveries whose rows are committed."""

    async def requeue_many(self, messages: Sequence[Message]) -> None:
        """Give deliveries back to the broker (the store is out)."""

    async def pause(self) -> None:
        """Stop taking deliveries."""

    async def resume(self) -> None:
        """Take deliveries again."""


class Handoff(Protocol):
    """A worker pool that takes freshly inserted jobs directly (see WorkerPool.reserve)."""

    @property
    def limited_handlers(self) -> frozenset[str]:
        """Handlers whose jobs never start straight from the intake (they have a rate)."""

    def room(self, queue: str) -> int | None:
        """Jobs of ``queue`` it would start from the intake now; 0: not until a slot frees;
        None: none (only its claim starts them)."""

    @property
    def hand_off_wait(self) -> float:
        """How long a delivery may wait for a free slot at most (0: never)."""

    async def wait_room(self, queue: str, timeout: float) -> int | None:
        """``room(queue)`` once it is not 0, or 0 after ``timeout`` seconds."""

    def reserve(self, queue: str, wanted: int) -> int:
        """Slots granted for jobs inserted now."""

    def unreserve(self, queue: str, count: int) -> None:
        """Give the reservation back."""

    def direct_start(self) -> tuple[str, float]:
        """Worker id and lease to insert with."""

    def start_inserted(self, job: Job, sent: float | None = None) -> None:
        """Run a job inserted as running in this worker; ``sent``: when the insert was sent
        (monotonic), which its lease counts from."""

    def wake(self) -> None:
        """New jobs are waiting: claim."""

    def orphans_possible(self) -> None:
        """An insert of directly started jobs failed unseen: it may have committed rows
        running here that no task runs; give them back once the store answers."""
