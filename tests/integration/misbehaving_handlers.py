"""Handlers that break their daemon's process, for test_handler_process_misbehaviour."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from typing import Any


async def ignores_sigterm(payload: Any) -> str:
    """Replace the daemon's stop signals' handlers: SIGTERM ignored, SIGINT by default."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    return "replaced"


def _forever() -> None:
    while True:
        time.sleep(3600)


async def leaves_a_thread(payload: Any) -> str:
    """Start a thread (not a daemon thread) that never ends."""
    threading.Thread(target=_forever, name="never-ends").start()
    return "left"


async def stops_the_loop(payload: Any) -> str:
    """Stop the daemon's event loop."""
    asyncio.get_running_loop().stop()
    return "stopped"
