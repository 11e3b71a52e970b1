"""Intake on the memory store with a fake adapter: commit-then-ack, requeue on failure."""

from __future__ import annotations

import asyncio
import time

from jobwire.config import Config
from jobwire.intake import Intake
from jobwire.models import Job, JobSpec, JobStatus, StreamOffset
from jobwire.routing import Router
from jobwire.store.memory import MemoryStore
from tests.support.fake_adapter import FakeAdapter
from tests.support.waiting import wait_for


class FakePool:
    """Stands in for the WorkerPool's hand-off side: records what it was given."""

    def __init__(self, free: int = 0) -> None:
        self.free = free
        self.reserved = 0
        self.started: list[Job] = []
        self.wakes = 0
        self.orphan_warnings = 0
        self.limited_handlers: frozenset[str] = frozenset()

    def room(self, queue: str) -> int | None:
        return None  # no pacing here: tests/unit/test_pacing.py

    hand_off_wait = 0.5

    async def wait_room(self, queue: str, timeout: float) -> int | None:
        return None

    def reserve(self, queue: str, wanted: int) -> int:
        granted = min(wanted, self.free - self.reserved)
        self.reserved += granted
        return granted

    def unreserve(self, queue: str, count: int) -> None:
        self.reserved -= count

    def direct_start(self) -> tuple[str, float]:
        return "me", 30.0

    def start_inserted(self, job: Job, sent: float | None = None) -> None:
        # The lease counts from when the insert was sent, never from its answer.
        assert sent is not None and sent <= time.monotonic()
        self.started.append(job)

    def wake(self) -> None:
        self.wakes += 1

    def orphans_possible(self) -> None:
        self.orphan_warnings += 1


def make(
    on_invalid: str = "fail", free: int = 0, pool: FakePool | None = None
) -> tuple[Intake, FakeAdapter, MemoryStore, FakePool]:
    config = Config.model_validate(
        {
            "sources": [
                {
                    "name": "fake",
                    "type": "amqp",
                    "queue": "q",
                    "on_invalid": on_invalid,
                    **({"dead_letter_exchange": "dlx"} if on_invalid == "dead-letter" else {}),
                    "route": {"handler_from": "json:$.type", "dedup_key": "json:$.id"},
                }
            ]
        }
    )
    adapter = FakeAdapter()
    store = MemoryStore()
    pool = pool or FakePool(free)
    router = Router(config.sources[0], {"noop", "echo"}, adapter.default_dedup)
    intake = Intake(config.sources[0], adapter, router, store, pool)
    return intake, adapter, store, pool


async def test_batch_is_stored_then_acked_and_duplicates_are_acked_without_a_job() -> None:
    intake, adapter, store, pool = make()
    batch = [adapter.message(b'{"type": "noop", "id": %d}' % i) for i in range(5)]
    batch.append(adapter.message(b'{"type": "noop", "id": 2}'))  # a redelivery
    await intake.process(batch)
    assert len(store.jobs) == 5
    assert set(adapter.settled.values()) == {"ack"} and len(adapter.settled) == 6
    assert intake.counters.stored == 5 and intake.counters.duplicate == 1
    assert pool.wakes == 1 and pool.started == []


async def test_idle_pool_gets_jobs_handed_over_without_a_claim() -> None:
    intake, adapter, store, pool = make(free=3)
    await intake.process(
        [adapter.message(b'{"type": "noop", "id": %d}' % i) for i in range(5)]
        + [adapter.message(b'{"type": "noop", "id": 0}')]
    )  # a duplicate
    assert [j.id for j in pool.started] == [1, 2, 3]
    assert all(store.jobs[j.id].status == JobStatus.RUNNING for j in pool.started)
    assert all(store.jobs[j.id].worker_id == "me" for j in pool.started)
    assert [store.jobs[i].status for i in (4, 5)] == [JobStatus.PENDING] * 2
    assert pool.reserved == 0  # every reservation given back
    assert pool.wakes == 1  # two jobs are left for the claim


