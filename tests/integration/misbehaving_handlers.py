"""Handlers that break their daemon's process, for test_handler_process_misbehaviour."""

from __future__ import annotations

import signal
from typing import Any


async def ignores_sigterm(payload: Any) -> str:
    """Replace the daemon's stop signals' handlers: SIGTERM ignored, SIGINT by default."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    return "replaced"
