"""The pool's side of the hand-off: which queues a shortfall marks, what the intake may
wait for (room), and when a pacing intake is told to look again."""

from __future__ import annotations

import asyncio

from jobwire.store.memory import MemoryStore
from jobwire.worker import WorkerPool
from tests.support.pools import fast_config, make_pool


def pool(**queues: int) -> WorkerPool:
    config = fast_config(
        workers={"concurrency": 4}, queues={q: {"concurrency": c} for q, c in queues.items()}
    )
    p = make_pool(MemoryStore(), config=config)
    p.state.alone = True
    return p


def test_a_shortfall_of_the_whole_pool_marks_every_queue() -> None:
    p = pool(a=4, b=4)
    assert p.reserve("a", 10) == 4
    assert p.state.backlog == {"a", "b", "default"}
    assert p.room("b") == 0  # b's intake must not pass a's older ready jobs


def test_a_shortfall_of_one_queue_marks_only_that_queue() -> None:
    p = pool(a=1)
    assert p.reserve("a", 3) == 1
    assert p.state.backlog == {"a"}
    assert p.room("a") == 0
    assert p.room("default") == 3


def test_a_mark_made_while_a_claim_is_out_survives_its_answer() -> None:
    p = pool(a=1)
    p.state.claiming = True
    p.reserve("a", 3)
    assert p.state.marked_in_claim == {"a"}


def test_room_is_none_with_another_instance_or_no_wait_and_while_stopping() -> None:
    p = pool()
    assert p.room("default") == 4
    p.state.alone = False
    assert p.room("default") is None
    p.state.paced_beside = frozenset({"default"})  # the others get what it holds back
    assert p.room("default") == 4
    p.state.paced_beside = frozenset()
    p.state.alone = True
    p.state.stopping.set()
    assert p.room("default") is None
    q = make_pool(MemoryStore(), config=fast_config(workers={"hand_off_wait": 0}))
    q.state.alone = True
    assert q.room("default") is None


async def test_a_waiting_intake_is_told_when_a_reservation_returns_and_woken_claims_run() -> None:
    p = pool()
    assert p.reserve("default", 4) == 4
    waiter = asyncio.create_task(p.wait_room("default", 5.0))
    await asyncio.sleep(0)
    assert not waiter.done()
    p.state.backlog = {"other"}
    p.unreserve("default", 4)  # the insert started none of them (say, all duplicates)
    assert await asyncio.wait_for(waiter, 1.0) == 4
    assert p.state.wake.is_set()  # the claim looks at once, not at the next poll


async def test_a_wait_with_no_room_ends_at_its_timeout() -> None:
    p = pool()
    p.reserve("default", 4)
    assert await p.wait_room("default", 0.02) == 0