async def test_poison_becomes_failed_job_and_is_acked() -> None:
    intake, adapter, store, _ = make()
    await intake.process(
        [adapter.message(b'{"type": "rm -rf", "id": 1}'), adapter.message(b"not json")]
    )
    failed = [j for j in store.jobs.values() if j.status == JobStatus.FAILED]
    assert len(failed) == 2
    assert {j.last_error for j in failed} >= {
        "handler 'rm -rf' (from json:$.type) is not in the allow-list"
    }
    assert all(j.body is not None for j in failed)
    assert set(adapter.settled.values()) == {"ack"}
    assert intake.counters.invalid == 2


async def test_dead_letter_rejects_poison_instead_of_storing_it() -> None:
    intake, adapter, store, _ = make(on_invalid="dead-letter")
    good, bad = adapter.message(b'{"type": "noop", "id": 1}'), adapter.message(b"junk")
    await intake.process([good, bad])
    assert len(store.jobs) == 1
    assert adapter.settled == {good.raw: "ack", bad.raw: "reject"}


async def test_store_down_requeues_the_batch_pauses_and_resumes() -> None:
    intake, adapter, store, pool = make(free=10)
    store.available = False
    batch = [adapter.message(b'{"type": "noop", "id": %d}' % i) for i in range(3)]
    task = asyncio.create_task(intake.process(batch))
    await wait_for(lambda: adapter.pauses == 1, what="adapter paused")
    assert set(adapter.settled.values()) == {"nack-requeue"}  # nothing acked, nothing stored
    assert store.jobs == {}
    assert pool.reserved == 0
    store.available = True
    await asyncio.wait_for(task, 5)
    assert adapter.resumes == 1
    # The broker redelivers; now the batch is stored and acked.
    await intake.process([adapter.message(b'{"type": "noop", "id": %d}' % i) for i in range(3)])
    assert len(store.jobs) == 3


class OneSlotAtATimePool(FakePool):
    """A full pool that frees one slot every 20 ms."""

    hand_off_wait = 0.05

    def room(self, queue: str) -> int | None:
        return 0

    async def wait_room(self, queue: str, timeout: float) -> int | None:
        await asyncio.sleep(min(timeout, 0.02))
        return 1 if timeout > 0.02 else 0


async def test_paced_deliveries_keep_their_order_and_wait_no_longer_than_the_hand_off_wait() -> (
    None
):
    intake, adapter, store, _ = make(pool=OneSlotAtATimePool())
    task = asyncio.create_task(intake.run())
    for i in range(10):
        intake.submit(adapter.message(b'{"type": "noop", "id": %d}' % i))
    await wait_for(lambda: len(store.jobs) == 10, what="10 stored")
    task.cancel()
    # One at a time while the slots came, then, their time up, the rest at once.
    assert 2 <= intake.counters.batches < 10
    ids = [int(j.payload["id"]) for j in sorted(store.jobs.values(), key=lambda j: j.id)]
    assert ids == list(range(10))
    assert intake.counters.acked == 10


async def test_deliveries_held_back_for_a_slot_are_counted_with_how_long_they_waited() -> None:
    intake, adapter, store, _ = make(pool=OneSlotAtATimePool())
    assert (intake.waiting, intake.held_back_for()) == (0, 0.0)
    task = asyncio.create_task(intake.run())
    for i in range(10):
        intake.submit(adapter.message(b'{"type": "noop", "id": %d}' % i))
    seen: list[tuple[int, float]] = []

    def held_and_stored() -> bool:
        seen.append((intake.waiting, intake.held_back_for()))
        return len(store.jobs) == 10

    await wait_for(held_and_stored, interval=0.005, what="10 stored")
    task.cancel()
    assert any(n > 0 and 0 < held <= 1.0 for n, held in seen), seen
    assert (intake.waiting, intake.held_back_for()) == (0, 0.0)


