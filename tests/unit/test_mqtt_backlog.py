"""aiomqtt's incoming queue with QoS 0 held to a byte budget (adapters/mqtt/backlog.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiomqtt

from jobwire.adapters.mqtt import backlog

KIB = 1024


class Lines:
    """A structlog-shaped logger that keeps its warning lines."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def warning(self, event: str, **fields: Any) -> None:
        self.lines.append((event, fields))


def delivery(i: int, qos: int, size: int = 7 * KIB - 16) -> aiomqtt.Message:
    return aiomqtt.Message("t/x", b"%d:" % i + b"x" * size, qos, False, i, None)


def queue(budget: int = 64 * KIB) -> tuple[backlog.BoundedQueue, backlog.Discards, Lines]:
    lines = Lines()
    discards = backlog.Discards(lines, budget)
    return backlog.BoundedQueue(budget=budget, discards=discards), discards, lines


def drain(q: backlog.BoundedQueue) -> list[aiomqtt.Message]:
    out = []
    while not q.empty():
        out.append(q.get_nowait())
    return out


def test_qos0_past_the_budget_is_discarded_and_counted_qos1_never() -> None:
    q, discards, lines = queue()
    for i in range(100):
        q.put_nowait(delivery(i, qos=0))  # just under 8 KiB each: 8 fit in 64 KiB
    for i in range(100, 150):
        q.put_nowait(delivery(i, qos=1))
    kept = drain(q)
    assert [m.mid for m in kept] == [*range(8), *range(100, 150)]
    assert discards.count == 92
    # One line for the lot (at most one per LOG_EVERY_S), naming the event and the count.
    assert [(event, fields["count"], fields["total"]) for event, fields in lines.lines] == [
        ("mqtt_qos0_discarded", 1, 1)
    ]
    assert q.qos0_bytes == 0


def test_taking_a_message_frees_its_share_of_the_budget() -> None:
    q, discards, _ = queue()
    for i in range(8):
        q.put_nowait(delivery(i, qos=0))
    q.put_nowait(delivery(8, qos=0))
    assert discards.count == 1
    q.get_nowait()
    q.put_nowait(delivery(9, qos=0))
    assert discards.count == 1
    assert [m.mid for m in drain(q)] == [1, 2, 3, 4, 5, 6, 7, 9]


def test_one_message_larger_than_the_budget_is_still_taken_when_none_waits() -> None:
    # Never discarded for its size alone: the intake stores it (as failed if too large).
    q, discards, _ = queue()
    q.put_nowait(delivery(1, qos=0, size=200 * KIB))
    q.put_nowait(delivery(2, qos=0, size=1))
    assert discards.count == 1
    assert [m.mid for m in drain(q)] == [1]
    q.put_nowait(delivery(3, qos=0, size=200 * KIB))
    assert [m.mid for m in drain(q)] == [3]


async def test_a_waiting_reader_gets_each_message_and_the_budget_follows() -> None:
    q, discards, _ = queue()
    got: list[int] = []

    async def read() -> None:
        for _ in range(20):
            got.append((await q.get()).mid)

    reader = asyncio.create_task(read())
    for i in range(20):
        q.put_nowait(delivery(i, qos=i % 2))
        await asyncio.sleep(0)
    await asyncio.wait_for(reader, 5)
    assert got == list(range(20))
    assert (discards.count, q.qos0_bytes) == (0, 0)


def test_log_lines_are_spaced_and_carry_the_count_since_the_last(monkeypatch: Any) -> None:
    now = [1000.0]
    monkeypatch.setattr(backlog.time, "monotonic", lambda: now[0])
    q, discards, lines = queue()
    for i in range(8):
        q.put_nowait(delivery(i, qos=0))
    for i in range(5):
        q.put_nowait(delivery(100 + i, qos=0))
    now[0] += backlog.LOG_EVERY_S
    q.put_nowait(delivery(200, qos=0))
    assert [(f["count"], f["total"]) for _, f in lines.lines] == [(1, 1), (5, 6)]
    assert discards.count == 6
