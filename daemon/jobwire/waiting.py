"""Waiting on a condition that an event announces, with a deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def wait_until(event: asyncio.Event, done: Callable[[], bool], timeout: float) -> bool:
    """Wait until ``done()`` holds, checking it again each time ``event`` is set; False if
    ``timeout`` seconds pass first. ``event`` is cleared before each wait: whoever changes
    what ``done`` reads sets it."""
    if done():
        return True
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            return False
        event.clear()
        try:
            async with asyncio.timeout(remaining):
                await event.wait()
        except TimeoutError:
            return done()
        if done():
            return True