async def test_run_loop_batches_by_count_and_time() -> None:
    intake, adapter, store, _ = make()
    task = asyncio.create_task(intake.run())
    for i in range(1200):
        intake.submit(adapter.message(b'{"type": "noop", "id": %d}' % i))
    await wait_for(lambda: len(store.jobs) == 1200, what="1200 stored")
    await intake.drain(5)
    task.cancel()
    assert intake.counters.batches >= 3  # 500 per batch at most
    assert intake.counters.acked == 1200


def make_notify(notify_wait: str = "30s") -> tuple[Intake, FakeAdapter, MemoryStore, FakePool]:
    config = Config.model_validate(
        {
            "sources": [
                {
                    "name": "fake",
                    "type": "stomp",
                    "destination": "/queue/q",
                    "route": {"mode": "notify", "notify_wait": notify_wait},
                }
            ]
        }
    )
    adapter, store, pool = FakeAdapter(), MemoryStore(), FakePool()
    router = Router(config.sources[0], {"noop"}, adapter.default_dedup)
    return Intake(config.sources[0], adapter, router, store, pool), adapter, store, pool


async def test_notify_mode_acks_visible_jobs_and_wakes_the_pool() -> None:
    intake, adapter, store, pool = make_notify()
    (job_id,) = await store.enqueue_many([JobSpec("noop")])
    msg = adapter.message(b'{"job_id": %d}' % job_id)
    await intake.process([msg])
    assert adapter.settled == {msg.raw: "ack"}
    assert pool.wakes == 1 and intake.counters.notified == 1
    assert len(store.jobs) == 1  # no new job: the row was already there


async def test_notify_mode_nacks_a_job_not_yet_visible_then_gives_up() -> None:
    intake, adapter, _store, pool = make_notify(notify_wait="100ms")
    early = adapter.message(b'{"job_id": 42}')
    await intake.process([early])
    await wait_for(
        lambda: adapter.settled.get(early.raw) == "nack-requeue",
        what="nacked for redelivery",
    )
    assert pool.wakes == 0
    await asyncio.sleep(0.15)  # notify_wait passes: the id names no job
    again = adapter.message(b'{"job_id": 42}')
    await intake.process([again])
    assert adapter.settled[again.raw] == "ack"


async def test_notify_mode_bad_message_becomes_a_failed_job() -> None:
    intake, adapter, store, _ = make_notify()
    msg = adapter.message(b'{"id": "nope"}')
    await intake.process([msg])
    (job,) = store.jobs.values()
    assert job.status == JobStatus.FAILED and "names no job" in (job.last_error or "")
    assert adapter.settled == {msg.raw: "ack"}


async def test_a_log_source_keeps_a_batch_the_store_refused_and_stores_it_in_order() -> None:
    """Kafka-like: no requeue (nothing would come back); the same batch, with its offsets."""
    intake, adapter, store, _pool = make(free=0)
    adapter.requeue_redelivers = False
    batch = []
    for i in range(3):
        message = adapter.message(b'{"type": "noop", "id": %d}' % i)
        message.offset = StreamOffset("g", "t", 0, 10 + i + 1)
        batch.append(message)
    store.available = False
    task = asyncio.create_task(intake.process(batch))
    await wait_for(lambda: adapter.pauses == 1, what="adapter paused")
    assert adapter.settled == {}  # not requeued: a log does not redeliver
    store.available = True
    await asyncio.wait_for(task, 5)
    assert adapter.resumes == 1
    assert set(adapter.settled.values()) == {"ack"}
    assert len(store.jobs) == 3
    assert store.offsets == {("g", "t", 0): 13}  # the highest next offset of the batch


async def test_stored_offsets_never_move_backwards() -> None:
    store = MemoryStore()
    await store.enqueue_many([], None, [StreamOffset("g", "t", 1, 50)])
    await store.enqueue_many([], None, [StreamOffset("g", "t", 1, 20)])  # a former owner, late
    assert await store.stored_offsets("g", [("t", 1), ("t", 2)]) == {("t", 1): 50}
