"""The intake's line of deliveries: order, batch_delay, and when the held-back ones at its
head were first held back."""

from __future__ import annotations

import asyncio

from jobwire.intake.line import DeliveryLine
from jobwire.models import Message


def msg(i: int) -> Message:
    return Message(source="s", body=b"%d" % i)


async def test_batches_come_in_arrival_order_and_the_rest_waits_its_turn() -> None:
    line = DeliveryLine()
    for i in range(10):
        line.put(msg(i))
    offered = await line.ready(size=6, delay=0)
    assert offered == 6
    assert [m.body for m in line.take(2, offered, now=1.0)] == [b"0", b"1"]
    assert line.held_since() == 1.0  # 2..5 were offered and held back
    offered = await line.ready(size=6, delay=0)
    assert [m.body for m in line.take(3, offered, now=2.0)] == [b"2", b"3", b"4"]
    assert line.held_since() == 1.0  # 5 has waited since 1.0; 6..7 since 2.0
    offered = await line.ready(size=6, delay=0)
    assert [m.body for m in line.take(1, offered, now=3.0)] == [b"5"]
    assert line.held_since() == 2.0
    offered = await line.ready(size=6, delay=0)
    assert [m.body for m in line.take(offered, offered, now=4.0)] == [b"6", b"7", b"8", b"9"]
    assert line.held_since() is None and len(line) == 0


async def test_ready_waits_for_a_delivery_and_batch_delay_for_company() -> None:
    line = DeliveryLine()
    waiter = asyncio.create_task(line.ready(size=3, delay=0.5))
    await asyncio.sleep(0)
    assert not waiter.done()
    line.put(msg(0))
    await asyncio.sleep(0)
    assert not waiter.done()  # batch_delay: waiting for two more
    line.put(msg(1))
    line.put(msg(2))
    assert await asyncio.wait_for(waiter, 1.0) == 3


async def test_a_held_back_head_does_not_wait_for_batch_delay_again() -> None:
    line = DeliveryLine()
    line.put(msg(0))
    line.put(msg(1))
    line.take(1, 2, now=0.0)
    assert await asyncio.wait_for(line.ready(size=10, delay=30), 0.5) == 1
