"""A stop does not hang on a task that swallowed its cancellation."""

from __future__ import annotations

import asyncio

from jobwire.services import cancel_until_done


async def test_a_task_that_swallows_a_cancellation_is_cancelled_again() -> None:
    swallowed = 0

    async def stubborn() -> None:
        # As asyncio.wait_for in Python 3.11 can: the cancellation lost, the work going on.
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                swallowed += 1
                if swallowed > 1:
                    raise

    async def failing() -> None:
        raise RuntimeError("a bug, already ended")

    tasks = [asyncio.create_task(stubborn()), asyncio.create_task(failing())]
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_until_done(tasks, again_after=0.05), 5)
    assert swallowed == 2
    assert all(t.done() for t in tasks)


async def test_ended_tasks_are_left_as_they_are() -> None:
    async def quick() -> int:
        return 1

    task = asyncio.create_task(quick())
    await task
    await cancel_until_done([task])
    assert task.result() == 1
